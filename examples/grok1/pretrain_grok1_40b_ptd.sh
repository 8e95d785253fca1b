#!/bin/bash
# Grok-1 "40B" (Grok-1 shape, 8 layers) on 2 nodes x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP4 PP2 EP2 + sequence parallel.
# Launch settings only: the architecture comes from the flavor (--model grok1-40b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=2 NODE_RANK=<0..1> MASTER_ADDR=<node-0 address> bash examples/grok1/pretrain_grok1_40b_ptd.sh
set -euo pipefail
NNODES=${NNODES:-2}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./dataset/enwiki_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/grok1/tokenizer.model}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/grok1-40b}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/grok1-40b}
LOG_DIR=${LOG_DIR:-./logs/grok1-40b}

PARALLEL_ARGS="--tensor-model-parallel-size 4 --pipeline-model-parallel-size 2 --expert-model-parallel-size 2 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 128 --seq-length 8192 --train-iters 2000 \
    --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall"

DATA_ARGS="--data-path $DATA_PATH --split 949,50,1 --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-interval 1000 --eval-iters 10 \
    --save $CKPT_SAVE_DIR --load $CKPT_LOAD_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model grok1-40b \
    $PARALLEL_ARGS $TRAINING_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
