#!/bin/bash
# Mixtral-8x7B -> Megatron TP2 x PP2 x EP2.
set -euo pipefail
python ckpt_converters/convert_ckpt.py --model-type-hf mixtral \
    --load-model-type hf --save-model-type mg \
    --load-dir ./model_from_hf/Mixtral-8x7B-v0.1 --save-dir ./model_weights/mixtral-mcore \
    --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2 --target-expert-parallel-size 2 \
    --params-dtype bf16
