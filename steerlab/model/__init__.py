"""The model layer: loading a model into a handle, encoding text, and running it (generation,
scoring, the upper stack, activation reads)."""
