"""The channel's config (stored in a run and its deploy halves) and which condition a channel takes.

A condition is named by the channel that takes it (``Channel.condition_name``): ``snr_db`` (the
analog channels: PSNR in dB; the radio links ofdm and ldpc: Es/N0 in dB), ``erasure`` (bec: the bit erasure probability) or ``flip`` (bsc: the
bit flip, i.e. crossover, probability); the noiseless channel takes none. This module is the one
place that checks a condition given by name against a channel, so no other module compares
condition names. How a front end lets users give a condition (the CLI's ``--snr``, ``--erasure``,
``--flip``) is its own business: cli/options.py maps the names to flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ChannelError
from .channels import Channel
from .registry import CHANNELS, PHY_CHANNELS, create_channel
from .phy import PhyConfig


@dataclass
class ChannelConfig:
    """The simulated channel a codec trains under, stored in a run and its deploy halves.

    Attributes:
        name: a registered channel (link.registry.CHANNELS: none, awgn, awgn-power, rayleigh, bec,
            bsc); default "awgn", BottleNet++'s analog channel.
        train_condition: the training condition in the channel's units (dB PSNR for analog
            channels, a bit probability for digital ones): S (from S to the best condition) or
            [A, B]; default None: the channel's default (20 dB, or p < 0.01).
        bits: digital channels only: bits per symbol; default 8, BottleNet++'s quantiser.
        phy: the radio link of the Sionna channels (ofdm, ldpc: grid, TDL profile, speed, CSI, LDPC
            code and QAM; link.phy.PhyConfig), None for every other channel; default None (for
            ofdm and ldpc: PhyConfig's defaults, filled in by :meth:`for_condition`).
    """

    name: str = "awgn"
    train_condition: float | list[float] | None = None
    bits: int = 8
    phy: PhyConfig | None = None

    def __post_init__(self) -> None:
        if self.phy is None and self.name in PHY_CHANNELS:
            self.phy = PhyConfig()  # stored in full, so a later release's defaults never change a run

    def build(self) -> Channel:
        """The channel module (validates the name, the range, the bits and the radio link)."""
        cond = tuple(self.train_condition) if isinstance(self.train_condition, list) else self.train_condition
        return create_channel(self.name, train_condition=cond, bits=self.bits, phy=self.phy)

    @classmethod
    def for_condition(cls, name: str, given: Mapping[str, Any] | None = None, bits: int = 8,
                      phy: PhyConfig | None = None) -> "ChannelConfig":
        """The config for channel `name` trained over the one condition set in `given`
        ({condition name: S or [A, B] or None}, e.g. {"snr_db": 10.0, "flip": None}); validated by
        building the channel. A condition that the channel does not take is refused (:func:`select_condition`).
        ``phy`` is kept for the Sionna channels (its defaults when None) and ignored by the others."""
        phy = (phy or PhyConfig()) if name in PHY_CHANNELS else None
        proto = create_channel(name, bits=bits, phy=phy)  # validates the name, lists the valid ones
        cond = select_condition(proto, given or {})
        config = cls(name, list(cond) if isinstance(cond, (list, tuple)) else cond, bits, phy)
        config.build()  # validates the range
        return config


def condition_names() -> dict[str, list[str]]:
    """{condition name: the registered channels that take it}, e.g. {"snr_db": ["awgn", ...], ...}."""
    out: dict[str, list[str]] = {}
    for name, cls in CHANNELS.items():
        if cls.condition_name is not None:
            out.setdefault(cls.condition_name, []).append(name)
    return out


def given_condition(given: Mapping[str, Any]) -> tuple[str | None, Any]:
    """(name, value) of the one condition set in `given` ({condition name: value or None}), or
    (None, None) when none is set. An unknown name, or more than one set, is refused."""
    known = condition_names()
    for name in given:
        if name not in known:
            raise ChannelError(f"unknown condition {name!r}",
                               hint="valid: " + ", ".join(f"`{n}`" for n in known))
    set_names = [name for name, value in given.items() if value is not None]
    if len(set_names) > 1:
        raise ChannelError("give one condition, not " + " and ".join(f"`{n}`" for n in set_names))
    return (set_names[0], given[set_names[0]]) if set_names else (None, None)


def check_condition_name(channel: Channel, name: str, subject: str = "the") -> None:
    """Refuse a condition `name` that `channel` does not take, in one line naming the right one;
    `subject` words it ("this export's", "this run's")."""
    known = condition_names()
    if name not in known:
        raise ChannelError(f"unknown condition {name!r}", hint="valid: " + ", ".join(f"`{n}`" for n in known))
    if channel.condition_name is None:
        raise ChannelError(f"channel '{channel.name}' is noiseless: it takes no condition "
                           f"({', '.join(f'`{n}`' for n in known)})")
    if name != channel.condition_name:
        raise ChannelError(f"`{name}` does not apply to {subject} channel '{channel.name}' "
                           f"(`{name}` is for {', '.join(known[name])})", hint=f"use `{channel.condition_name}`")


def select_condition(channel: Channel, given: Mapping[str, Any], subject: str = "the") -> Any:
    """The value of the one condition set in ``given`` ({condition name: value or None}), checked
    against ``channel`` (:func:`check_condition_name`), or None when none is set."""
    name, value = given_condition(given)
    if name is not None:
        check_condition_name(channel, name, subject)
    return value


def eval_conditions(channel: Channel, requested: Sequence[float] | None) -> list[float]:
    """The conditions to evaluate ``channel`` at, in its own unit, validated: ``requested``, or its
    defaults when None; none for a noiseless channel (and a ChannelError if some were requested)."""
    if channel.condition_name is None:
        if requested:
            raise ChannelError(f"channel '{channel.name}' is noiseless: it takes no conditions")
        return []
    if requested is None:
        requested = channel.default_eval_conditions
    for value in requested:
        channel.param_from_condition(value)  # validates the range, with a message naming the value
    return [float(v) for v in requested]
