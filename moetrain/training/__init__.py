"""moetrain.training."""
