"""LoRA fine-tuning (work in progress on this branch): adapters (layers.py), putting them on a model
and freezing the base (apply.py)."""
