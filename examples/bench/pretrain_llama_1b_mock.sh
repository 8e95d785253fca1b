#!/bin/bash
# Llama 1B throughput benchmark on 1 x 80 GB devices (one H100 or H200 GPU): mock data, bf16, seq 4096, GBS 16, MBS 2.
# Launch settings only: the architecture comes from the flavor (--model llama-1b); the tokens are
# megatron-core's MockGPTDataset (--mock-data), so no corpus or tokenizer is needed.
# Planner (python tools/plan.py --model llama-1b --nproc-per-node 1 --gbs 16 --mbs 2 --seq 4096 --device h100 --bf16):
#   46.2 GiB of 80 per GPU (weights 2.8 + grads 5.6 + optimizer 16.8 + activations 19.1 + 2.0 reserved),
#   5.4e14 model FLOPs per step: 1.4 s/step, 48147 tokens/s/p at an assumed MFU of 0.40 (989.4 TFLOPS bf16 peak).
# 20 iterations; report without the first 3 (warm-up):
#   python tools/benchmark.py --log-dir logs/bench/llama-1b-mock --warmup 3
# Flags appended win (bash examples/bench/pretrain_llama_1b_mock.sh --train-iters 8); tools/gpu_check.sh runs it.
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
MASTER_PORT=${MASTER_PORT:-29521}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

LOG_DIR=${LOG_DIR:-${MOETRAIN_LOG_DIR:-./logs/bench/llama-1b-mock}}

TRAINING_ARGS="--micro-batch-size 2 --global-batch-size 16 --seq-length 4096 --train-iters 20 \
    --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 2 --weight-decay 0.1 --clip-grad 1.0 \
    --bf16 --seed 1234"

OUTPUT_ARGS="--log-interval 1 --eval-iters 0 --log-dir $LOG_DIR --no-tensorboard"

moetrain_launch --model llama-1b --mock-data \
    $TRAINING_ARGS $OUTPUT_ARGS "$@"
