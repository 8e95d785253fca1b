"""MoE experts as stacked weights and one grouped GEMM per projection.

Parameters (per rank, nn.Linear orientation [experts, out, in], one slice per local expert):
    weight1 [local experts, 2 * ffn / etp, hidden]   fc1 of each expert, laid out [gate; up]
    weight2 [local experts, hidden, ffn / etp]       fc2 of each expert
The kernel table's ``grouped_gemm`` receives their transposed views ([experts, in, out], no copy):
``torch._grouped_mm`` on CUDA / CPU (group ends stay on the device: no host sync per layer),
``npu_grouped_matmul`` on Ascend, a loop of GEMMs as the reference.

Why this orientation and not megatron-core GroupedMLP's [hidden, experts * ffn]: each expert's slice
is then exactly the tensor megatron-core's SequentialMLP holds and saves, so

- the dist-checkpoint is unchanged: same keys (``...mlp.experts.experts.linear_fc{1,2}.weight``,
  global [layers, experts, out, in], fc1 saved as gate and up chunks), and the parameter *is* the
  sharded tensor (no transposing factory), which keeps the optimizer state reshardable too
  (GroupedMLP's is not, by its own docstring);
- ``state_dict()`` / ``load_state_dict()`` speak SequentialMLP's per-expert names
  (``local_experts.{j}.linear_fc1.weight``): the HF weight maps, the legacy per-rank files, the
  converter and checkpoints written before this module existed all keep working unchanged.

Expert-TP > 1 shards ``out`` of fc1 (each branch) and ``in`` of fc2; megatron-core's token
dispatcher gathers the tokens of the expert-TP group before and reduce-scatters the partial sums
after, exactly as for SequentialMLP, so the forward has no collective of its own.
"""

from __future__ import annotations

import re

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module

from moetrain.kernels import get_kernels

# Each stacked parameter and the name of its per-expert slice in SequentialMLP's state dict
# (``local_experts.{j}.<linear>.weight``, relative to this module).
_STACKED = {"weight1": "linear_fc1", "weight2": "linear_fc2"}
_PER_EXPERT = re.compile(r"^local_experts\.(\d+)\.(linear_fc[12])\.weight$")
_PARAM_OF = {fc: param for param, fc in _STACKED.items()}


