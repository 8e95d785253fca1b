"""torch_npu fused kernels behind the kernel-table signatures (see moetrain.kernels.*_reference).

Wiring is tested on CPU with a stand-in ``torch_npu`` module (tests/test_device_wiring.py).
"""

from __future__ import annotations

import importlib

import torch

from moetrain.kernels.activations import glu_reference
from moetrain.kernels.attention import attention_reference
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


def grouped_gemm_npu(x: torch.Tensor, weights: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """weights: [experts, in, out] (a transposed view of the stacked experts; see grouped_gemm.py)."""
    # group_list holds cumulative token counts on the device (group_list_type 0: no host sync);
    # split_item 2 / group_type 0: one output tensor, groups along the token dim.
    offsets = torch.cumsum(tokens_per_expert, 0)
    return _npu().npu_grouped_matmul([x], [weights], group_list=offsets, split_item=2, group_type=0,
                                     group_list_type=0)[0]


def npu_table() -> KernelTable:
    return KernelTable(
        rms_norm=rms_norm_npu,
        rotary=rotary_npu,
        glu=glu_npu,
        attention=attention_npu,
        # npu_fusion_attention cannot soft-cap: Grok-1 keeps its exact cap through the torch reference.
        softcap_attention=attention_reference,
        grouped_gemm=grouped_gemm_npu,
        variants={"rms_norm": "npu_rms_norm", "rotary": "npu_rotary_mul", "glu": "npu_swiglu",
                  "attention": "npu_fusion_attention", "softcap_attention": "torch-reference",
                  "grouped_gemm": "npu_grouped_matmul"},
    )
