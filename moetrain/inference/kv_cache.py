"""The KV cache: one buffer pair per attention layer of this rank, holding post-rotary keys and values.

A layer's ``CoreAttention`` receives key / value as ``[s, b, kv_heads / tp, head_dim]``: its local
KV heads only, so the cache is sharded exactly like attention under tensor parallelism, and a
pipeline stage caches only its own layers. Each forward writes its ``s`` new positions at
``start`` and attends over positions ``0 .. start + s``::

    cache = KVCache.attach(model_chunk, batch=b, max_len=prompt + new)   # [max_len, b, g, d] per layer
    cache.start = 0;      forward(prompt)  -> writes 0 .. L-1
    cache.start = L;      forward(token)   -> writes L, attends over 0 .. L
    cache.detach()

Slots past ``start + s`` are never read (the generator's mask also stops each query at itself).
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Keys and values of one attention layer: ``[max_len, b, groups, head_dim]`` each."""

    def __init__(self, owner: KVCache) -> None:
        self.owner = owner
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key`` / ``value`` ([s, b, g, d]) at the owner's ``start``; the cached prefix including them."""
        start, s = self.owner.start, key.shape[0]
        end = start + s
        if end > self.owner.max_len:
            raise ValueError(f"KV cache of {self.owner.max_len} positions cannot hold positions {start}..{end - 1}")
        if self.key is None:  # allocated on first use: dtype, device and local head count from the layer
            shape = (self.owner.max_len, *key.shape[1:])
            self.key = torch.empty(shape, dtype=key.dtype, device=key.device)
            self.value = torch.empty(shape, dtype=value.dtype, device=value.device)
        self.key[start:end] = key
        self.value[start:end] = value
        return self.key[:end], self.value[:end]


class KVCache:
    """The caches of every attention layer in one model chunk, sharing one write position."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.start = 0
        self.layers: list[LayerKVCache] = []
        self._modules: list = []

    @classmethod
    def attach(cls, model, max_len: int) -> KVCache:
        """Give every CoreAttention of ``model`` (DDP / Float16Module-wrapped or bare) a fresh cache."""
        from megatron.core.utils import unwrap_model

        from moetrain.models.common.core_attention import CoreAttention

        cache = cls(max_len)
        for module in unwrap_model(model).modules():
            if isinstance(module, CoreAttention):
                layer = LayerKVCache(cache)
                module.kv_cache = layer
                cache.layers.append(layer)
                cache._modules.append(module)
        if not cache.layers:
            raise ValueError("the model has no moetrain CoreAttention layers to cache")
        return cache

    def detach(self) -> None:
        for module in self._modules:
            module.kv_cache = None
        self._modules.clear()
        self.layers.clear()
