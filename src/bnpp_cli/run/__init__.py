"""A fitted run: its configs, its directory (the only code that knows its files), the pipeline
builder, fit (setup around the loop), the loop, distributed setup, and evaluation."""
