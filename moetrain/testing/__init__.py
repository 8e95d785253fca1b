"""Helpers for tests: spawning several gloo ranks on a CPU."""
