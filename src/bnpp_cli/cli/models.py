"""`bnpp models PATTERN`: timm's model names (wildcards, the pretrained filter), one per line."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import JsonOpt, write_json_output


def models(
    pattern: Annotated[str, typer.Argument(help="Wildcard pattern, e.g. 'resnet*' or '*vit_tiny*' (quote it).")] = "*",
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="Only models with pretrained weights, as model.tag (timm.list_models(pretrained=True)).")] = False,
    json_path: JsonOpt = None,
):
    """List timm models matching a pattern (timm.list_models), one per line on stdout."""
    from ..split.backbone import list_timm_models
    from .render import render_models

    names = list_timm_models(pattern, pretrained)
    write_json_output(json_path, {"pattern": pattern, "pretrained": pretrained, "models": names})
    render_models(names, pattern, pretrained)


def register(app: typer.Typer) -> None:
    app.command()(models)
