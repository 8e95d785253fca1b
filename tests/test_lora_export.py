"""LoRA merge and PEFT export (ckpt_converters/convert_ckpt.py --lora-load / --save-lora-to-hf), per family.

A converted tiny base of each family gets adapters with random non-zero factors on every target,
saved as a LoRA run saves them. Three computations of the same adapted model must agree within fp32
rounding (1e-5 of the logits' scale): moetrain with the adapters on the base (generation's
--lora-load path), the merged Hugging Face export (W + alpha/r B A), and the HF base with the PEFT
export loaded by ``PeftModel.from_pretrained``. Mixtral's PEFT adapter uses the per-expert names
(w1 / w3 / w2) that PEFT maps onto transformers 5's fused experts when it loads them.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from convert_fixtures import MODEL_TYPES, read_hf_tensors, write_hf
from convert_fixtures import run as convert
from lora_export_ranks import PREFIXES, adapter_logits

from moetrain.checkpoint_formats.errors import ConversionError
from moetrain.testing.spawn import run_on_ranks

pytestmark = pytest.mark.multirank

FLAVORS = ("llama-tiny", "mixtral-tiny", "grok1-tiny")
TARGETS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
R, ALPHA = 4, 8.0
RTOL = 1e-5  # fp32: three orders of summation of the same products


def _tokens(vocab: int) -> list[int]:
    return torch.randint(1, vocab, (max(PREFIXES),), generator=torch.Generator().manual_seed(3)).tolist()


@pytest.fixture(scope="module")
def family_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_export")
    cases, tokens = [], None
    for flavor in FLAVORS:
        cfg, _ = write_hf(flavor, root / flavor / "hf")
        convert(flavor, "hf", "mg", root / flavor / "hf", root / flavor / "mg")
        targets = TARGETS + (["router"] if flavor == "mixtral-tiny" else [])
        cases.append((flavor, str(root / flavor / "mg"), str(root / flavor / "lora"), targets))
        tokens = _tokens(cfg.vocab_size)  # the tiny flavors share one vocabulary size
    mixtral = cases[1]
    cases[1] = ("mixtral-tiny", mixtral[1], mixtral[2], TARGETS)  # PEFT export: no router
    cases.append(("mixtral-tiny-router", mixtral[1], str(root / "mixtral-tiny" / "lora_router"), mixtral[3]))
    (logits,) = run_on_ranks(1, adapter_logits, (cases, tokens, R, ALPHA), timeout=400)
    yield root, logits, tokens


def _hf_logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens])).logits[0].float()
    return torch.stack([out[n - 1] for n in PREFIXES])


def _load_hf(flavor: str, path):
    if flavor.startswith("grok1"):
        from moetrain.models.grok1.hf_model import Grok1ModelForCausalLM

        return Grok1ModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_adapter_reload_is_exact_and_moves_the_logits(family_runs):
    _, logits, _ = family_runs
    for name, res in logits.items():
        assert torch.equal(res["reloaded"], res["adapted"]), name  # the same weights, the same computation
        assert _close(res["adapted"], res["base"]) > 100 * RTOL, name  # the adapters matter


@pytest.mark.parametrize("flavor", FLAVORS)
def test_moetrain_adapter_merged_hf_and_peft_agree(family_runs, flavor):
    root, logits, tokens = family_runs
    base_mg, lora = root / flavor / "mg", root / flavor / "lora"
    convert(flavor, "mg", "hf", base_mg, root / flavor / "merged", lora_load=lora)
    report = convert(flavor, "mg", "hf", base_mg, root / flavor / "peft", lora_load=lora, save_lora_to_hf=True)
    assert "adapted modules" in report.line()
    peft_dir = root / flavor / "peft"
    assert sorted(p.name for p in peft_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (R, ALPHA, "LORA")

    ours = logits[flavor]["adapted"]
    merged = _hf_logits(_load_hf(flavor, root / flavor / "merged"), tokens)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(_load_hf(flavor, root / flavor / "hf"), peft_dir).eval()
    via_peft = _hf_logits(peft_model, tokens)
    assert _close(merged, ours) < RTOL, (flavor, _close(merged, ours))
    assert _close(via_peft, ours) < RTOL, (flavor, _close(via_peft, ours))
    # The merge touches exactly the adapted weights.
    base_hf, merged_hf = read_hf_tensors(root / flavor / "hf"), read_hf_tensors(root / flavor / "merged")
    assert merged_hf.keys() == base_hf.keys()
    changed = {n for n in base_hf if not torch.equal(base_hf[n], merged_hf[n])}
    assert changed and all(n.endswith("proj.weight") or ".experts." in n or "mlp." in n for n in changed), changed
    assert not any("norm" in n or "embed" in n or "gate.weight" in n for n in changed), changed


def test_router_trained_whole_is_merged_and_not_peft_exported(family_runs):
    root, logits, tokens = family_runs
    base_mg, lora = root / "mixtral-tiny" / "mg", root / "mixtral-tiny" / "lora_router"
    report = convert("mixtral-tiny", "mg", "hf", base_mg, root / "router_merged", lora_load=lora)
    assert "router weights replaced" in report.line(), report.line()
    merged = _hf_logits(_load_hf("mixtral-tiny", root / "router_merged"), tokens)
    assert _close(merged, logits["mixtral-tiny-router"]["adapted"]) < RTOL
    with pytest.raises(ConversionError, match="also trained the router weights"):
        convert("mixtral-tiny", "mg", "hf", base_mg, root / "router_peft", lora_load=lora, save_lora_to_hf=True)
    assert not (root / "router_peft").exists()


def test_merge_into_megatron_reshards(family_runs, tmp_path):
    """mg -> mg with --lora-load: the merged weights at another layout, the same as merged HF."""
    root, _, _ = family_runs
    base_mg, lora = root / "grok1-tiny" / "mg", root / "grok1-tiny" / "lora"
    convert("grok1-tiny", "mg", "mg", base_mg, tmp_path / "mg_merged", lora_load=lora, tp=2, ep=2)
    convert("grok1-tiny", "mg", "hf", tmp_path / "mg_merged", tmp_path / "hf_from_mg")
    convert("grok1-tiny", "mg", "hf", base_mg, tmp_path / "hf_direct", lora_load=lora)
    a, b = read_hf_tensors(tmp_path / "hf_from_mg"), read_hf_tensors(tmp_path / "hf_direct")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# ---------------------------------------------------------------- refused before anything is written
def _edited_adapter(src, dst, **lora):
    shutil.copytree(src, dst)
    meta_path = next(dst.glob("iter_*")) / "moetrain.json"
    meta = json.loads(meta_path.read_text())
    meta["lora"].update(lora)
    meta_path.write_text(json.dumps(meta))
    return dst


def test_adapter_of_another_model_is_refused_by_field(family_runs, tmp_path):
    root, _, _ = family_runs
    with pytest.raises(ConversionError, match="trained on another base model") as e:
        convert("mixtral-tiny", "mg", "hf", root / "mixtral-tiny" / "mg", tmp_path / "out",
                lora_load=root / "llama-tiny" / "lora")
    assert "num_experts" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit,message", [
    ({"lora_r": 8}, r"shape \(4, 4, 64\), expected \(4, 8, 64\) for rank 8"),
    ({"lora_target_modules": ["linear_qkv"]}, "is not an adapter of linear_qkv"),
    ({"lora_target_modules": TARGETS + ["router"]}, "router.weight' is missing"),
])
def test_adapter_that_does_not_match_its_metadata_is_refused_by_tensor(family_runs, tmp_path, edit, message):
    root, _, _ = family_runs
    bad = _edited_adapter(root / "grok1-tiny" / "lora", tmp_path / "bad", **edit)
    with pytest.raises(ConversionError, match=message):
        convert("grok1-tiny", "mg", "hf", root / "grok1-tiny" / "mg", tmp_path / "out", lora_load=bad)
    assert not (tmp_path / "out").exists()


def test_save_lora_to_hf_needs_an_adapter(tmp_path):
    with pytest.raises(ConversionError, match="needs --lora-load"):
        convert("grok1-tiny", "mg", "hf", tmp_path, tmp_path / "out", save_lora_to_hf=True)


def test_generation_refuses_an_adapter_of_another_model(family_runs):
    from moetrain.config import ConfigError
    from moetrain.inference.options import GenerateConfig, prepare

    root, _, _ = family_runs
    cfg = GenerateConfig(load=str(root / "grok1-tiny" / "mg"), lora_load=str(root / "llama-tiny" / "lora"),
                         tokenizer_type="NullTokenizer", prompt="1 2 3")
    with pytest.raises(ConfigError, match="trained on another base model"):
        prepare(cfg, world_size=1)


def test_model_types_cover_the_families():
    assert set(FLAVORS) <= set(MODEL_TYPES)
