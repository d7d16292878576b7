"""Kinds of code: what a preset's code needs from the pipeline around it, as hooks the pipeline calls.

A preset (codec.presets) holds one of these as ``CodecPreset.code``. Fit, eval, export and the deploy
halves call the hooks; none of them asks which kind it has, so a new kind of code is a class here
and a preset that uses it.

    check_fit(preset, channel, holds_validation)   before a fit builds anything (and before a search)
    check_channel(channel)                         when a pipeline is built over a channel
    framing(config, channel, pair_id, ...)         the wire bytes, both sides (codec.framing)
    after_fit(codec, channel, tail, train, val)    the step after training (tables, length table)
    meter(codec, channel, params)                  eval's measurement of the real frames (codec.measure)
    check_export(format, run)                      before an export writes anything
    onnx_metadata(codec)                           what an ONNX half must carry beyond the graph

- ``FixedCode``: every image sends its whole code (presets bnpp, bottlenetpp).
- ``EntropyCode``: an integer code with a learned prior, range-coded per image, over an error-free
  link (preset entropy; codec.entropy).
- ``VariableCode``: every prefix of the code is a code; the length sent follows the condition,
  from a table chosen on validation images after the fit (preset variable; codec.variable).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

from torch import Tensor, nn

from ..errors import CodecError
from .calibrate import TABLE_IMAGES, calibrate_lengths, calibrate_tables
from .entropy import find_tables
from .framing import EntropyFraming, Framing, PrefixFraming
from .measure import MEASURE_PAIR_ID, FrameMeter, PrefixMeter, SymbolMeter
from .variable import LengthTable, check_channel

CodecConfigLike = Any  # a codec.config.CodecConfig (that module imports the presets, which import this one)
Progress = Callable[[str, dict[str, Any]], None]  # (event, info): "calibrate" with the step's name


def _quiet(event: str, info: dict[str, Any]) -> None:
    pass


class FixedCode:
    """A fixed-length code: the whole code z crosses the link, framed by the channel (analog symbols
    or n-bit levels)."""

    name = "fixed"
    variable_length = False
    entropy_coded = False
    table_images = 0  # training images the step after a fit reads (none)

    def check_fit(self, preset: str, channel: str, holds_validation: bool) -> None:
        """CodecError when this code cannot be fitted over ``channel`` (a registered channel's name)."""

    def check_channel(self, channel) -> None:
        """CodecError for a built channel this code cannot cross."""

    def framing(self, config: CodecConfigLike, channel, pair_id: str, module: nn.Module | None = None,
                lengths: LengthTable | None = None) -> Framing:
        """The wire framing of this code; ``module`` is the side's encoder or decoder (tables live
        there), ``lengths`` a length table read from elsewhere (an ONNX half's metadata)."""
        return Framing(config.code_shape, channel, pair_id)

    def after_fit(self, codec: nn.Module, channel, tail: nn.Module, train: Callable[[], Iterable[Tensor]],
                  val: Callable[[], Iterable[tuple[Tensor, Tensor]]], progress: Progress = _quiet) -> dict[str, Any]:
        """The step after training, over head features the caller streams: {record name: record}."""
        return {}

    def meter(self, codec: nn.Module, channel, params: Sequence[float]) -> SymbolMeter:
        """`bnpp eval`'s measurement of this code's frames (codec.measure)."""
        framing = self.framing(codec.config, channel, MEASURE_PAIR_ID, codec.encoder)
        return (FrameMeter if channel.bits_per_element is not None else SymbolMeter)(codec, channel, params, framing)

    def check_export(self, format: str, run: str, preset: str) -> None:
        """CodecError when the halves of this code cannot be written in ``format``."""

    def onnx_metadata(self, codec: nn.Module) -> dict[str, str]:
        """String metadata an ONNX half needs to send or read this code, beyond the run's config."""
        return {}


class EntropyCode(FixedCode):
    """An integer code range-coded per image with the prior's frozen integer tables."""

    name = "entropy"
    entropy_coded = True
    table_images = TABLE_IMAGES

    def check_fit(self, preset: str, channel: str, holds_validation: bool) -> None:
        if channel != "none":
            raise CodecError(f"the {preset} preset codes over an error-free link, not channel '{channel}' (its "
                             f"channel code at capacity is computed by link.capacity)", hint="use `channel` none")

    def framing(self, config, channel, pair_id, module=None, lengths=None) -> Framing:
        if module is None or find_tables(module) is None:
            raise CodecError(f"an entropy code ({config.preset}) is sent with the integer tables its encoder or "
                             f"decoder holds: give that module")
        return EntropyFraming(config.code_shape, channel, pair_id, module)

    def after_fit(self, codec, channel, tail, train, val, progress=_quiet) -> dict[str, Any]:
        progress("calibrate", {"step": "entropy tables", "images": self.table_images})
        record = calibrate_tables(codec, train())
        return {"tables": record} if record else {}

    def meter(self, codec, channel, params) -> SymbolMeter:
        return FrameMeter(codec, channel, params, self.framing(codec.config, channel, MEASURE_PAIR_ID, codec.encoder))

    def check_export(self, format: str, run: str, preset: str) -> None:
        if format != "safetensors":
            raise CodecError(f"run '{run}' has an entropy-coded code (preset {preset}): its range coder needs the "
                             "integer tables the safetensors halves carry, not the ONNX graphs",
                             hint="export it with `format` safetensors")


class VariableCode(FixedCode):
    """A prefix code: the device sends the first k symbols its length table gives for the condition."""

    name = "variable"
    variable_length = True

    def check_fit(self, preset: str, channel: str, holds_validation: bool) -> None:
        if not holds_validation:
            raise CodecError(f"the {preset} preset chooses its code length per condition on validation images, "
                             f"and the fit holds none out",
                             hint="give `val_data`, or a `val_fraction` above 0 (default 0.1)")

    def check_channel(self, channel) -> None:
        check_channel(channel)

    def framing(self, config, channel, pair_id, module=None, lengths=None) -> Framing:
        if lengths is None:
            lengths = getattr(module, "lengths", None)  # the encoder's table (a decoder has none)
        if lengths is None:
            lengths = LengthTable(config.code_symbols)  # the edge: any prefix up to the whole code
        return PrefixFraming(config.code_shape, channel, pair_id, lengths)

    def after_fit(self, codec, channel, tail, train, val, progress=_quiet) -> dict[str, Any]:
        progress("calibrate", {"step": "length table"})
        record = calibrate_lengths(codec, channel, tail, val())
        return {"length_table": record} if record else {}

    def meter(self, codec, channel, params) -> SymbolMeter:
        return PrefixMeter(codec, channel, params, self.framing(codec.config, channel, MEASURE_PAIR_ID, codec.encoder))

    def onnx_metadata(self, codec) -> dict[str, str]:
        return {"length_table": json.dumps([[float(p), int(k)] for p, k in codec.encoder.lengths.entries()])}


def read_length_table(props: dict[str, str], symbols: int) -> LengthTable | None:
    """The length table an ONNX half's metadata carries (VariableCode.onnx_metadata), or None."""
    if "length_table" not in props:
        return None
    table = LengthTable(symbols)
    try:
        table.set([(float(p), int(k)) for p, k in json.loads(props["length_table"])])
    except (ValueError, TypeError) as e:
        raise CodecError(f"unreadable length_table {props['length_table'][:80]!r}: {str(e).splitlines()[0][:160]}") \
            from None
    return table


FIXED, ENTROPY, VARIABLE = FixedCode(), EntropyCode(), VariableCode()
