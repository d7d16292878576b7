"""The channel's config (stored in a run and its deploy halves) and which condition flag it takes.

Conditions reach bnpp from the command line as ``--snr`` (analog channels: PSNR in dB) or
``--erasure`` (digital channels: the bit error probability). Which flag a channel takes is the
channel's own property (``Channel.condition_flag``); this module is the one place that checks a
given flag against it, so no other module compares condition names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ChannelError
from .channels import CHANNELS, Channel, create_channel


@dataclass
class ChannelConfig:
    """The simulated channel a codec trains under, stored in a run and its deploy halves.

    Attributes:
        name: a registered channel (link.channels.CHANNELS: none, awgn, awgn-power, rayleigh, bec,
            bsc); default "awgn", BottleNet++'s analog channel.
        train_condition: the training condition in the channel's units (dB PSNR for analog
            channels, a bit probability for digital ones): S (from S to the best condition) or
            [A, B]; default None: the channel's default (20 dB, or p < 0.01).
        bits: digital channels only: bits per symbol; default 8, BottleNet++'s quantiser.
    """

    name: str = "awgn"
    train_condition: float | list[float] | None = None
    bits: int = 8

    def build(self) -> Channel:
        cond = tuple(self.train_condition) if isinstance(self.train_condition, list) else self.train_condition
        return create_channel(self.name, train_condition=cond, bits=self.bits)

    @classmethod
    def from_flags(cls, name: str, given: Mapping[str, Any], bits: int = 8) -> "ChannelConfig":
        """The config for channel `name` trained over the condition of the one flag in `given`
        ({"--snr": S or [A, B] or None, "--erasure": ...}); validated by building the channel."""
        proto = create_channel(name, bits=bits)  # validates the name, lists the valid ones
        cond = select_condition(proto, given)
        config = cls(name, list(cond) if isinstance(cond, (list, tuple)) else cond, bits)
        config.build()  # validates the range
        return config


def select_condition(channel: Channel, given: Mapping[str, Any], subject: str = "the") -> Any:
    """The value of the one condition flag in ``given`` ({flag: value or None}) that ``channel``
    takes, or None when none is given. A flag the channel does not take is a one-line error that
    names the right one; ``subject`` words it ("this export's", "this run's")."""
    set_flags = [flag for flag, value in given.items() if value is not None]
    if len(set_flags) > 1:
        raise ChannelError("give --snr (analog channels) or --erasure (digital channels), not both")
    if not set_flags:
        return None
    (flag,) = set_flags
    if channel.condition_flag is None:
        raise ChannelError(f"channel '{channel.name}' is noiseless: it takes no --snr/--erasure")
    if flag != channel.condition_flag:
        kinds = {c.condition_flag: [n for n, k in CHANNELS.items() if k.condition_flag == c.condition_flag]
                 for c in CHANNELS.values() if c.condition_flag}
        raise ChannelError(f"{flag} does not apply to {subject} channel '{channel.name}' "
                           f"({flag} is for {', '.join(kinds.get(flag, []))})",
                           hint=f"use {channel.condition_flag}")
    return given[flag]
