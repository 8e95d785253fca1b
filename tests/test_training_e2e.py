"""End-to-end pretraining on CPU ranks: loss falls, layout parity, resume, atomic save, reshard-on-load.

Three spawned groups (1, 2 and 8 gloo ranks) each run several short trainings of grok1-tiny
(seq 32, GBS 4) so start-up is paid once per group. Every layout starts from the same weights: a
1-rank initial checkpoint loaded with --finetune. Dropout is 0 (the flavor default here).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from moetrain.testing.spawn import run_on_ranks

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ITERS = 6
# Same global batches in every layout; only the reduction order differs (fp32).
PARITY_RTOL = 2e-4

pytestmark = pytest.mark.multirank


def _preprocess(jsonl: Path, out: Path, max_docs: int) -> tuple[str, str]:
    """A 512-piece SentencePiece model and an indexed dataset from the first ``max_docs`` documents."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from moetrain.data.cli import main as preprocess
        from moetrain.data.demo_corpus import train_sentencepiece
    small = out / "corpus.jsonl"
    with open(jsonl) as src, open(small, "w") as dst:
        for _, line in zip(range(max_docs), src):
            dst.write(line)
    model = train_sentencepiece(small, out, vocab_size=512)
    rc = preprocess(["--input", str(small), "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                     str(model), "--output-prefix", str(out / "data"), "--append-eod", "--no-progress"])
    assert rc == 0
    return str(out / "data_text_document"), str(model)


@functools.lru_cache(maxsize=1)
def demo_data() -> tuple[str, str]:
    from moetrain.data.demo_corpus import build_demo_corpus

    out = Path(tempfile.mkdtemp(prefix="moetrain_train_data_"))
    return _preprocess(build_demo_corpus(out), out, max_docs=400)


def _args(data, tokenizer, tmp: Path, name: str, *extra: str, iters: int = ITERS) -> list[str]:
    return ["--model", "grok1-tiny", "--data-path", data, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(iters), "--lr", "1e-2", "--min-lr", "1e-3",
            "--lr-warmup-iters", "1", "--moe-aux-loss-coeff", "0.01", "--eval-iters", "0", "--split", "98,2,0",
            "--log-dir", str(tmp / f"logs_{name}"), "--no-tensorboard", *extra]


def _copy_checkpoint(src: Path, iteration: int, dst: Path) -> Path:
    """A checkpoint dir holding only ``iteration`` of ``src`` (as if training had stopped there)."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(src / name, dst / name)
    (dst / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return dst


def _losses(summary) -> list[float]:
    return [summary.losses[i] for i in sorted(summary.losses)]


# ---------------------------------------------------------------- rank functions
def _allow_children() -> None:
    """dist_checkpointing's writer starts helper processes; the harness's ranks are daemonic, which
    multiprocessing forbids to have children. torchrun's ranks are not daemonic: only tests need this."""
    import multiprocessing

    multiprocessing.current_process()._config["daemon"] = False


def _nan_checks(data, tokenizer, tmp: Path) -> dict:
    """A NaN loss in iteration 2 is skipped and counted; NaN every step stops after --max-nan-iters."""
    from moetrain.pretrain import run_pretrain
    from moetrain.training import loop, step

    original = step._loss_func
    calls = {"n": 0}

    def nan_in_second_step(loss_mask, output_tensor):
        calls["n"] += 1
        loss, num_tokens, report = original(loss_mask, output_tensor)
        if 5 <= calls["n"] <= 8 or calls.get("always"):  # 4 micro-batches per step
            loss = loss * float("nan")
            report = {"lm loss": report["lm loss"] * float("nan")}
        return loss, num_tokens, report

    step._loss_func = nan_in_second_step
    try:
        summary = run_pretrain(_args(data, tokenizer, tmp, "nan", "--load", str(tmp / "init"), "--finetune",
                                     iters=3))
        calls["always"] = True
        try:
            run_pretrain(_args(data, tokenizer, tmp, "nan_stop", "--max-nan-iters", "2", iters=5))
            stopped = ""
        except loop.TrainingError as e:
            stopped = str(e)
    finally:
        step._loss_func = original
    return {"losses": _losses(summary), "nan_iters": summary.nan_iters, "skipped": summary.skipped_iters,
            "stopped": stopped}


def single_rank_group(rank, world_size, data, tokenizer, tmp, real):
    _allow_children()
    from moetrain.pretrain import run_pretrain
    from moetrain.training import checkpointing

    tmp = Path(tmp)
    out = {}
    run_pretrain(_args(data, tokenizer, tmp, "init", "--save", str(tmp / "init"), iters=0))
    ref = run_pretrain(_args(data, tokenizer, tmp, "ref", "--load", str(tmp / "init"), "--finetune",
                             "--save", str(tmp / "ref"), "--save-interval", "3"))
    out["ref"] = _losses(ref)
    out["aux"] = [ref.aux_losses[i] for i in sorted(ref.aux_losses)]
    # A save that dies after every shard is written but before the checkpoint is published.
    killed = _copy_checkpoint(tmp / "ref", 3, tmp / "killed")

    def die(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill during save")

    original, checkpointing._finalize = checkpointing._finalize, die
    try:
        run_pretrain(_args(data, tokenizer, tmp, "killed", "--load", str(killed), "--save", str(killed)))
        out["kill_raised"] = False
    except KeyboardInterrupt:
        out["kill_raised"] = True
    finally:
        checkpointing._finalize = original
    out["after_kill"] = {"latest": checkpointing.read_latest(killed),
                         "dirs": sorted(p.name for p in killed.iterdir())}
    resumed = run_pretrain(_args(data, tokenizer, tmp, "resumed", "--load", str(killed), "--save", str(killed),
                                 "--keep-last-k", "1"))
    out["resumed"] = _losses(resumed)
    out["resumed_dirs"] = sorted(p.name for p in killed.iterdir())
    out["metrics"] = [json.loads(line) for line in (tmp / "logs_ref" / "metrics.jsonl").read_text().splitlines()]
    out["run_info"] = json.loads((tmp / "logs_ref" / "run_info.json").read_text())
    out["nan"] = _nan_checks(data, tokenizer, tmp)
    if real is not None:
        real_run = run_pretrain(_args(real[0], real[1], tmp, "real", iters=10))
        out["real"] = _losses(real_run)
    return out


LAYOUTS = {  # name: (world size, flags); each runs in its own process group (fresh megatron state)
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "ep2": (2, ["--expert-model-parallel-size", "2", "--use-distributed-optimizer"]),
    "pp2_vpp2": (2, ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]),
    "combined": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                     "--expert-model-parallel-size", "2", "--sequence-parallel", "--use-distributed-optimizer"]),
}
# Reshard on load: (source layout, target world size, target flags).
RESHARDS = {
    "tp2_to_pp2": ("tp2", 2, ["--pipeline-model-parallel-size", "2"]),  # plain optimizer
    # distributed optimizer, TP2 x PP2 x DP2 (EP2) -> TP1 x PP2 x DP4 (EP2)
    "combined_to_tp1": ("combined", 8, ["--pipeline-model-parallel-size", "2", "--expert-model-parallel-size", "2",
                                        "--use-distributed-optimizer"]),
}


