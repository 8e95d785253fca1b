"""Benchmark report from a synthetic run: JSON, Markdown and PNG, warm-up exclusion, references, CLI."""

import importlib.util
import json
from pathlib import Path

import pytest

from moetrain.models.registry import get_flavor
from moetrain.training.flops import flops_per_iteration
from moetrain.training.report import load_run, parse_reference, summarize, write_report

STEP = 39.8  # the Grok-1 40B NPU reference step time


def _write_run(log_dir: Path, iterations: int = 6) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg = get_flavor("grok1-40b")
    info = {"model": "grok1-40b", "model_config": cfg.to_dict(), "device": "npu", "device_name": "Ascend910B2",
            "world_size": 16, "tp": 4, "pp": 2, "ep": 2, "dp": 2, "global_batch_size": 128,
            "micro_batch_size": 1, "seq_length": 8192, "dtype": "bf16"}
    (log_dir / "run_info.json").write_text(json.dumps(info))
    with open(log_dir / "metrics.jsonl", "w") as f:
        for it in range(1, iterations + 1):
            step = 90.0 if it <= 2 else STEP  # two slow warm-up iterations
            f.write(json.dumps({
                "iteration": it, "lm_loss": 11.0 - 0.1 * it, "aux_loss": 0.01, "lr": 1e-5, "grad_norm": 1.0,
                "skipped_iters": 0, "nan_iters": 0, "step_time_s": step,
                "tokens_per_sec_per_device": 128 * 8192 / (step * 16), "tflops_per_device": None, "mfu": None,
                "mem_peak_gb": 50.0 + it,
            }) + "\n")


def test_summary_excludes_warmup(tmp_path):
    _write_run(tmp_path)
    info, records = load_run(tmp_path)
    s = summarize(info, records, warmup=2)
    assert s.measured_iterations == 4 and s.step_seconds == pytest.approx(STEP)
    assert s.tokens_per_sec_per_device == pytest.approx(1646.6, abs=0.05)
    flops = flops_per_iteration(get_flavor("grok1-40b"), 128, 8192)
    assert s.tflops_per_device == pytest.approx(flops / STEP / 16 / 1e12)
    assert s.mfu == pytest.approx(s.tflops_per_device / 376)  # Ascend 910B2 peak
    assert s.peak_mem_gb == 56.0
    assert summarize(info, records, warmup=0).step_seconds > STEP
    with pytest.raises(ValueError, match="warmup"):
        summarize(info, records, warmup=6)


def test_report_files(tmp_path):
    _write_run(tmp_path / "log")
    ref = parse_reference("NPU:1646.6,GPU:2057")
    paths = write_report(tmp_path / "log", tmp_path / "out", warmup=2, reference=ref)
    data = json.loads(paths["json"].read_text())
    assert data["tokens_per_sec_per_device"] == pytest.approx(1646.6, abs=0.05)
    assert data["layout"] == "4/2/2" and data["ratios"]["NPU"] == pytest.approx(1.0, abs=1e-4)
    assert data["ratios"]["GPU"] == pytest.approx(1646.63 / 2057, abs=1e-3)
    md = paths["md"].read_text()
    assert "| Device | Model | Layout (TP/PP/EP) | GBS | Seq | tokens/s/p | s/step | TFLOPS/device | MFU |" in md
    assert "| 16 x Ascend910B2 | grok1-40b | 4/2/2 | 128 | 8192 | 1646.6 | 39.80 |" in md
    assert "| GPU | 2057 | 0.80 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainable_parameters_reported(tmp_path):
    # the trainer records the whole model's parameters and the trainable ones (a LoRA run: its adapters)
    _write_run(tmp_path / "log")
    info_path = tmp_path / "log" / "run_info.json"
    info = json.loads(info_path.read_text())
    assert summarize(info, load_run(tmp_path / "log")[1]).trainable_parameters is None  # older logs
    info.update(parameters=39_960_000_000, trainable_parameters=99_900_000)
    info_path.write_text(json.dumps(info))
    paths = write_report(tmp_path / "log", tmp_path / "out", warmup=2)
    data = json.loads(paths["json"].read_text())
    assert (data["parameters"], data["trainable_parameters"]) == (39_960_000_000, 99_900_000)
    assert "Trainable parameters: 99,900,000 of 39,960,000,000 (0.25%)." in paths["md"].read_text()


def test_cpu_run_has_no_mfu(tmp_path):
    _write_run(tmp_path)
    info, records = load_run(tmp_path)
    info.update(device="cpu", device_name="cpu")
    assert summarize(info, records, 2).mfu is None
    assert summarize(info, records, 2, peak_tflops=1.0).mfu is not None


def test_parse_reference_errors():
    assert parse_reference(None) == {}
    with pytest.raises(ValueError, match="NAME:tokens_per_sec"):
        parse_reference("NPU=1646")


def test_cli_run_then_report(tmp_path, capsys):
    src = tmp_path / "src"
    _write_run(src)
    spec = importlib.util.spec_from_file_location("bench_cli", Path(__file__).parents[1] / "tools" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    log = tmp_path / "log"
    # the recipe stand-in copies a finished run into the log dir it is given
    rc = cli.main(["--run", f'cp {src}/* "$MOETRAIN_LOG_DIR"/', "--log-dir", str(log), "--warmup", "2",
                   "--out-dir", str(tmp_path / "out"), "--reference", "NPU:1646.6,GPU:2057"])
    assert rc == 0
    assert "1646.6" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.png").exists()
    assert cli.main(["--run", "exit 3", "--log-dir", str(tmp_path / "x")]) == 3
    assert cli.main(["--log-dir", str(tmp_path / "missing")]) == 2
