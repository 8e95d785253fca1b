#!/bin/bash
# Grok-1-shaped MoE throughput benchmark on 1 x 80 GB devices (one H100 or H200 GPU): 1 layer, 4 experts top-2, mock data, bf16, seq 4096.
# Launch settings only: Grok-1's widths and numerics come from the flavor (--model grok1-314b: hidden 6144,
# 48 heads / 8 KV heads of 128, FFN 32768, vocab 131072, soft-cap 30, GeGLU experts, sandwich norms,
# softmax-then-top-2 routing without renormalisation); only the layer and expert counts are cut
# (--num-layers 1 --num-experts 4) so that the model, its fp32 gradients and Adam state fit one GPU.
# The tokens are megatron-core's MockGPTDataset (--mock-data): no corpus or tokenizer is needed.
# Planner (moetrain.planner.make_plan with this flavor and these overrides; tools/plan.py takes flavors only):
#   3.31B parameters (0.89B dense, 2.42B expert, 2.10B active per token);
#   63.3 GiB of 80 per GPU (weights 6.2 + grads 12.3 + optimizer 37.0 + activations 5.9 + 2.0 reserved);
#   70.9 GiB with an attention that stores the s x s scores (the torch reference of the soft-capped attention);
#   4.2e14 model FLOPs per step: 1.1 s/step, 31018 tokens/s/p at an assumed MFU of 0.40 (989.4 TFLOPS bf16 peak).
#   2 layers x 4 experts would need 108.9 GiB (fits a 141 GB H200 only); 2 layers x 2 experts 68.4 GiB.
# 20 iterations; report without the first 3 (warm-up):
#   python tools/benchmark.py --log-dir logs/bench/grok1-moe-1gpu-mock --warmup 3
# Flags appended win (bash examples/bench/pretrain_grok1_moe_1gpu_mock.sh --train-iters 8); tools/gpu_check.sh runs it.
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
MASTER_PORT=${MASTER_PORT:-29522}
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

LOG_DIR=${LOG_DIR:-${MOETRAIN_LOG_DIR:-./logs/bench/grok1-moe-1gpu-mock}}

MODEL_ARGS="--num-layers 1 --num-experts 4"

TRAINING_ARGS="--micro-batch-size 1 --global-batch-size 8 --seq-length 4096 --train-iters 20 \
    --lr 1e-5 --min-lr 1e-6 --lr-decay-style cosine --lr-warmup-iters 2 --weight-decay 0.1 --clip-grad 1.0 \
    --bf16 --seed 1234 --moe-aux-loss-coeff 0.01 --moe-token-dispatcher-type alltoall"

OUTPUT_ARGS="--log-interval 1 --eval-iters 0 --log-dir $LOG_DIR --no-tensorboard"

moetrain_launch --model grok1-314b --mock-data $MODEL_ARGS \
    $TRAINING_ARGS $OUTPUT_ARGS "$@"
