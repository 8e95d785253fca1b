#!/bin/bash
# Full-parameter SFT of Mixtral 8x7B on 2 nodes x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP2 PP4 EP4 + sequence parallel.
# Experts are sharded over EP only (expert-TP 1), as convert_ckpt.py writes them: EP4 makes that fit.
# Launch settings only: the architecture comes from the flavor (--model mixtral-8x7b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=2 NODE_RANK=<0..1> MASTER_ADDR=<node-0 address> bash examples/mixtral/tune_mixtral_8x7b_ptd.sh
set -euo pipefail
NNODES=${NNODES:-2}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./finetune_dataset/alpaca}  # preprocess_data.py --output-prefix (instruction handler, --pack)
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/mixtral-8x7b-hf}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/mixtral-8x7b-sft}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./model_weights/mixtral-8x7b-mcore}  # convert_ckpt.py hf -> mg output, this layout
LOG_DIR=${LOG_DIR:-./logs/mixtral-8x7b-sft}

PARALLEL_ARGS="--tensor-model-parallel-size 2 --pipeline-model-parallel-size 4 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 128 --seq-length 4096 --train-iters 1000 \
    --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall \
    --recompute-granularity full --recompute-method block --recompute-num-layers 4"

DATA_ARGS="--data-path $DATA_PATH --split 100,0,0 --is-instruction-dataset --prompt-type llama2 --reset-attention-mask --reset-position-ids --variable-seq-lengths --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-iters 0 \
    --load $CKPT_LOAD_DIR --finetune --save $CKPT_SAVE_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model mixtral-8x7b \
    $PARALLEL_ARGS $TRAINING_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
