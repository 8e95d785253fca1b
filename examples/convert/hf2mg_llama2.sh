#!/bin/bash
# Llama-2 (transformers layout) -> Megatron TP2 x PP2 with an uneven pipeline split.
set -euo pipefail
python ckpt_converters/convert_ckpt.py --model-type-hf llama2 \
    --load-model-type hf --save-model-type mg \
    --load-dir ./model_from_hf/llama-2-7b-hf --save-dir ./model_weights/llama-2-7b-mcore \
    --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2 --num-layer-list 15,17 \
    --params-dtype bf16 --make-vocab-size-divisible-by 128
