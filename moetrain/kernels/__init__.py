"""moetrain.kernels."""
