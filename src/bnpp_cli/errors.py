"""Exception types of the library. The CLI turns them into one-line errors.

The library speaks in concepts: a message that names a setting writes its config field or condition
name in backticks (`img_size`, `top_k`, `snr_db`), which is how a Python user sets it; a front end
shows each such name its own way (the CLI as its flag, ``--img-size``: cli/options.py holds that one
mapping). Messages never name command-line flags.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Iterable


class BnppError(Exception):
    """Base class: a user-facing error whose message names the bad value and the valid choices.

    Attributes:
        hint (str | None): one more line on what to do instead (a valid value, the setting to use);
            None when the message says it all.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ModelError(BnppError):
    """Unknown model, bad checkpoint, untraceable model."""


class SplitError(BnppError):
    """Unknown or unsupported split point."""


class ChannelError(BnppError):
    """Unknown channel or a condition out of range."""


class CodecError(BnppError):
    """A codec that cannot be built for the feature (ratio unmet, unsupported feature)."""


class DataError(BnppError):
    """Missing, empty or corrupt data; classes that do not match the model."""


class RunError(BnppError):
    """A run directory that is not one, or that cannot be resumed."""


class ExportError(BnppError):
    """A deploy file that is corrupt, not a bnpp half, or from another export."""


class WireError(BnppError):
    """A payload whose header or length is wrong."""


def choices_hint(value: str, choices: Iterable[str], n: int = 8) -> str:
    """'did you mean ...' for close names, else the first few valid choices."""
    choices = list(choices)
    close = get_close_matches(value, choices, n=5, cutoff=0.6)
    if close:
        return "did you mean: " + ", ".join(close) + "?"
    shown = ", ".join(choices[:n])
    more = f", ... ({len(choices)} in all)" if len(choices) > n else ""
    return f"valid: {shown}{more}"


class ServeError(BnppError):
    """The network runtime: a refused request, an unreachable server, a port that is taken."""


class ConfigError(BnppError):
    """A stored config (config.json, a deploy half's metadata) that does not match its schema."""
