"""The `bnpp` command line: a thin Typer layer over the library, one file per command.

Each command parses options, builds a config, calls ONE library function and renders the result.
Heavy imports (torch, timm) happen inside the command bodies, so `bnpp --help` is instant.
The one error boundary is ``_Group.invoke``: library errors (BnppError) become one line on stderr
and exit code 2, the settings they name shown as flags (options.render); BNPP_DEBUG=1 shows
tracebacks.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup


def fail(message: str, hint: str | None = None, code: int = 2) -> None:
    """One error line (and a hint) on stderr, then exit with `code`. Text is printed as is."""
    from rich.console import Console
    from rich.text import Text

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(Text.assemble(("Error:", "bold red"), " ", message))
    if hint:
        err.print(Text("Hint: " + hint, style="dim"))
    raise typer.Exit(code)


class _Group(TyperGroup):
    """Every command runs inside this: the single place that turns library errors into exit 2."""

    def invoke(self, ctx):
        from ..errors import BnppError
        from .options import render

        try:
            return super().invoke(ctx)
        except BnppError as e:
            if os.environ.get("BNPP_DEBUG"):
                raise
            fail(render(str(e)), render(e.hint))
        except KeyboardInterrupt:
            fail("interrupted", code=130)


app = typer.Typer(
    cls=_Group,
    name="bnpp",
    help="Device-edge co-inference with learned feature compression (BottleNet++) for any timm model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is printed as written: "[preset's: ...]" is text, not Rich markup
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"bnpp {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print bnpp's version and exit."),
) -> None:
    """Device-edge co-inference with learned feature compression (BottleNet++) for any timm model."""


from . import eval as _eval, export as _export, fit as _fit, predict as _predict, profile as _profile  # noqa: E402
from . import models as _models, search as _search, serve as _serve  # noqa: E402

for _module in (_profile, _fit, _eval, _export, _predict, _serve, _models, _search):
    _module.register(app)


def main() -> None:
    app(prog_name="bnpp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
