#!/bin/bash
# Generate with Grok-1 "40B" (Grok-1 shape, 8 layers) on 1 node x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): EP8, bf16.
# Experts are spread over EP (one per device, ~10 GB); the ~1.5B dense weights are replicated. The
# attention soft-cap of 30 holds in prefill and decode. --load takes a trainer checkpoint, the
# convert_ckpt.py output or the HF directory, at whatever layout it was saved (re-sharded on load).
# Usage: bash examples/grok1/generate_grok1_40b_ptd.sh [--task chat --prompt-type grok1 | --input-file p.jsonl --output-file r.jsonl]
set -euo pipefail
MOETRAIN_MODULE=moetrain.inference.generate
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/grok1-40b-sft}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/grok1/tokenizer.model}
PROMPT=${PROMPT:-"The answer to life, the universe and everything is"}

moetrain_launch --load $CKPT_LOAD_DIR --model grok1-40b \
    --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --expert-model-parallel-size 8 --bf16 \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL \
    --task greedy --max-new-tokens 128 --prompt "$PROMPT" "$@"
