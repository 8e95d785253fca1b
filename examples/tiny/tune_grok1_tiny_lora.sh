#!/bin/bash
# Tiny Grok-1-style MoE, LoRA SFT on 8 ranks: TP2 x PP2 x DP2 with EP2 + sequence parallel, adapters on every linear and expert.
# Runs on CPU (gloo ranks; 1 thread each) and unchanged on NPU / GPU. Base: the `make demo` pretraining checkpoint (frozen).
# DATA_PATH is the --output-prefix of tools/preprocess_data.py run with an *InstructionHandler (--pack here).
# --save writes the adapters (and their optimizer state) only; --lora-load continues from them.
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}  # CPU ranks
MASTER_PORT=${MASTER_PORT:-29513}
MOETRAIN_MODULE=moetrain.finetune.sft
source "$(dirname "${BASH_SOURCE[0]}")/../launch_common.sh"

DATA_PATH=${DATA_PATH:-./demo_out/sft_data/demo_sft}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-./demo_out/tokenizer/tokenizer.model}
CKPT_LOAD_DIR=${CKPT_LOAD_DIR:-./demo_out/ckpt}  # the base: tools/demo.py's pretraining checkpoint
CKPT_SAVE_DIR=${CKPT_SAVE_DIR:-./demo_out/ckpt_lora}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

moetrain_launch --model grok1-tiny \
    --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --expert-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer \
    --micro-batch-size 2 --global-batch-size 16 --seq-length 128 --train-iters 40 \
    --lr 5e-3 --min-lr 5e-4 --lr-decay-style cosine --lr-warmup-iters 4 --weight-decay 0.0 --clip-grad 1.0 \
    --lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 8 --lora-alpha 16 \
    --data-path $DATA_PATH --is-instruction-dataset --prompt-type chatml --split 90,10,0 \
    --reset-attention-mask --reset-position-ids --variable-seq-lengths \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model $TOKENIZER_MODEL \
    --load $CKPT_LOAD_DIR --save $CKPT_SAVE_DIR --save-interval 40 \
    --log-interval 5 --eval-interval 20 --eval-iters 1 "$@"
