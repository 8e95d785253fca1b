#!/bin/bash
# Grok-1 314B (64 layers) on 16 nodes x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP8 PP16 EP1 + sequence parallel, recompute.
# Launch settings only: the architecture comes from the flavor (--model grok1-314b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=16 NODE_RANK=<0..15> MASTER_ADDR=<node-0 address> bash examples/grok1/pretrain_grok1_314b_ptd.sh
set -euo pipefail
NNODES=${NNODES:-16}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./dataset/enwiki_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/grok1/tokenizer.model}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/grok1-314b}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/grok1-314b}
LOG_DIR=${LOG_DIR:-./logs/grok1-314b}

PARALLEL_ARGS="--tensor-model-parallel-size 8 --pipeline-model-parallel-size 16 --expert-model-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 512 --seq-length 8192 --train-iters 2000 \
    --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall \
    --recompute-granularity full --recompute-method uniform --recompute-num-layers 1"

DATA_ARGS="--data-path $DATA_PATH --split 949,50,1 --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-interval 1000 --eval-iters 10 \
    --save $CKPT_SAVE_DIR --load $CKPT_LOAD_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model grok1-314b \
    $PARALLEL_ARGS $TRAINING_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
