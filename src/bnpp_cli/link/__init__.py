"""What crosses the cut: simulated channels and their config, the wire format, the receiver side."""

from . import channels  # noqa: F401,E402 (the registry first: link.phy and link.ldpc subclass its channels)
