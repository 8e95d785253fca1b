#!/bin/bash
# LoRA SFT of Llama-3 8B on 1 node x 8 64 GB devices (Ascend 910B, or 80 GB GPUs): TP2 (DP4) + sequence parallel, no pipeline.
# The planner predicts 47.6 GiB per rank (7.5 GiB frozen bf16 base + 0.26 GiB fp32 adapters with grads and Adam +
# 37.8 GiB activations + 2 GiB reserved); full-parameter training on this layout would need 66.0 GiB (tune_llama3_8b_ptd.sh adds PP2):
#   python tools/plan.py --model llama3-8b --tp 2 --nnodes 1 --gbs 256 --seq 8192 --device 910b2 \
#       --use-distributed-optimizer --sequence-parallel --bf16 --lora-r 16
# Adapters (r 16, alpha 32) on q, k, v, o, gate, up and down: 41.9M trainable parameters (PEFT's count for the same
# targets). The base (--load) stays frozen; --save writes the adapters and their optimizer state only.
# Launch settings only: the architecture comes from the flavor (--model llama3-8b).
# The same script runs on Ascend NPUs and NVIDIA GPUs (device picked automatically; MOETRAIN_DEVICE overrides).
# Usage (on every node): NNODES=1 NODE_RANK=<0..0> MASTER_ADDR=<node-0 address> bash examples/llama/tune_llama3_8b_lora_ptd.sh
set -euo pipefail
NNODES=${NNODES:-1}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./finetune_dataset/alpaca}  # preprocess_data.py --output-prefix (instruction handler, --pack)
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./model_from_hf/llama-3-8b-hf}
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./ckpt/llama3-8b-lora}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./model_weights/llama3-8b-mcore}  # convert_ckpt.py hf -> mg output, this layout
LOG_DIR=${LOG_DIR:-./logs/llama3-8b-lora}

PARALLEL_ARGS="--tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 --sequence-parallel"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 256 --seq-length 8192 --train-iters 1000 \
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.0 \
    --clip-grad 1.0 --bf16 --use-distributed-optimizer --seed 1234"

LORA_ARGS="--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 16 --lora-alpha 32"

DATA_ARGS="--data-path $DATA_PATH --split 100,0,0 --is-instruction-dataset --prompt-type llama3 --reset-attention-mask --reset-position-ids --variable-seq-lengths --tokenizer-type PretrainedFromHF --tokenizer-name-or-path $TOKENIZER_MODEL"

OUTPUT_ARGS="--log-interval 1 --save-interval 1000 --eval-iters 0 \
    --load $CKPT_LOAD_DIR --save $CKPT_SAVE_DIR --keep-last-k 3 --log-dir $LOG_DIR"

moetrain_launch --model llama3-8b \
    $PARALLEL_ARGS $TRAINING_ARGS $LORA_ARGS $DATA_ARGS $OUTPUT_ARGS "$@"
