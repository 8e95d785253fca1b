"""Compatibility with other frameworks' command lines (Megatron-LM, ModelLink / MindSpeed-LLM)."""
