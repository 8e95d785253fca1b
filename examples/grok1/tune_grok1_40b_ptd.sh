#!/bin/bash
# Full-parameter SFT of Grok-1 "40B" (Grok-1 shape, 8 layers) on 4 nodes x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP4 PP2 EP4 + sequence parallel.
# Experts are sharded over EP only (expert-TP 1), as convert_ckpt.py writes them: EP4 makes that fit.
# Launch settings only: the architecture comes from the flavor (--model grok1-40b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node-0 address> bash examples/grok1/tune_grok1_40b_ptd.sh
set -euo pipefail
NNODES=${NNODES:-4}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./finetune_dataset/alpaca}  # preprocess_data.py --output-prefix (instruction handler, --pack)
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/grok1/tokenizer.model}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/grok1-40b-sft}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./model_weights/grok1-40b-mcore}  # convert_ckpt.py hf -> mg output, this layout
LOG_DIR=${LOG_DIR:-./logs/grok1-40b-sft}

PARALLEL_ARGS="--tensor-model-parallel-size 4 --pipeline-model-parallel-size 2 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 128 --seq-length 8192 --train-iters 1000 \
    --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall"

DATA_ARGS="--data-path $DATA_PATH --split 100,0,0 --is-instruction-dataset --prompt-type grok1 --reset-attention-mask --reset-position-ids --variable-seq-lengths --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-iters 0 \
    --load $CKPT_LOAD_DIR --finetune --save $CKPT_SAVE_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model grok1-40b \
    $PARALLEL_ARGS $TRAINING_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
