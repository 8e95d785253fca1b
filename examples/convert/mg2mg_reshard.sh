#!/bin/bash
# Re-shard a Megatron checkpoint to another layout (here TP4 PP2 EP2 -> TP2 PP4 EP1).
set -euo pipefail
python ckpt_converters/convert_ckpt.py --model-type-hf grok1 \
    --load-model-type mg --save-model-type mg \
    --load-dir ./model_weights/grok1-mcore --save-dir ./model_weights/grok1-mcore-tp2pp4 \
    --target-tensor-parallel-size 2 --target-pipeline-parallel-size 4 --target-expert-parallel-size 1
