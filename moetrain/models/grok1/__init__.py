"""moetrain.models.grok1."""
