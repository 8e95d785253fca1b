"""moetrain.models.llama."""
