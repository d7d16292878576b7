"""THE channel registry: every channel by name (link.channels' textbook ones, link.phy's and
link.ldpc's radio links), and the one way to build one."""

from __future__ import annotations

from ..errors import ChannelError, choices_hint
from .channels import (AWGNChannel, BinaryErasureChannel, BinarySymmetricChannel, Channel, Condition, NoiselessChannel,
                       PowerAWGNChannel, RayleighChannel)
from .ldpc import LDPCChannel
from .phy import OFDMChannel, PhyConfig  # sionna itself is imported only when one of these is built

CHANNELS: dict[str, type[Channel]] = {
    cls.name: cls
    for cls in (NoiselessChannel, AWGNChannel, PowerAWGNChannel, RayleighChannel,
                BinaryErasureChannel, BinarySymmetricChannel, OFDMChannel, LDPCChannel)
}
PHY_CHANNELS = ("ofdm", "ldpc")  # built over a PhyConfig (link.phy), with the `phy` extra


def list_channels() -> list[str]:
    """Names of the registered channels."""
    return list(CHANNELS)


def create_channel(name: str, train_condition: Condition = None, bits: int = 8,
                   phy: PhyConfig | None = None) -> Channel:
    """Build a channel by name; ``bits`` applies to digital channels only, ``phy`` to the Sionna
    channels only (None: PhyConfig's defaults)."""
    cls = CHANNELS.get(name)
    if cls is None:
        raise ChannelError(f"unknown channel {name!r}; valid: {', '.join(CHANNELS)}",
                           hint=choices_hint(str(name), CHANNELS))
    return cls.create(train_condition, bits=bits, phy=phy)
