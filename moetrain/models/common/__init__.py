"""moetrain.models.common."""
