"""Checkpoint formats and the HF <-> Megatron converter behind ckpt_converters/convert_ckpt.py."""
