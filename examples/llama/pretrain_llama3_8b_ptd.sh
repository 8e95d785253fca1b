#!/bin/bash
# Llama-3 8B on 1 node x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP2 PP2 (DP2) + sequence parallel.
# Launch settings only: the architecture comes from the flavor (--model llama3-8b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=1 NODE_RANK=<0..0> MASTER_ADDR=<node-0 address> bash examples/llama/pretrain_llama3_8b_ptd.sh
set -euo pipefail
NNODES=${NNODES:-1}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./dataset/enwiki_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/llama-3-8b-hf}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/llama3-8b}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./ckpt/llama3-8b}
LOG_DIR=${LOG_DIR:-./logs/llama3-8b}

PARALLEL_ARGS="--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 256 --seq-length 8192 --train-iters 2000 \
    --lr 1.25e-6 --min-lr 1.25e-7 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234"

DATA_ARGS="--data-path $DATA_PATH --split 949,50,1 --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-interval 1000 --eval-iters 10 \
    --save $CKPT_SAVE_DIR --load $CKPT_LOAD_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model llama3-8b \
    $PARALLEL_ARGS $TRAINING_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
