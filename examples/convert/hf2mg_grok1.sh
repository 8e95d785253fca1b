#!/bin/bash
# Grok-1 (hpcai-tech/grok-1 layout) -> Megatron per-rank checkpoint for the 16-device "40B" recipe layout.
set -euo pipefail
python ckpt_converters/convert_ckpt.py --model-type-hf grok1 \
    --load-model-type hf --save-model-type mg \
    --load-dir ./model_from_hf/grok1-hf --save-dir ./model_weights/grok1-mcore \
    --target-tensor-parallel-size 4 --target-pipeline-parallel-size 2 --target-expert-parallel-size 2 \
    --params-dtype bf16
