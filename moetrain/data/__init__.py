"""moetrain.data."""