class GroupedExperts(MegatronModule):
    """Drop-in for megatron-core's SequentialMLP in an MoELayer spec (same constructor)."""

    def __init__(self, num_local_experts: int, config, submodules, pg_collection=None) -> None:
        super().__init__(config=config)
        if config.fp8 or config.fp4:
            raise ValueError("fp8 / fp4 experts are not supported by moetrain's GroupedExperts")
        if config.add_bias_linear:
            raise ValueError("expert biases are not supported (use --disable-bias-linear)")
        self.num_local_experts = num_local_experts
        self.ep_group = pg_collection.ep
        self.tp_group = pg_collection.expt_tp
        self.dp_group = pg_collection.expt_dp
        etp = self.tp_group.size()
        ffn = config.moe_ffn_hidden_size
        if ffn % etp:
            raise ValueError(f"moe_ffn_hidden_size {ffn} is not divisible by expert-TP {etp}")
        self.local_ffn = ffn // etp
        self.activation_func = build_module(submodules.activation_func, config=config)  # [.., 2f] -> [.., f]
        h, e = config.hidden_size, num_local_experts
        self.weight1 = torch.nn.Parameter(torch.empty(e, 2 * self.local_ffn, h, dtype=config.params_dtype))
        self.weight2 = torch.nn.Parameter(torch.empty(e, h, self.local_ffn, dtype=config.params_dtype))
        if config.perform_initialization:
            # The expert RNG stream (different per EP rank), as megatron-core's expert linears use.
            with get_cuda_rng_tracker().fork(get_expert_parallel_rng_tracker_name()):
                for j in range(e):
                    config.init_method(self.weight1.data[j])
                    config.output_layer_init_method(self.weight2.data[j])
        self.lora = None  # an ExpertsLora (moetrain.finetune.lora) adds per-expert adapter outputs

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        """permuted_local_hidden_states: [tokens, hidden], grouped by local expert in expert order;
        tokens_per_expert: [local experts]; permuted_probs: [tokens] routing weights."""
        x = permuted_local_hidden_states
        if self.config.moe_apply_probs_on_input:  # top-1 routers may scale the input instead
            x = (permuted_probs.unsqueeze(-1) * x).to(x.dtype)
            permuted_probs = torch.ones_like(permuted_probs)
        counts = tokens_per_expert.to(device=x.device)
        gemm = get_kernels().grouped_gemm
        gate_up = gemm(x, self.weight1.transpose(1, 2), counts)  # [tokens, 2 * ffn/etp] = [gate; up]
        if self.lora is not None and (delta := self.lora.fc1(x, counts)) is not None:
            gate_up = gate_up + delta.to(gate_up.dtype)
        hidden = self.activation_func(gate_up)  # [tokens, ffn/etp]
        # Routing weights scale the activation, as megatron-core's MLP does with per_token_scale.
        hidden = (hidden * permuted_probs.unsqueeze(-1)).to(hidden.dtype)
        out = gemm(hidden, self.weight2.transpose(1, 2), counts)  # [tokens, hidden] partial over etp
        if self.lora is not None and (delta := self.lora.fc2(hidden, counts)) is not None:
            out = out + delta.to(out.dtype)
        return out, None

    # ------------------------------------------------------------------ state dict (SequentialMLP names)
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, fc in _STACKED.items():
            tensor = getattr(self, name) if keep_vars else getattr(self, name).detach()
            for j in range(self.num_local_experts):
                destination[f"{prefix}local_experts.{j}.{fc}.weight"] = tensor[j]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        del local_metadata, strict
        seen = {name: set() for name in _STACKED}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            m = _PER_EXPERT.match(rest)
            if rest in seen:  # a stacked tensor (another GroupedExperts' state dict): take it whole
                self._copy(getattr(self, rest), state_dict[key], key, error_msgs)
                seen[rest].update(range(self.num_local_experts))
            elif m and int(m.group(1)) < self.num_local_experts:
                j, name = int(m.group(1)), _PARAM_OF[m.group(2)]
                self._copy(getattr(self, name)[j], state_dict[key], key, error_msgs)
                seen[name].add(j)
            elif not rest.endswith("_extra_state") and rest.split(".", 1)[0] not in self._modules:
                unexpected_keys.append(key)  # (a child module's keys are the child's to load)
        for name, fc in _STACKED.items():
            missing_keys.extend(f"{prefix}local_experts.{j}.{fc}.weight"
                                for j in range(self.num_local_experts) if j not in seen[name])

    @staticmethod
    def _copy(dest: torch.Tensor, src: torch.Tensor, key: str, error_msgs: list) -> None:
        if dest.shape != src.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(src.shape)}, "
                              f"the model has {tuple(dest.shape)}")
            return
        with torch.no_grad():
            dest.copy_(src)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None) -> dict:
        """The dist-checkpoint tensors of SequentialMLP: key ``{prefix}experts.linear_fc{1,2}.weight``,
        global [layers..., experts, out, in]; this rank holds experts [ep_rank * E_local, +E_local) and
        the expert-TP slice; replicas differ by their expert-data-parallel rank."""
        if (metadata or {}).get("singleton_local_shards", False):
            raise ValueError("GroupedExperts saves experts stacked; singleton_local_shards is not supported")
        ep_rank, ep = self.ep_group.rank(), self.ep_group.size()
        tp_rank, etp = self.tp_group.rank(), self.tp_group.size()
        replica_id = (0, 0, self.dp_group.rank())
        prepend = len(sharded_offsets)
        expert_axis = (prepend, ep_rank, ep)  # data dim 0 of [E_local, out, in]
        fc1_key, fc2_key = f"{prefix}experts.linear_fc1.weight", f"{prefix}experts.linear_fc2.weight"

        def build_fc1(key, t, replica, flattened_range):
            # [gate_r; up_r] on this rank: saved as two chunks of the global [gate; up] (out axis).
            if flattened_range is not None:
                raise ValueError("flattened (fully sharded) expert weights are not supported")
            gate, up = (c.contiguous() for c in torch.chunk(t, 2, dim=1))  # DCP writes whole storages
            return [ShardedTensor.from_rank_offsets(key, part, *sharded_offsets, expert_axis,
                                                    (prepend + 1, offset, 2 * etp), replica_id=replica,
                                                    prepend_axis_num=prepend)
                    for part, offset in ((gate, tp_rank), (up, etp + tp_rank))]

        def merge_fc1(parts):
            return torch.cat(parts, dim=1)

        fc1 = ShardedTensorFactory(fc1_key, self.weight1, build_fc1, merge_fc1, replica_id)
        fc2 = ShardedTensor.from_rank_offsets(fc2_key, self.weight2, *sharded_offsets, expert_axis,
                                              (prepend + 2, tp_rank, etp), replica_id=replica_id,
                                              prepend_axis_num=prepend)
        return {f"{prefix}weight1": fc1, f"{prefix}weight2": fc2}


def per_expert_items(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """A parameter (or its gradient) under its checkpoint name(s): ``...experts.weight1`` becomes one
    ``...experts.local_experts.{j}.linear_fc1.weight`` slice per local expert; anything else is kept.
    For code that compares tensors by checkpoint name (weight maps, tests)."""
    for param, fc in _STACKED.items():
        if name.endswith(f"experts.{param}"):
            stem = name[: -len(param)]
            return [(f"{stem}local_experts.{j}.{fc}.weight", tensor[j]) for j in range(tensor.shape[0])]
    return [(name, tensor)]
