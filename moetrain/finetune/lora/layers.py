"""LoRA adapters for megatron-core's parallel linears and moetrain's stacked experts.

    y = W x + (alpha / r) * B A dropout(x)        A [r, in], B [out, r]; B starts at zero

One adapter per Hugging Face projection, so an adapter means what PEFT's does: the fused
``linear_qkv`` carries a q, a k and a v adapter whose outputs are written into the fused
per-query-group layout ([q heads of the group, k, v] per group), and a gated ``linear_fc1`` carries
a gate and an up adapter ([gate; up]). The adapter math runs in fp32 whatever the base dtype.

Sharding keeps the math of one device (TP ranks hold slices of one adapter):
  column-parallel base (linear_qkv, linear_fc1): A [r, in] replicated, B [out/tp, r] column-parallel.
      Without sequence parallelism the rank outputs of A are summed in backward
      (copy_to_tensor_model_parallel_region), so A's gradient is complete on every rank; with it the
      input is all-gathered here (its backward reduce-scatters) and A's partial gradient is tagged
      ``sequence_parallel`` for megatron-core's finalize_model_grads to all-reduce over TP.
  row-parallel base (linear_proj, linear_fc2): A [r, in/tp] row-parallel, B [out, r] replicated.
      A's partial products are all-reduced (reduce_from_tensor_model_parallel_region), so every rank
      computes B's product for the whole sequence and B's gradient is complete everywhere; with
      sequence parallelism the output is then split along the sequence like the base's.
  experts: every expert has its own A and B ([experts, r, in], [experts, out, r] per EP rank), run
      as grouped GEMMs on the routed tokens, so an adapter means the same at any EP size.

The adapters are siblings of the linears they adapt (``self_attention.linear_qkv_lora`` next to
``self_attention.linear_qkv``), added to the linear's output by a forward hook: the base modules,
their parameter names and their checkpoints stay exactly megatron-core's.
"""

from __future__ import annotations

import math
import zlib

import torch
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

from moetrain.kernels import get_kernels


def _factor(*shape: int) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(*shape, dtype=torch.float32))


