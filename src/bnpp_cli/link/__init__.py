"""What crosses the cut: simulated channels and their config, the wire format, the receiver side."""
