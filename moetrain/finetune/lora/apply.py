"""Put LoRA adapters on a built model chunk and freeze its base weights.

Targets are megatron-core's module names, as MindSpeed-LLM's ``--lora-target-modules`` spells them:
``linear_qkv`` and ``linear_proj`` (attention), ``linear_fc1`` and ``linear_fc2`` (the dense MLP, and
every expert's when the layer is MoE). ``router`` makes the router weights trainable (no adapter).
Everything else stays frozen: no gradient buffer and no optimizer state is made for it.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.transformer_layer import TransformerLayer

from moetrain.finetune.lora.layers import (
    ColumnParallelLora,
    ExpertsLora,
    RowParallelLora,
    add_adapter_output,
    lora_a_values,
)
from moetrain.models.common.experts import GroupedExperts

TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "router")


def check_targets(targets) -> None:
    """ValueError naming the unknown ``--lora-target-modules`` entries and the choices."""
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"--lora-target-modules: unknown {' '.join(unknown)}; choose from {' '.join(TARGETS)}")


def _input_requires_grad(module, args, output):
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


def _qkv_combine(groups_local: int, q_per_group: int, head_dim: int):
    def combine(outs: dict[str, torch.Tensor]) -> torch.Tensor:
        s, b = outs["q"].shape[:2]
        q = outs["q"].reshape(s, b, groups_local, q_per_group * head_dim)
        k, v = (outs[n].reshape(s, b, groups_local, head_dim) for n in ("k", "v"))
        return torch.cat([q, k, v], dim=-1).reshape(s, b, -1)  # [q of the group, k, v] per group

    return combine


def _gated_combine(outs: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([outs["gate"], outs["up"]], dim=-1)  # [gate; up], as megatron-core's gated fc1


def _attach(parent: torch.nn.Module, name: str, adapter: torch.nn.Module) -> None:
    """``parent.<name>_lora = adapter``, added to ``parent.<name>``'s output by a forward hook."""
    parent.add_module(f"{name}_lora", adapter)
    getattr(parent, name).register_forward_hook(add_adapter_output(adapter))


def apply_lora(chunk: torch.nn.Module, targets: set[str], r: int, alpha: float, dropout: float,
               seed: int = 1234) -> list[str]:
    """Adds the adapters to ``chunk`` (a GPTModel, possibly inside Float16Module) and freezes the
    rest. Initial A values depend on ``seed`` and the global layer / expert only, so every layout
    starts from the same adapters. Returns the names of the trainable parameters."""
    check_targets(targets)
    for param in chunk.parameters():
        param.requires_grad = False
    for module in chunk.modules():
        if isinstance(module, LanguageModelEmbedding) and module.config.recompute_granularity == "full":
            # The frozen embedding's output needs no gradient, so full recompute (which re-runs a
            # block of layers from its input under torch.utils.checkpoint) would find no input
            # that requires grad and fail; the adapters inside still need the backward. Only then:
            # a grad-requiring input makes the first layers keep more for backward.
            module.register_forward_hook(_input_requires_grad)
    for module in list(chunk.modules()):
        if not isinstance(module, TransformerLayer):
            continue
        key = f"{seed}:{module.layer_number}"  # layer_number: global, 1-based
        if isinstance(module.self_attention, SelfAttention):
            _adapt_attention(module.self_attention, targets, r, alpha, dropout, key)
        if isinstance(module.mlp, MoELayer):
            _adapt_moe(module.mlp, targets, r, alpha, dropout, key)
        elif isinstance(module.mlp, MLP):
            _adapt_dense_mlp(module.mlp, targets, r, alpha, dropout, key)
    return [n for n, p in chunk.named_parameters() if p.requires_grad]


def _init_column(adapter: ColumnParallelLora, key: str) -> None:
    with torch.no_grad():
        for piece, a in adapter.lora_A.items():
            a.copy_(lora_a_values(tuple(a.shape), f"{key}:{piece}"))  # replicated: the whole A


