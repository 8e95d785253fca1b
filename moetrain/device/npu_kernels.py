"""torch_npu fused kernels behind the kernel-table signatures (see moetrain.kernels.*_reference).

Wiring is tested on CPU with a stand-in ``torch_npu`` module (tests/test_device_wiring.py).
"""

from __future__ import annotations

import importlib

import torch

from moetrain.kernels.activations import glu_reference
from moetrain.kernels.table import KernelTable


def _npu():
    return importlib.import_module("torch_npu")


def rms_norm_npu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # npu_rms_norm returns (y, rstd); computing in fp32 keeps Grok-1's numerics.
    return _npu().npu_rms_norm(x.float(), weight.float(), epsilon=eps)[0].to(x.dtype)


def rotary_npu(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    rot_dim = freqs.shape[-1]
    if rot_dim != t.shape[-1]:
        from moetrain.kernels.rotary import rotary_reference

        return rotary_reference(t, freqs)
    return _npu().npu_rotary_mul(t, freqs.cos().to(t.dtype), freqs.sin().to(t.dtype))


def glu_npu(x: torch.Tensor, activation: str, gelu_approximate: str = "none") -> torch.Tensor:
    if activation == "swiglu":
        return _npu().npu_swiglu(x, dim=-1)
    return glu_reference(x, activation, gelu_approximate)


def attention_npu(q, k, v, scale, softcap=None, causal=True, mask=None, dropout_p=0.0):
    """npu_fusion_attention, BNSD layout, GQA native. No soft-capping (the table falls back)."""
    b, heads, sq, _ = q.shape
    sk = k.shape[2]
    if mask is None and causal:  # bottom-right aligned, as the reference (a KV-cached query block)
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(sk - sq + 1)
    out = _npu().npu_fusion_attention(
        q, k, v, heads, input_layout="BNSD", scale=scale, atten_mask=mask,
        keep_prob=1.0 - dropout_p, sparse_mode=0,
    )
    return out[0]


def grouped_gemm_npu(x: torch.Tensor, weights, tokens_per_expert: list[int]) -> torch.Tensor:
    """weights: [experts, in, out] or one [in, out] tensor per expert (see grouped_gemm_reference)."""
    # group_list holds cumulative token counts (group_list_type 0); split_item 2: one output tensor.
    offsets = torch.tensor(tokens_per_expert, device=x.device).cumsum(0)
    weight_list = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    return _npu().npu_grouped_matmul([x], weight_list, group_list=offsets, split_item=2, group_type=0,
                                     group_list_type=0)[0]


def npu_table() -> KernelTable:
    return KernelTable(
        rms_norm=rms_norm_npu,
        rotary=rotary_npu,
        glu=glu_npu,
        attention=attention_npu,
        attention_softcap=False,
        grouped_gemm=grouped_gemm_npu,
        variants={"rms_norm": "npu_rms_norm", "rotary": "npu_rotary_mul", "glu": "npu_swiglu",
                  "attention": "npu_fusion_attention", "grouped_gemm": "npu_grouped_matmul"},
    )