def lora_a_values(shape: tuple[int, int], key: str) -> torch.Tensor:
    """The initial A of one adapter (one projection of one layer, or of one expert), the same at
    every layout: PEFT's default (kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), drawn
    from a generator seeded by ``key`` (seed, global layer, module, piece, global expert) for the
    whole [r, in] tensor; a TP rank then keeps its slice. B starts at zero, so training starts at
    the base model."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).float()


class ColumnParallelLora(torch.nn.Module):
    """Adapters of a column-parallel linear, one per projection in ``pieces`` (name -> local out width).

    ``combine`` turns {piece: [s, b, width]} into the fused local layout [s, b, out / tp]."""

    def __init__(self, in_features: int, pieces: dict[str, int], r: int, alpha: float, dropout: float,
                 sequence_parallel: bool, tp_group, combine) -> None:
        super().__init__()
        self.scale = alpha / r
        self.sequence_parallel, self.tp_group, self.combine = sequence_parallel, tp_group, combine
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.lora_A = torch.nn.ParameterDict({name: _factor(r, in_features) for name in pieces})
        self.lora_B = torch.nn.ParameterDict({name: _factor(width, r) for name, width in pieces.items()})
        for name in pieces:
            self.lora_A[name].sequence_parallel = sequence_parallel  # replicated, partial grads under SP
            self.lora_B[name].tensor_model_parallel = True  # column-parallel, like the base weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:  # [s/tp, b, in] -> [s, b, in], as the base linear gathers it
            x = gather_from_sequence_parallel_region(x, group=self.tp_group)
        x = self.dropout(x).float()
        outs = {}
        for name, a in self.lora_A.items():
            h = x @ a.t()  # [s, b, r]
            if not self.sequence_parallel:
                h = copy_to_tensor_model_parallel_region(h, group=self.tp_group)
            outs[name] = (h @ self.lora_B[name].t()) * self.scale  # [s, b, width / tp]
        return self.combine(outs)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        """B split along its rows over TP (as the base weight), A replicated."""
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state, prefix, {f"lora_B.{n}": 0 for n in self.lora_B},
                                                   sharded_offsets)


class RowParallelLora(torch.nn.Module):
    """The adapter of a row-parallel linear: input [s, b, in / tp] -> [s(/tp), b, out]."""

    def __init__(self, in_features_local: int, in_features: int, out_features: int, r: int, alpha: float,
                 dropout: float, sequence_parallel: bool, tp_group) -> None:
        super().__init__()
        self.scale = alpha / r
        self.sequence_parallel, self.tp_group = sequence_parallel, tp_group
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.lora_A = _factor(r, in_features_local)
        self.lora_B = _factor(out_features, r)
        self.lora_A.tensor_model_parallel = True  # row-parallel, like the base weight
        # B is replicated and complete on every rank: each computes B h for the whole sequence
        # (h is all-reduced) and the sequence split's backward all-gathers the output gradient.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x).float() @ self.lora_A.t()  # [s, b, r], partial over TP
        h = reduce_from_tensor_model_parallel_region(h, group=self.tp_group)
        out = (h @ self.lora_B.t()) * self.scale  # [s, b, out]
        if self.sequence_parallel:
            out = scatter_to_sequence_parallel_region(out, group=self.tp_group)  # [s/tp, b, out]
        return out

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        """A split along its columns over TP (as the base weight), B replicated."""
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state, prefix, {"lora_A": 1}, sharded_offsets)


class ExpertsLora(torch.nn.Module):
    """Per-expert adapters of GroupedExperts: fc1 as gate and up adapters, fc2 as one.
    Shapes per EP rank: A [local experts, r, in], B [local experts, out, r]."""

    def __init__(self, num_local_experts: int, hidden: int, ffn: int, targets: set[str], r: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        self.scale = alpha / r
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        e = num_local_experts
        shapes = {}
        if "linear_fc1" in targets:
            shapes |= {"gate": (hidden, ffn), "up": (hidden, ffn)}
        if "linear_fc2" in targets:
            shapes["down"] = (ffn, hidden)
        self.lora_A = torch.nn.ParameterDict({n: _factor(e, r, i) for n, (i, _) in shapes.items()})
        self.lora_B = torch.nn.ParameterDict({n: _factor(e, o, r) for n, (_, o) in shapes.items()})
        for param in self.parameters():
            param.allreduce = False  # expert params: reduced over the expert-data-parallel group

    def _delta(self, name: str, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        gemm = get_kernels().grouped_gemm
        h = gemm(x, self.lora_A[name].transpose(1, 2), counts)  # [tokens, r]
        return gemm(h, self.lora_B[name].transpose(1, 2), counts) * self.scale  # [tokens, out]

    def fc1(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
        """[tokens, hidden] -> the fc1 delta [tokens, 2 * ffn] laid out [gate; up], or None."""
        if "gate" not in self.lora_A:
            return None
        x = self.dropout(x).float()
        return torch.cat([self._delta("gate", x, counts), self._delta("up", x, counts)], dim=-1)

    def fc2(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor | None:
        if "down" not in self.lora_A:
            return None
        return self._delta("down", self.dropout(x).float(), counts)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        """Global [layers..., experts, ...]: this EP rank holds its experts' slices; replicas differ by
        their expert-data-parallel rank (as GroupedExperts' weights)."""
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        ep = parallel_state.get_expert_model_parallel_world_size()
        replica_id = (0, 0, parallel_state.get_expert_data_parallel_rank())
        prepend = len(sharded_offsets)
        out = {}
        for name, param in self.state_dict(prefix="", keep_vars=True).items():
            out[f"{prefix}{name}"] = ShardedTensor.from_rank_offsets(
                f"{prefix}{name}", param, *sharded_offsets, (prepend, ep_rank, ep), replica_id=replica_id,
                prepend_axis_num=prepend)
        return out


def add_adapter_output(adapter: torch.nn.Module):
    """A forward hook for a megatron-core linear (which returns (output, bias)): adds the adapter's
    output for the same input, cast to the base output's dtype."""

    def hook(module, args, output):
        out, bias = output
        return out + adapter(args[0]).to(out.dtype), bias

    return hook
