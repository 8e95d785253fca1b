#!/bin/bash
# Tiny Llama on 4 ranks: TP2 x PP2.
# Runs on CPU (gloo ranks; 1 thread each) and unchanged on NPU / GPU. `make demo` runs it.
# Extra flags are appended and win: bash examples/tiny/pretrain_llama_tiny.sh --train-iters 50 --hidden-size 128
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-4}  # CPU ranks
MASTER_PORT=${MASTER_PORT:-29511}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./demo_out/data/demo_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./demo_out/tokenizer/tokenizer.model}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./demo_out/ckpt/llama-tiny}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-$CKPT_SAVE_DIR}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

moetrain_launch --model llama-tiny \
    --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel \
    --micro-batch-size 2 --global-batch-size 16 --seq-length 64 --train-iters 100 \
    --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --lr-warmup-iters 5 --weight-decay 0.01 --clip-grad 1.0 \
    --data-path $DATA_PATH --split 98,2,0 --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL \
    --save $CKPT_SAVE_DIR --load $CKPT_LOAD_DIR --save-interval 50 --keep-last-k 2 \
    --log-interval 10 --eval-interval 50 --eval-iters 2 "$@"
