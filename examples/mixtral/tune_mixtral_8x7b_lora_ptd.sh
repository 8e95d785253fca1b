#!/bin/bash
# LoRA SFT of Mixtral 8x7B on 1 node x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP2 PP2 EP4 + sequence parallel, expert-TP 1.
# The planner predicts 48.9 GiB per rank at most (stage 0: 11.3 GiB frozen bf16 base + 0.48 GiB fp32 adapters with
# grads and Adam + 35.1 GiB activations + 2 GiB reserved); the full-parameter recipe (tune_mixtral_8x7b_ptd.sh) needs
# 2 nodes and block recompute:
#   python tools/plan.py --model mixtral-8x7b --tp 2 --pp 2 --ep 4 --etp 1 --nnodes 1 --gbs 128 --seq 4096 \
#       --device 910b2 --use-distributed-optimizer --sequence-parallel --bf16 --lora-r 16
# Adapters (r 16, alpha 32) on q, k, v, o and every expert's w1, w3, w2 (one adapter per expert, the same at any EP);
# the base (--load) stays frozen; --save writes the adapters and their optimizer state only. Expert adapters need
# expert-TP 1. No recompute: with the embedding frozen, LoRA with --recompute-granularity full fails on the first stage.
# Launch settings only: the architecture comes from the flavor (--model mixtral-8x7b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=1 NODE_RANK=<0..0> MASTER_ADDR=<node-0 address> bash examples/mixtral/tune_mixtral_8x7b_lora_ptd.sh
set -euo pipefail
NNODES=${NNODES:-1}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./finetune_dataset/alpaca}  # preprocess_data.py --output-prefix (instruction handler, --pack)
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/mixtral-8x7b-hf}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/mixtral-8x7b-lora}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./model_weights/mixtral-8x7b-mcore}  # convert_ckpt.py hf -> mg output, this layout
LOG_DIR=${LOG_DIR:-./logs/mixtral-8x7b-lora}

PARALLEL_ARGS="--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --expert-model-parallel-size 4 --expert-tensor-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 128 --seq-length 4096 --train-iters 1000 \
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.0 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall"

LORA_ARGS="--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 16 --lora-alpha 32"

DATA_ARGS="--data-path $DATA_PATH --split 100,0,0 --is-instruction-dataset --prompt-type llama2 --reset-attention-mask --reset-position-ids --variable-seq-lengths --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-iters 0 \
    --load $CKPT_LOAD_DIR --save $CKPT_SAVE_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model mixtral-8x7b \
    $PARALLEL_ARGS $TRAINING_ARGS $LORA_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
