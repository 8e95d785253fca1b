"""Fine-tuning workflows on the Trainer: full-parameter SFT (``sft.py``); LoRA goes here too."""