def layout_group(rank, world_size, data, tokenizer, tmp, name, flags, load, finetune):
    _allow_children()
    from moetrain.pretrain import run_pretrain

    tmp = Path(tmp)
    extra = ["--load", load, *(["--finetune"] if finetune else [])]
    if finetune:  # a parity run: also save at iteration 3 for the reshard runs
        extra += ["--save", str(tmp / name), "--save-interval", "3"]
    return _losses(run_pretrain(_args(data, tokenizer, tmp, name, *extra, *flags)))


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="moetrain_train_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _real_data():
    if not (SHARED_DATA / "c4_demo.jsonl").is_file():
        return None
    out = Path(tempfile.mkdtemp(prefix="moetrain_real_data_"))
    return _preprocess(SHARED_DATA / "c4_demo.jsonl", out, max_docs=300)


@pytest.fixture(scope="module")
def single(workdir):
    data, tok = demo_data()
    return run_on_ranks(1, single_rank_group, (data, tok, str(workdir), _real_data()), timeout=300)[0]


@pytest.fixture(scope="module")
def layouts(workdir, single):
    """Losses of every layout (same initial weights), then of every reshard-on-load run."""
    data, tok = demo_data()
    out = {}
    for name, (world, flags) in LAYOUTS.items():
        results = run_on_ranks(world, layout_group, (data, tok, str(workdir), name, flags,
                                                     str(workdir / "init"), True), timeout=300)
        assert all(r == results[0] for r in results)  # every rank reports the pipeline-broadcast loss
        out[name] = results[0]
    for name, (source, world, flags) in RESHARDS.items():
        ckpt = _copy_checkpoint(workdir / source, 3, workdir / name)
        out[name] = run_on_ranks(world, layout_group, (data, tok, str(workdir), name, flags, str(ckpt), False),
                                 timeout=300)[0]
    return out


