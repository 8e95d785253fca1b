"""FLOPs per iteration against hand counts, throughput arithmetic and the peak-FLOPS table."""

import pytest

from moetrain.device.peak_flops import ENV_OVERRIDE, peak_flops
from moetrain.models.registry import get_flavor
from moetrain.training.flops import flops_per_iteration, forward_flops_per_token
from moetrain.training.throughput import (
    mfu,
    step_seconds_for_mfu,
    tflops_per_device,
    tokens_per_sec_per_device,
)


def test_llama_tiny_hand_count():
    # llama-tiny: h 64, ffn 128, 4 heads x 16, 2 KV groups, vocab 512, 4 layers; seq 64, causal.
    h, f, q, kv, s, vocab, layers = 64, 128, 4 * 16, 2 * 16, 64, 512, 4
    qkv = 2 * h * (q + 2 * kv)  # 2 * 64 * 128 = 16384
    scores = 2 * s * q * 0.5  # QK^T, half the s x s is masked: 4096
    values = 2 * s * q * 0.5  # scores x V: 4096
    proj = 2 * q * h  # 8192
    mlp = 2 * 3 * h * f  # SwiGLU, three h x f matrices: 49152
    logits = 2 * h * vocab  # 65536
    per_token_fwd = layers * (qkv + scores + values + proj + mlp) + logits
    assert per_token_fwd == 393216
    gbs = 2
    expected = 3 * per_token_fwd * gbs * s  # forward + backward (2x)
    assert flops_per_iteration(get_flavor("llama-tiny"), gbs, s) == expected == 150994944


@pytest.mark.parametrize("name", ["mixtral-tiny", "grok1-tiny"])
def test_moe_tiny_hand_count(name):
    # 4 experts, top-2; router GEMM h x E; experts are gated (3 matrices) for SwiGLU and GeGLU alike.
    h, f, q, kv, s, vocab, layers, experts, topk = 64, 128, 64, 32, 64, 512, 4, 4, 2
    attn = 2 * h * (q + 2 * kv) + 2 * (2 * s * q) * 0.5 + 2 * q * h  # 32768
    router = 2 * h * experts  # 512
    routed = topk * 2 * 3 * h * f  # 98304
    per_token_fwd = layers * (attn + router + routed) + 2 * h * vocab  # tied output still costs a GEMM
    assert per_token_fwd == 591872
    cfg = get_flavor(name)
    assert flops_per_iteration(cfg, 4, s) == 3 * per_token_fwd * 4 * s
    b = forward_flops_per_token(cfg, s)
    assert (b.router, b.mlp, b.logits) == (layers * router, layers * routed, 2 * h * vocab)


def test_non_causal_matches_megatron_closed_form():
    # Megatron's older closed form counts unmasked attention: 12 B s L h^2 (1 + g/a + s/h)(q/h)
    # + gated MLP f/h * 3/2 + logits V / (2 L h) -- a check written independently of ours.
    cfg = get_flavor("llama3-8b")
    b, s, n, h = 8, 8192, cfg.num_layers, cfg.hidden_size
    q_ratio = cfg.num_attention_heads * cfg.head_dim / h
    closed = 12 * b * s * n * h * h * (
        (1 + cfg.num_query_groups / cfg.num_attention_heads + s / h) * q_ratio
        + cfg.ffn_hidden_size / h * 1.5
        + cfg.vocab_size / (2 * n * h)
    )
    assert flops_per_iteration(cfg, b, s, causal=False) == pytest.approx(closed, rel=1e-12)
    assert flops_per_iteration(cfg, b, s, causal=True) < closed


def test_tokens_per_sec_reference_figures():
    # Grok-1 "40B" reference: GBS 128 x seq 8192 on 16 devices at 39.8 s/step.
    assert tokens_per_sec_per_device(128, 8192, 39.8, 16) == pytest.approx(1646.6, abs=0.05)
    assert tokens_per_sec_per_device(128, 8192, 32.0, 16) == pytest.approx(2048.0)
    with pytest.raises(ValueError):
        tokens_per_sec_per_device(128, 8192, 0.0, 16)


def test_tflops_and_mfu():
    flops = flops_per_iteration(get_flavor("grok1-40b"), 128, 8192)
    tf = tflops_per_device(flops, 39.8, 16)
    assert tf == pytest.approx(flops / 39.8 / 16 / 1e12)
    assert mfu(flops, 39.8, 16, 376e12) == pytest.approx(tf / 376)
    assert mfu(flops, 39.8, 16, None) is None
    step = step_seconds_for_mfu(flops, 16, 376e12, 0.4)
    assert mfu(flops, step, 16, 376e12) == pytest.approx(0.4)


def test_peak_flops_lookup(monkeypatch):
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == pytest.approx(756e12)
    assert peak_flops("NVIDIA H200", "torch.bfloat16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-40GB", "fp16") == pytest.approx(312e12)
    assert peak_flops("NVIDIA A100 80GB PCIe", "bf16") == pytest.approx(312e12)
    assert peak_flops("Ascend910B2C", "bf16") == pytest.approx(376e12)
    assert peak_flops("Ascend910B3", "fp16") == pytest.approx(313e12)
    assert peak_flops("910b4", "bf16") == pytest.approx(280e12)
    assert peak_flops("910b1", "bf16") > peak_flops("910b2", "bf16")
    assert peak_flops("cpu", "fp32") is None
    assert peak_flops("Ascend910B2", "fp32") is None  # not published: no made-up MFU
    assert peak_flops("cpu", "fp32", override_tflops=1.5) == 1.5e12
    monkeypatch.setenv(ENV_OVERRIDE, "100")
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 100e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16", override_tflops=50) == 50e12
    with pytest.raises(ValueError, match="dtype"):
        monkeypatch.delenv(ENV_OVERRIDE)
        peak_flops("h100", "int3")
