#!/bin/bash
# Generate with Llama-3-8B on 2 64 GB devices (Ascend 910B, or 80 GB GPUs): TP2, bf16 (~8 GB of weights per device).
# --load takes a trainer checkpoint, the convert_ckpt.py output or the HF directory (re-sharded on load).
# Usage: bash examples/llama/generate_llama3_8b_ptd.sh [--task chat --prompt-type llama3 | --input-file p.jsonl --output-file r.jsonl]
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-2}
MOETRAIN_MODULE=moetrain.inference.generate
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/llama3-8b-sft}
TOKENIZER_PATH=${TOKENIZER_PATH:-./model_from_hf/llama3-8b}
PROMPT=${PROMPT:-"The capital of France is"}

moetrain_launch --load $CKPT_LOAD_DIR --model llama3-8b --tensor-model-parallel-size 2 --bf16 \
    --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_PATH --add-bos \
    --task greedy --max-new-tokens 128 --prompt "$PROMPT" "$@"
