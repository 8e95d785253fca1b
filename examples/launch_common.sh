# Sourced by the recipes: the torchrun launch that every recipe shares.
# Environment (set on every node, as Megatron-LM / ModelLink users do):
#   GPUS_PER_NODE (devices per node), NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON.
# A recipe may set its own defaults before sourcing this file (e.g. NNODES=${NNODES:-2}).

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
PYTHON=${PYTHON:-python}

# moetrain_launch ARGS...: torchrun (via the interpreter, so an un-activated venv works) of moetrain.pretrain,
# or of the module a recipe sets in MOETRAIN_MODULE (moetrain.finetune.sft for the tune_* recipes).
moetrain_launch() {
    "$PYTHON" -m torch.distributed.run --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" \
        --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
        -m "${MOETRAIN_MODULE:-moetrain.pretrain}" "$@"
}
