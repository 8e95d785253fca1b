"""moetrain: Megatron-style 3D-parallel training of MoE and dense LLMs on NPU, GPU and CPU."""

__version__ = "0.1.0"
