"""What learns: the encoder / decoder pair, its layers, its presets and its config."""
