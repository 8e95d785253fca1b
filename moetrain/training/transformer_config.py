"""ModelConfig + ParallelDims + RuntimeOptions -> megatron-core TransformerConfig.

The model layer (``moetrain/models/``) describes the architecture only; the choices of a run
(precision, recompute, dropout, token dispatcher, init) and what the backend can do (batched
pipeline p2p) are decided here, by the workflow, and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from moetrain.models.config import ModelConfig
from moetrain.parallel import ParallelDims

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RuntimeOptions:
    """Choices that are not architecture: precision, recompute, dispatcher, dropout, init."""

    dtype: str = "fp32"  # fp32 | bf16 | fp16 (params and compute)
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    recompute_granularity: str | None = None  # None | "full" | "selective"
    recompute_method: str | None = None  # "uniform" | "block" (full recompute)
    recompute_num_layers: int | None = None
    moe_token_dispatcher_type: str = "alltoall"
    # Initialise full master weights on the CPU and split them, so the initial model does not depend
    # on the parallel layout (megatron-core's use_cpu_initialization).
    use_cpu_initialization: bool = True
    init_method_std: float = 0.02
    # A backend capability, passed in by the caller (gloo matches batched PP messages wrongly).
    batch_p2p_comm: bool = True
    # SFT: losses are token sums, divided by the trained tokens of the whole global batch (across
    # micro-batches and DP) in finalize_model_grads, not a mean per micro-batch.
    calculate_per_token_loss: bool = False
    # Micro-batches of different lengths (SFT --variable-seq-lengths): pipeline p2p sends shapes first.
    variable_seq_lengths: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.recompute_granularity not in (None, "full", "selective"):
            raise ValueError(f"--recompute-granularity must be 'full' or 'selective', got {self.recompute_granularity!r}")
        if self.recompute_granularity == "full" and self.recompute_method not in ("uniform", "block"):
            raise ValueError("--recompute-granularity full needs --recompute-method uniform|block")
        if self.moe_token_dispatcher_type not in ("alltoall", "allgather"):
            raise ValueError(f"--moe-token-dispatcher-type must be alltoall or allgather, got "
                             f"{self.moe_token_dispatcher_type!r}")


def pipeline_layout(num_layer_list: tuple[int, ...]) -> str:
    """ModelLink's --num-layer-list "3,5" as megatron-core's layout string "Ettt|tttttL"."""
    stages = ["t" * n for n in num_layer_list]
    stages[0] = "E" + stages[0]
    stages[-1] = stages[-1] + "L"
    return "|".join(stages)


def build_transformer_config(cfg: ModelConfig, dims: ParallelDims, options: RuntimeOptions) -> TransformerConfig:
    dtype = DTYPES[options.dtype]
    moe = {}
    if cfg.is_moe:
        moe = dict(
            num_moe_experts=cfg.num_experts,
            moe_router_topk=cfg.moe_router_topk,
            moe_ffn_hidden_size=cfg.ffn_hidden_size,
            moe_router_pre_softmax=cfg.moe_router_pre_softmax,
            moe_router_dtype="fp32",  # Grok-1's router is fp32; harmless for Mixtral
            moe_router_load_balancing_type="aux_loss" if cfg.moe_aux_loss_coeff > 0 else "none",
            moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
            moe_z_loss_coeff=cfg.moe_z_loss_coeff,
            moe_expert_capacity_factor=cfg.moe_expert_capacity_factor,
            moe_token_drop_policy="probs",
            moe_grouped_gemm=False,
        )
    recompute = {}
    if options.recompute_granularity:
        recompute = dict(recompute_granularity=options.recompute_granularity)
        if options.recompute_granularity == "full":
            recompute.update(recompute_method=options.recompute_method,
                             recompute_num_layers=options.recompute_num_layers or 1)
    layout = {}
    if dims.num_layer_list is not None and dims.pp > 1:
        layout = dict(pipeline_model_parallel_layout=pipeline_layout(dims.num_layer_list))
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        # megatron-core only checks that this is F.silu / F.gelu; the computation (including
        # exact vs tanh GELU) is GatedActivation's, which receives the whole [gate; up] tensor.
        activation_func=F.silu if cfg.activation == "swiglu" else F.gelu,
        use_te_activation_func=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=options.hidden_dropout,
        attention_dropout=options.attention_dropout,
        # HF (Llama and the Grok-1 release) scales by head_dim ** -0.5, which differs from
        # 1 / math.sqrt(head_dim) by an ulp for head_dim 128: use HF's spelling.
        softmax_scale=cfg.attn_output_multiplier or cfg.head_dim ** -0.5,
        bias_dropout_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        init_method_std=options.init_method_std,
        use_cpu_initialization=options.use_cpu_initialization,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=dims.tp,
        pipeline_model_parallel_size=dims.pp,
        virtual_pipeline_model_parallel_size=dims.vpp if dims.vpp and dims.vpp > 1 else None,
        expert_model_parallel_size=dims.ep,
        expert_tensor_parallel_size=dims.expert_tp,
        sequence_parallel=dims.sequence_parallel,
        batch_p2p_comm=options.batch_p2p_comm,
        calculate_per_token_loss=options.calculate_per_token_loss,
        # Set for dense models too: megatron-core checks it against variable_seq_lengths.
        moe_token_dispatcher_type=options.moe_token_dispatcher_type,
        variable_seq_lengths=options.variable_seq_lengths,
        **layout,
        **moe,
        **recompute,
    )