# ---------------------------------------------------------------- tests
def test_loss_falls_on_demo_corpus(single):
    ref = single["ref"]
    assert len(ref) == ITERS
    assert ref[-1] < ref[0] - 0.3, f"loss did not fall: {ref}"
    assert all(a is not None and a > 0 for a in single["aux"]), "MoE aux loss is logged"


def test_loss_falls_on_real_text(single):
    if "real" not in single:
        pytest.skip(f"shared sample data absent ({SHARED_DATA / 'c4_demo.jsonl'}); the demo-corpus test covers it")
    real = single["real"]
    assert real[-1] < real[0] - 0.5, f"loss did not fall on c4 text: {real}"


def test_metrics_and_run_info(single):
    from moetrain.training.run_log import METRIC_KEYS, RUN_INFO_KEYS

    metrics = single["metrics"]
    assert [m["iteration"] for m in metrics] == list(range(1, ITERS + 1))
    assert all(tuple(m) == METRIC_KEYS for m in metrics)
    assert metrics[-1]["tokens_per_sec_per_device"] > 0 and metrics[-1]["tflops_per_device"] > 0
    assert metrics[-1]["lm_loss"] == pytest.approx(single["ref"][-1])
    info = single["run_info"]
    assert set(info) >= set(RUN_INFO_KEYS)
    assert (info["model"], info["world_size"], info["seq_length"], info["global_batch_size"]) == ("grok1-tiny", 1, 32, 4)


def test_killed_save_leaves_previous_checkpoint_and_resume_is_exact(single):
    assert single["kill_raised"]
    after = single["after_kill"]
    assert after["latest"] == 3
    assert "iter_0000006" not in after["dirs"] and "iter_0000003" in after["dirs"]
    # Resuming from iteration 3 reproduces the uninterrupted run's losses exactly.
    assert single["resumed"] == single["ref"][3:]
    # --keep-last-k 1 pruned the older checkpoint and the stale temp dir of the killed save.
    assert single["resumed_dirs"] == ["iter_0000006", "latest_checkpointed_iteration.txt"]


def test_nan_loss_skips_the_step_and_stops_after_max_nan_iters(single):
    nan = single["nan"]
    assert nan["nan_iters"] == 1 and nan["skipped"] == 1
    losses = nan["losses"]
    assert losses[0] == single["ref"][0] and losses[1] != losses[1] and losses[2] == losses[2]
    # The skipped step did not update the weights: iteration 3 sees the weights of iteration 2.
    assert losses[2] != single["ref"][2]
    assert "2 NaN/inf losses in a row (--max-nan-iters 2)" in nan["stopped"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_parity(layouts, single, layout):
    assert layouts[layout] == pytest.approx(single["ref"], rel=PARITY_RTOL), layout


@pytest.mark.parametrize("reshard", list(RESHARDS))
def test_reshard_on_load(layouts, single, reshard):
    # Continuing a checkpoint of iteration 3 in another layout gives the reference's losses 4..6.
    assert layouts[reshard] == pytest.approx(single["ref"][3:], rel=PARITY_RTOL), reshard
