#!/bin/bash
# LoRA SFT of Grok-1 314B (64 layers) on 8 nodes x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP8 PP8 EP8 + sequence parallel, expert-TP 1.
# The planner predicts 53.7 GiB per rank at most (stage 0: 9.4 GiB frozen bf16 base + 0.27 GiB fp32 adapters with
# grads and Adam + 42.1 GiB activations + 2 GiB reserved); full-parameter training on this layout would need 115.4 GiB.
# Check it, or another layout, before launching:
#   python tools/plan.py --model grok1-314b --tp 8 --pp 8 --ep 8 --etp 1 --nnodes 8 --nproc-per-node 8 \
#       --gbs 128 --mbs 1 --seq 4096 --device 910b2 --use-distributed-optimizer --sequence-parallel --bf16 --lora-r 16
# Adapters (r 16, alpha 32) on every attention and expert projection (per expert); the base (--load) stays frozen and
# --save writes the adapters and their optimizer state only. No recompute: with the embedding frozen, the first
# stage's recomputed layers get an input that needs no gradient, and LoRA with --recompute-granularity full fails there.
# Launch settings only: the architecture comes from the flavor (--model grok1-314b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node-0 address> bash examples/grok1/tune_grok1_314b_lora_ptd.sh
set -euo pipefail
NNODES=${NNODES:-8}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./finetune_dataset/alpaca}  # preprocess_data.py --output-prefix (instruction handler, --pack)
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/grok1/tokenizer.model}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/grok1-314b-lora}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./model_weights/grok1-314b-mcore}  # convert_ckpt.py hf -> mg output, this layout
LOG_DIR=${LOG_DIR:-./logs/grok1-314b-lora}

PARALLEL_ARGS="--tensor-model-parallel-size 8 --pipeline-model-parallel-size 8 --expert-model-parallel-size 8 --expert-tensor-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 128 --seq-length 4096 --train-iters 1000 \
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.0 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234 \
    --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall"

LORA_ARGS="--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 16 --lora-alpha 32"

DATA_ARGS="--data-path $DATA_PATH --split 100,0,0 --is-instruction-dataset --prompt-type grok1 --reset-attention-mask --reset-position-ids --variable-seq-lengths --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-iters 0 \
    --load $CKPT_LOAD_DIR --save $CKPT_SAVE_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model grok1-314b \
    $PARALLEL_ARGS $TRAINING_ARGS $LORA_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
