"""moetrain.testing."""
