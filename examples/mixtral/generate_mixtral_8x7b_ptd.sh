#!/bin/bash
# Generate with Mixtral-8x7B on 1 node x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): EP8, bf16 (~14 GB per device).
# One expert per device per layer; attention and the router are replicated. --load takes a trainer
# checkpoint, the convert_ckpt.py output or the HF directory (re-sharded on load).
# Usage: bash examples/mixtral/generate_mixtral_8x7b_ptd.sh [--task chat --prompt-type llama2 | --input-file p.jsonl --output-file r.jsonl]
set -euo pipefail
MOETRAIN_MODULE=moetrain.inference.generate
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/mixtral-8x7b-sft}
TOKENIZER_PATH=${TOKENIZER_PATH:-./model_from_hf/mixtral-8x7b}
PROMPT=${PROMPT:-"The capital of France is"}

moetrain_launch --load $CKPT_LOAD_DIR --model mixtral-8x7b --expert-model-parallel-size 8 --bf16 \
    --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_PATH --add-bos \
    --task greedy --max-new-tokens 128 --prompt "$PROMPT" "$@"
