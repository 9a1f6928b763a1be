"""The steering layer: hooks that edit the residual stream, steering vectors, conditions, and
compositions of settings."""