def _init_row(adapter: RowParallelLora, in_features: int, tp_rank: int, tp: int, key: str) -> None:
    r = adapter.lora_A.shape[0]
    with torch.no_grad():
        adapter.lora_A.copy_(lora_a_values((r, in_features), key).chunk(tp, dim=1)[tp_rank])


def _adapt_attention(attn: SelfAttention, targets, r, alpha, dropout, key: str) -> None:
    cfg = attn.config
    qkv, proj = attn.linear_qkv, attn.linear_proj
    tp = qkv.tp_group.size()
    head_dim, groups_local = cfg.kv_channels, cfg.num_query_groups // tp
    q_per_group = cfg.num_attention_heads // cfg.num_query_groups
    if "linear_qkv" in targets:
        pieces = {"q": groups_local * q_per_group * head_dim, "k": groups_local * head_dim,
                  "v": groups_local * head_dim}
        adapter = ColumnParallelLora(qkv.input_size, pieces, r, alpha, dropout, qkv.sequence_parallel,
                                     qkv.tp_group, _qkv_combine(groups_local, q_per_group, head_dim))
        _init_column(adapter, f"{key}:linear_qkv")
        _attach(attn, "linear_qkv", adapter)
    if "linear_proj" in targets:
        adapter = RowParallelLora(proj.input_size_per_partition, proj.input_size, proj.output_size, r, alpha,
                                  dropout, proj.sequence_parallel, proj.tp_group)
        _init_row(adapter, proj.input_size, proj.tp_group.rank(), tp, f"{key}:linear_proj")
        _attach(attn, "linear_proj", adapter)


def _adapt_dense_mlp(mlp: MLP, targets, r, alpha, dropout, key: str) -> None:
    fc1, fc2 = mlp.linear_fc1, mlp.linear_fc2
    if "linear_fc1" in targets:
        width = fc1.output_size_per_partition // 2
        adapter = ColumnParallelLora(fc1.input_size, {"gate": width, "up": width}, r, alpha, dropout,
                                     fc1.sequence_parallel, fc1.tp_group, _gated_combine)
        _init_column(adapter, f"{key}:linear_fc1")
        _attach(mlp, "linear_fc1", adapter)
    if "linear_fc2" in targets:
        adapter = RowParallelLora(fc2.input_size_per_partition, fc2.input_size, fc2.output_size, r, alpha, dropout,
                                  fc2.sequence_parallel, fc2.tp_group)
        _init_row(adapter, fc2.input_size, fc2.tp_group.rank(), fc2.tp_group.size(), f"{key}:linear_fc2")
        _attach(mlp, "linear_fc2", adapter)


def _adapt_moe(moe: MoELayer, targets, r, alpha, dropout, key: str) -> None:
    experts = moe.experts
    if not isinstance(experts, GroupedExperts):
        raise ValueError(f"LoRA on experts needs moetrain's GroupedExperts, not {type(experts).__name__}")
    if "router" in targets:
        for param in moe.router.parameters():
            param.requires_grad = True
    expert_targets = {"linear_fc1", "linear_fc2"} & set(targets)
    if not expert_targets:
        return
    if experts.tp_group.size() > 1:
        raise ValueError("LoRA on experts with expert-tensor-parallel size > 1 is not supported; "
                         "use --expert-tensor-parallel-size 1")
    adapter = ExpertsLora(experts.num_local_experts, experts.config.hidden_size, experts.local_ffn,
                          expert_targets, r, alpha, dropout)
    first = experts.ep_group.rank() * experts.num_local_experts
    with torch.no_grad():
        for piece, a in adapter.lora_A.items():
            for j in range(a.shape[0]):  # by global expert: the same adapter at any EP size
                a[j].copy_(lora_a_values(tuple(a.shape[1:]), f"{key}:experts:{piece}:{first + j}"))
    moe.add_module("experts_lora", adapter)
    # A plain reference, not a second registration: the adapter's parameters live under
    # ``mlp.experts_lora`` only, and GroupedExperts' checkpoint names stay SequentialMLP's.
    object.__setattr__(experts, "lora", adapter)
