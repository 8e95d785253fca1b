"""The generation loop: left-padded prefill, then one KV-cached decode step per new token.

Every rank of the job runs the same loop on the same batch of prompts:

  prefill   tokens [b, L] (each prompt left-padded to the longest, L), positions [b, L] counted from
            each prompt's first real token, mask [b, 1, L, L]: causal, padding keys hidden.
  decode    tokens [b, 1] (the last chosen token), position = that row's length so far, mask
            [b, 1, 1, L + t]: every real key of the row so far. The KV cache (kv_cache.py) holds
            the keys and values of all earlier positions on the rank that owns the layer.

Under pipeline parallelism each forward goes through megatron-core's forward-only schedule, which
passes the activations stage to stage. The last stage gathers its vocabulary shards over TP, keeps
the real vocabulary, and one rank (last stage, TP rank 0, data-parallel rank 0) chooses the next
tokens; one all-reduce over the world gives them to every rank, so all ranks (EP's MoE
all-to-alls included) run the same number of steps and stop together.

Padding never reaches a real token: padding keys are masked for every query, padding slots get
position 0, and the MoE layers drop no tokens at inference (no capacity factor), so a prompt's
output does not depend on the other prompts of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from moetrain.inference.kv_cache import KVCache
from moetrain.inference.sampling import SamplingParams, next_tokens
from moetrain.inference.stopping import StopRule


@dataclass
class Generation:
    """One prompt's result. ``output_ids`` excludes a stop token; ``finish_reason`` is ``"stop"``
    (see stopping.py) or ``"length"`` (--max-new-tokens or the model's positions)."""

    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    step_logits: list[torch.Tensor] | None = None  # [V] per step, on the sampling rank, if asked for


@dataclass
class StepTimes:
    """Wall time of the prefill (time to first token) and of each decode step, in seconds."""

    prefill: float = 0.0
    decode: list[float] = field(default_factory=list)


def _last_position_only(module, args, kwargs):
    """Forward pre-hook of the output layer: hidden states [s, b, h] -> [1, b, h] (the last position)."""
    return (args[0][-1:], *args[1:]), kwargs


class Generator:
    """Generates from this rank's model chunk (already loaded) under the current process groups.

    ``vocab_size`` is the tokenizer's real vocabulary: logits of the padded rows that TP sharding
    adds are never sampled. ``max_positions`` is the model's position limit (its seq_length).
    """

    def __init__(self, model, vocab_size: int, max_positions: int, pad_id: int = 0,
                 synchronize: Callable[[], None] | None = None) -> None:
        from megatron.core import parallel_state as ps

        self.model = model
        self.vocab_size = vocab_size
        self.max_positions = max_positions
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.is_last_stage = ps.is_pipeline_last_stage()
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.pp_size = ps.get_pipeline_model_parallel_world_size()
        # One rank samples; the rest receive its tokens (data-parallel replicas, EP ranks included).
        self.is_sampler = (self.is_last_stage and ps.get_tensor_model_parallel_rank() == 0
                           and ps.get_data_parallel_rank() == 0)
        self._synchronize = synchronize or (lambda: None)
        self.times = StepTimes()
        if self.is_last_stage:
            # Only the last position's logits are needed: the output layer (the largest GEMM of a
            # prefill with a big vocabulary) sees that position only.
            from megatron.core.utils import unwrap_model

            unwrap_model(model).output_layer.register_forward_pre_hook(_last_position_only, with_kwargs=True)

    # ------------------------------------------------------------------ one forward
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor | None:
        """Logits of each row's last position, ``[b, vocab_size]`` fp32, on last-stage ranks (else None).

        tokens, positions: [b, s]; mask: [b, 1, s, keys] bool, True where attention is not allowed
        (None: causal over all keys, the cache's included).
        """
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from moetrain.models.common.rotary_positions import rotary_positions

        b, s = tokens.shape
        rotary_positions(self.model).positions = positions
        try:
            if self.pp_size == 1:  # one stage: no activations to pass, the schedule would only add overhead
                local = self.model(tokens, positions, mask)[:, -1, :].float()
            else:
                def step(data_iterator, model_chunk):
                    def last_position(out):  # [b, s, vocab / tp] -> [b, vocab / tp]
                        return torch.zeros((), device=out.device), {"logits": out[:, -1, :].float()}

                    return model_chunk(tokens, positions, mask), last_position

                out = get_forward_backward_func()(
                    forward_step_func=step, data_iterator=iter([None]), model=[self.model], num_microbatches=1,
                    seq_length=s, micro_batch_size=b, forward_only=True)
                local = out[0]["logits"] if self.is_last_stage else None
        finally:
            rotary_positions(self.model).positions = None
        if not self.is_last_stage:
            return None
        if self.tp_size > 1:
            parts = [torch.empty_like(local) for _ in range(self.tp_size)]
            dist.all_gather(parts, local.contiguous(), group=self.tp_group)
            local = torch.cat(parts, dim=-1)
        return local[:, : self.vocab_size]

    @staticmethod
    def _padding_mask(query: torch.Tensor, real_key: torch.Tensor) -> torch.Tensor:
        """[b, 1, s, keys] True where not allowed, for query slots ``query`` ([s]) over every key
        slot up to the last query: causal, and never a padding key."""
        keys = int(query[-1]) + 1
        slots = torch.arange(keys, device=query.device)
        allowed = (slots[None, :] <= query[:, None])[None] & real_key[:, None, :keys]  # [b, s, keys]
        # A padding query attends to itself only: keeps its softmax finite, and no real query reads it.
        allowed |= (slots[None, :] == query[:, None])[None]
        return ~allowed[:, None]

    def _share(self, chosen: torch.Tensor | None, b: int) -> torch.Tensor:
        """The sampler's [b] token ids on every rank (one all-reduce over the world)."""
        if dist.get_world_size() == 1:
            return chosen
        shared = torch.zeros(b, dtype=torch.long, device=self.device)
        if self.is_sampler:
            shared.copy_(chosen)
        dist.all_reduce(shared)
        return shared

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingParams,
                 stop: StopRule | None = None, seed: int = 1234,
                 on_tokens: Callable[[int, list[Generation]], None] | None = None,
                 keep_logits: bool = False) -> list[Generation]:
        """Generate for a batch of prompts (token ids). ``on_tokens(step, results)`` runs on every
        rank after each step (streaming). ``keep_logits`` keeps each step's logits on the sampler."""
        import time

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        lengths = torch.tensor([len(p) for p in prompts])
        if int(lengths.max()) >= self.max_positions:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens leaves no room in the model's "
                             f"{self.max_positions} positions")
        b, longest = len(prompts), int(lengths.max())
        # Each row may grow to the model's position limit at most.
        budget = min(max_new_tokens, self.max_positions - int(lengths.min()))
        results = [Generation(list(map(int, p)), step_logits=[] if keep_logits and self.is_sampler else None)
                   for p in prompts]
        generator = torch.Generator(device="cpu").manual_seed(seed) if self.is_sampler else None

        pad = (longest - lengths).to(self.device)  # left padding per row
        tokens = torch.full((b, longest), self.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        tokens = tokens.to(self.device)
        slots = torch.arange(longest + budget, device=self.device)
        real_key = slots[None, :] >= pad[:, None]  # [b, keys]: not a padding slot
        slot_position = (slots[None, :] - pad[:, None]).clamp(min=0)  # [b, keys]
        finished = torch.zeros(b, dtype=torch.bool)
        padded = bool((lengths != longest).any())
        cache = KVCache.attach(self.model, max_len=longest + budget)
        try:
            start, s = 0, longest
            for step in range(budget):
                self._synchronize()
                t0 = time.perf_counter()
                cache.start = start
                # Without padding the mask is plain causal: the kernels' causal path (bottom-right
                # aligned over the cache), which fused kernels run faster than an explicit mask.
                mask = self._padding_mask(slots[start:start + s], real_key) if padded else None
                logits = self.forward(tokens, slot_position[:, start:start + s], mask)
                chosen = None
                if self.is_sampler:
                    chosen = next_tokens(logits, sampling, generator).to(self.device)
                    if keep_logits:
                        for r, row in zip(results, logits):
                            r.step_logits.append(row.detach().cpu())
                chosen = self._share(chosen, b).cpu()
                self._synchronize()
                elapsed = time.perf_counter() - t0
                if step == 0:
                    self.times.prefill += elapsed
                else:
                    self.times.decode.append(elapsed)
                for i, r in enumerate(results):
                    if finished[i]:
                        continue
                    r.output_ids.append(int(chosen[i]))
                    drop = stop(r.output_ids) if stop is not None else None
                    if drop is not None:
                        del r.output_ids[len(r.output_ids) - drop:]
                        r.finish_reason, finished[i] = "stop", True
                    elif len(r.prompt_ids) + len(r.output_ids) >= self.max_positions:
                        finished[i] = True  # the model's positions are used up ("length")
                if on_tokens is not None:
                    on_tokens(step, results)
                if bool(finished.all()):
                    break
                start, s = start + s, 1
                tokens = chosen.masked_fill(finished, self.pad_id).to(self.device)[:, None]
        finally:
            cache.detach()
        return results

    @torch.no_grad()
    def full_logits(self, ids: Sequence[int]) -> torch.Tensor | None:
        """Logits of the last position of one sequence, without a cache (a full recompute), on
        last-stage ranks: the reference the KV-cached steps are tested against."""
        s = len(ids)
        tokens = torch.as_tensor([list(ids)], dtype=torch.long, device=self.device)
        positions = torch.arange(s, device=self.device)[None]
        mask = ~torch.ones(s, s, dtype=torch.bool, device=self.device).tril()[None, None]
        return self.forward(tokens, positions, mask)
