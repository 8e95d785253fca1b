"""moetrain.device."""
