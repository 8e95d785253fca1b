"""tools/gpu_check.sh, the prepared GPU check, as far as a CPU machine can check it.

The script parses (``bash -n``); its dry run lists what it would run (tests, recipes, kernel paths,
tiny flavors, per-step time limits) and runs nothing; every file it names exists (the GPU numerics
test is optional: someone else writes it); every MOETRAIN_KERNELS spec parses against the CUDA
backend's variants; the time limits add up to at most 9 minutes; and with no time left every step
is recorded as skipped, the summary is still written, and the exit status says the check failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "gpu_check.sh"
NINE_MINUTES = 540


def _run(*args: str, env: dict | None = None, out: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    proc = _run("--dry-run", out=out)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, out


def _manifest(text: str, kind: str) -> list[list[str]]:
    return [line.split()[1:] for line in text.splitlines() if line.startswith(kind + " ")]


def test_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dry_run_runs_nothing(dry_run):
    text, out = dry_run
    assert "nothing is run" in text
    assert not out.exists(), "a dry run must not create the results folder"
    steps = [line.split(":")[0].removeprefix("step ") for line in text.splitlines() if line.startswith("step ")]
    assert steps[:3] == ["install", "tests", "tiny"] and steps[-2:] == ["reports", "summary"]
    assert sum(s.startswith("bench ") for s in steps) == 6  # two recipes x three kernel paths


def test_files_it_names_exist(dry_run):
    from test_recipes import RECIPES

    text, _ = dry_run
    tests = _manifest(text, "test")
    assert [t[0] for t in tests if t[1:] == ["(optional)"]] == ["tests/test_cuda_kernels.py"]
    missing = [t[0] for t in tests if t[1:] != ["(optional)"] and not (REPO / t[0]).is_file()]
    assert not missing, f"gpu_check.sh runs tests that do not exist: {missing}"
    recipes = [r[0] for r in _manifest(text, "recipe")]
    assert sorted(recipes) == ["examples/bench/pretrain_grok1_moe_1gpu_mock.sh",
                               "examples/bench/pretrain_llama_1b_mock.sh"]
    # ... and tests/test_recipes.py validates them at their world size (1).
    assert {Path(r) for r in recipes} <= set(RECIPES)
    for recipe in recipes:
        assert "--mock-data" in (REPO / recipe).read_text()
    from moetrain.models import list_flavors

    assert {f[0] for f in _manifest(text, "tiny")} <= set(list_flavors())
    for tiny in ("pretrain_grok1_tiny", "pretrain_llama_tiny", "pretrain_mixtral_tiny"):  # the models it runs
        assert (REPO / "examples" / "tiny" / f"{tiny}.sh").is_file()


def test_kernel_specs_parse_for_the_cuda_backend(dry_run):
    from moetrain.device.cuda import CudaBackend
    from moetrain.kernels.table import apply_overrides, reference_table

    text, _ = dry_run
    paths = {p[0]: (p[1] if p[1] != "-" else "") for p in _manifest(text, "kernels")}
    assert set(paths) == {"default", "flex", "prechange"}
    assert paths["default"] == ""
    assert paths["prechange"] == "grouped_gemm=torch-loop,softcap_attention=torch-reference"
    variants = CudaBackend().kernel_variants()
    for name, spec in paths.items():
        table = apply_overrides(reference_table(), spec, variants)
        for item in filter(None, spec.split(",")):
            kernel, _, variant = item.partition("=")
            assert table.variants[kernel] == variant, (name, item)
    # Each path is passed to its benchmark run as MOETRAIN_KERNELS.
    for spec in filter(None, paths.values()):
        assert f"MOETRAIN_KERNELS={spec.replace(',', chr(92) + ',')}" in text or f"MOETRAIN_KERNELS={spec}" in text


def test_time_limits_fit_nine_minutes(dry_run):
    text, _ = dry_run
    budget = next(line for line in text.splitlines() if line.startswith("budget "))
    planned, total = int(budget.split()[1]), int(budget.split()[3])
    assert planned <= total <= NINE_MINUTES, budget
    limits = {line.split(":")[0].removeprefix("step "): int(line.split("limit ")[1].split("s")[0])
              for line in text.splitlines() if line.startswith("step ") and "limit " in line}
    assert limits["install"] <= 60 and limits["tests"] <= 90 and limits["tiny"] <= 60
    assert sum(v for k, v in limits.items() if k.startswith("bench ") or k == "reports") <= 300


def test_bad_argument_is_one_error_naming_it(tmp_path):
    proc = _run("--fast", out=tmp_path / "out")
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
    assert _run("--help").stdout.startswith("tools/gpu_check.sh")


def test_no_time_left_records_every_step_and_fails(tmp_path):
    out = tmp_path / "out"
    proc = _run("--pack", out=out, env={"GPU_CHECK_BUDGET_S": "1", "GPU_CHECK_WORK": str(tmp_path / "work")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = (out / "summary.md").read_text()
    for step in ("install", "tests", "tiny", "bench grok1_moe_1gpu_mock_flex", "bench llama_1b_mock_prechange",
                 "reports"):
        assert f"| {step} | skipped: no time left |" in summary, summary
    assert "| examples/bench/pretrain_grok1_moe_1gpu_mock.sh | prechange |" in summary
    # --pack leaves few files: bench/ is one archive.
    assert not (out / "bench").exists()
    with tarfile.open(out / "bench.tar.gz") as tar:
        assert "bench/runs.tsv" in tar.getnames()
