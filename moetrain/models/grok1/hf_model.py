"""Grok-1 as a Hugging Face PreTrainedModel, state-dict compatible with hpcai-tech/grok-1.

Numerics (see /work/shared/DESIGN.md, "Grok-1, exactly"):
  h = embed(ids) * embedding_multiplier_scale
  per layer:  h = h + post_attn_norm(attn(pre_attn_norm(h)))
              h = h + post_moe_norm(moe(pre_moe_norm(h)))
  logits = lm_head(norm(h)) * output_multiplier_scale
Attention scores are ``max_attn_value * tanh(q.k * attn_output_multiplier / max_attn_value)``, then
causal mask, softmax in fp32. The router is a softmax over all experts in fp32, then top-k with
no renormalisation. An expert is ``linear_1(gelu(linear(x)) * linear_v(x))``.

This is a training/parity reference: no KV cache. ``generate`` works with ``use_cache=False`` (each
step recomputes the prefix), which is what moetrain's generation is tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from moetrain.models.grok1.hf_config import Grok1Config

try:  # transformers 5: init helpers that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - transformers 4
    _init = nn.init


class Grok1RMSNorm(nn.Module):
    """RMSNorm computed in fp32; weight named ``scale`` and applied as ``scale * x_normed``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(hidden_size))  # the HF port starts at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.scale.float() * x).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos/sin [b, 1, s, head_dim] for the rotate-half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [b, s, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, s, head_dim]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Grok1Attention(nn.Module):
    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        h, hd = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd
        self.multiplier = config.attn_output_multiplier
        self.cap = config.max_attn_value
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(h, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, h, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # [b, nh, s, hd]
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [b, ng, s, hd]
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = _rope_cos_sin(position_ids, self.head_dim, self.rope_theta, q.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.num_heads // self.num_kv_heads  # query heads per KV group (GQA)
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)).float() * self.multiplier  # [b, nh, s, s] fp32
        scores = self.cap * torch.tanh(scores / self.cap)  # soft-cap before the mask
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out)


class Grok1Expert(nn.Module):
    """``linear_1(gelu(linear(x)) * linear_v(x))``; gelu exact (erf) or tanh per config."""

    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        h, f = config.hidden_size, config.intermediate_size
        self.linear = nn.Linear(h, f, bias=False)  # gate branch: the activation applies here
        self.linear_v = nn.Linear(h, f, bias=False)  # linear ("up") branch
        self.linear_1 = nn.Linear(f, h, bias=False)  # down projection
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_1(F.gelu(self.linear(x), approximate=self.approximate) * self.linear_v(x))


class Grok1MoeBlock(nn.Module):
    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(Grok1Expert(config) for _ in range(config.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h = x.shape
        tokens = x.reshape(-1, h)  # [T, h]
        logits = self.gate(tokens)  # [T, E]
        probs = F.softmax(logits, dim=-1, dtype=torch.float)  # over all experts, fp32
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)  # [T, k]; no renormalisation
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(chosen == e)  # tokens routed to e, and which of their k slots
            if tok.numel():
                y = expert(tokens[tok]) * weights[tok, slot, None]
                out.index_add_(0, tok, y.to(out.dtype))
        return out.view(b, s, h), logits


class Grok1DecoderLayer(nn.Module):
    def __init__(self, config: Grok1Config) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.attn = Grok1Attention(config)
        self.moe_block = Grok1MoeBlock(config)
        self.pre_attn_norm = Grok1RMSNorm(h, eps)
        self.post_attn_norm = Grok1RMSNorm(h, eps)
        self.pre_moe_norm = Grok1RMSNorm(h, eps)
        self.post_moe_norm = Grok1RMSNorm(h, eps)

    def forward(self, x, mask, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.post_attn_norm(self.attn(self.pre_attn_norm(x), mask, position_ids))
        y, router_logits = self.moe_block(self.pre_moe_norm(x))
        return x + self.post_moe_norm(y), router_logits


class Grok1PreTrainedModel(PreTrainedModel):
    config: Grok1Config
    config_class = Grok1Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Grok1DecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Like the HF port: everything starts at zero, so the model outputs exactly 0 until weights
        # are loaded (tests fill random weights: tests/hf_reference.py init_grok1_weights).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.zeros_(module.weight)
        elif isinstance(module, Grok1RMSNorm):
            _init.zeros_(module.scale)


class Grok1Model(Grok1PreTrainedModel):
    def __init__(self, config: Grok1Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(Grok1DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = Grok1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Grok1Model: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.config.embedding_multiplier_scale
        b, s, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if position_ids is None:
            position_ids = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
        # Boolean "may attend" mask [b, 1, s, s]: causal, and (optionally) not a padding key.
        mask = torch.ones(s, s, dtype=torch.bool, device=device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        h = inputs_embeds
        router_logits = []
        for layer in self.layers:
            h, logits = layer(h, mask, position_ids)
            router_logits.append(logits)
        return MoeModelOutputWithPast(last_hidden_state=self.norm(h), router_logits=tuple(router_logits))


def router_load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-style aux loss E * sum_e(fraction of top-k slots routed to e * mean prob of e)."""
    logits = torch.cat(router_logits, dim=0)  # [layers*T, E]
    probs = F.softmax(logits, dim=-1, dtype=torch.float)
    chosen = torch.topk(probs, top_k, dim=-1).indices
    routed = F.one_hot(chosen, num_experts).float().sum(1)  # [N, E]
    return num_experts * torch.sum(routed.mean(0) / top_k * probs.mean(0))


class Grok1ModelForCausalLM(Grok1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: Grok1Config) -> None:
        super().__init__(config)
        self.model = Grok1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        out = self.model(input_ids, attention_mask, position_ids, inputs_embeds)
        logits = self.lm_head(out.last_hidden_state) * self.config.output_multiplier_scale  # [b, s, V]
        loss = aux_loss = None
        if labels is not None:
            # Token t predicts token t+1; -100 labels are ignored.
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        if output_router_logits:
            aux_loss = router_load_balancing_loss(out.router_logits, self.config.num_experts,
                                                  self.config.num_experts_per_tok)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss
        return MoeCausalLMOutputWithPast(
            loss=loss, aux_loss=aux_loss, logits=logits,
            router_logits=out.router_logits if output_router_logits else None,
        )


def register_with_auto_classes() -> None:
    """Make AutoConfig / AutoModel / AutoModelForCausalLM resolve model_type "grok-1" (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for register in (lambda: AutoConfig.register("grok-1", Grok1Config),
                     lambda: AutoModel.register(Grok1Config, Grok1Model),
                     lambda: AutoModelForCausalLM.register(Grok1Config, Grok1ModelForCausalLM)):
        try:
            register()
        except ValueError:  # already registered
            pass


register_with_auto_classes()

__all__ = [
    "Grok1Config", "Grok1Model", "Grok1ModelForCausalLM", "Grok1RMSNorm",
    "register_with_auto_classes", "router_load_balancing_loss",
]
