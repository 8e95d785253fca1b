#!/bin/bash
# Generate with the tiny Grok-1-style MoE on 2 CPU ranks (TP2; gloo, 1 thread each); runs unchanged on NPU / GPU.
# `make demo` runs it at the end, on the checkpoints it trained at TP2 x PP2 x EP2: re-sharded on load.
# Default: greedy continuation of PROMPT. Pass --task chat --prompt-type chatml for a conversation
# with the SFT checkpoint, or --input-file prompts.jsonl --output-file results.jsonl for a batch.
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-2}  # CPU ranks
MASTER_PORT=${MASTER_PORT:-29514}
MOETRAIN_MODULE=moetrain.inference.generate
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./demo_out/ckpt}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./demo_out/tokenizer/tokenizer.model}
PROMPT=${PROMPT:-"The Python interpreter"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

moetrain_launch --load $CKPT_LOAD_DIR --model grok1-tiny --tensor-model-parallel-size 2 \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL \
    --task greedy --max-new-tokens 32 --prompt "$PROMPT" "$@"
