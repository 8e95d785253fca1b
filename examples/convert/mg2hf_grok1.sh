#!/bin/bash
# Megatron checkpoint (per-rank files, or the trainer's torch_dist save dir) -> Hugging Face safetensors.
set -euo pipefail
python ckpt_converters/convert_ckpt.py --model-type-hf grok1 \
    --load-model-type mg --save-model-type hf \
    --load-dir ./ckpt/grok1-40b --save-dir ./grok1-40b-hf \
    --max-shard-size 5GB --tokenizer-dir ./model_from_hf/grok1-hf
