"""Supervised fine-tuning end to end on CPU ranks: layout parity, padding, resume, evaluation,
metrics and the checks that fail before any rank starts.

Synthetic Alpaca records (llama2 template, 26-54 tokens with the 512-piece SentencePiece model) are
preprocessed twice: one sample per row, and packed into rows of 64. One spawned group per layout
(1, 2, 2, 2 and 8 gloo ranks) runs several short trainings of grok1-tiny (seq 64, GBS 8) so start-up
is paid once per group; every run starts from the same 1-rank initial weights (--finetune).
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest_data import read_docs, run, sp_args, sp_model, write_jsonl
from sft_training_ranks import (
    AUX,
    ITERS,
    LORA,
    PACKED,
    RESUME_ITERS,
    VARIABLE,
    layout_group,
    single_rank_group,
)
from test_training_config import _fails as pretrain_fails  # tests/ is on sys.path

from moetrain.testing.spawn import run_on_ranks

# Same global batches in every layout; only the reduction order differs (fp32). As pretraining's.
PARITY_RTOL = 2e-4
SEQ, GBS, SEED = 64, 8, 1234
RECORDS, TRAIN_ROWS = 60, 54  # --split 90,10,0 of the unpacked rows (6 validation rows)

pytestmark = pytest.mark.multirank

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any").split()


def _words(start: int, n: int) -> str:
    return " ".join(WORDS[(start + k) % len(WORDS)] for k in range(n))


def alpaca_records(n: int = RECORDS) -> list[dict]:
    """Pairs of short records (two fit one packed row of 64) then pairs of longer ones."""
    records = []
    for i in range(n):
        short = i % 4 < 2
        records.append({"instruction": "Say " + _words(i, 1 if short else 2),
                        "input": "" if short else _words(3 * i, 1 + i % 2),
                        "output": _words(7 * i, 1 if short else 2 + (i * 5) % 6) + "."})
    return records


@functools.lru_cache(maxsize=1)
def sft_data() -> tuple[dict, str, Path]:
    """({kind: data prefix}, tokenizer model, folder). Kinds: unpacked / packed (llama2, rows <= 64),
    chatml128 (chatml, packed into rows of 128), text (pretraining text)."""
    out = Path(tempfile.mkdtemp(prefix="moetrain_sft_data_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    src = write_jsonl(out / "alpaca.jsonl", alpaca_records())
    base = ["--input", str(src), "--handler-name", "AlpacaStyleInstructionHandler", *sp_args()]
    llama2 = [*base, "--prompt-type", "llama2", "--seq-length", str(SEQ)]
    assert run([*llama2, "--output-prefix", str(out / "unpacked")]) == 0
    assert run([*llama2, "--output-prefix", str(out / "packed"), "--pack"]) == 0
    assert run([*base, "--prompt-type", "chatml", "--seq-length", "128", "--pack",
                "--output-prefix", str(out / "chatml128")]) == 0
    text = write_jsonl(out / "text.jsonl", [{"text": f"{r['instruction']} {r['output']}"} for r in alpaca_records()])
    assert run(["--input", str(text), *sp_args(), "--append-eod", "--output-prefix", str(out / "corpus")]) == 0
    data = {k: str(out / k) for k in ("unpacked", "packed", "chatml128")}
    for kind in ("unpacked", "packed"):  # nothing truncated: every sample fits --seq-length 64 whole
        assert max(row.size for row in _rows(data[kind])[0]) <= SEQ
    assert len(_rows(data["unpacked"])[0]) == RECORDS
    data["text"] = str(out / "corpus_text_document")
    return data, sp_model(), out


def _rows(prefix: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return read_docs(f"{prefix}_packed_input_ids_document"), read_docs(f"{prefix}_packed_labels_document")


def _global_rows(train_rows: int, iteration: int, shuffle: bool = True) -> list[int]:
    """The rows of global batch ``iteration`` (1-based) of the training split."""
    from moetrain.training.sft_data import EpochOrder

    order = EpochOrder(train_rows, SEED, shuffle=shuffle)
    return [order.row(k) for k in range((iteration - 1) * GBS, iteration * GBS)]


# ---------------------------------------------------------------- fixtures
LAYOUTS = {  # name: (world size, layout flags, {run: (data kind, flags)}); one process group each
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
            {"fixed": ("unpacked", []), "packed_variable": ("packed", PACKED + VARIABLE),
             "aux_fixed": ("unpacked", AUX)}),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"],
            {"fixed": ("unpacked", []), "packed_variable": ("packed", PACKED + VARIABLE)}),
    "ep2": (2, ["--expert-model-parallel-size", "2"],
            {"fixed": ("unpacked", []), "variable": ("unpacked", VARIABLE)}),
    "tp2_pp2_ep2": (8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                        "--expert-model-parallel-size", "2", "--sequence-parallel", "--use-distributed-optimizer"],
                    {"packed_variable": ("packed", PACKED + VARIABLE), "variable": ("unpacked", VARIABLE),
                     "lora": ("unpacked", LORA)}),
}
PARITY = [(layout, label) for layout, (_, _, runs) in LAYOUTS.items() for label in runs if "aux" not in label]


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="moetrain_sft_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def single(workdir):
    data, tok, _ = sft_data()
    return run_on_ranks(1, single_rank_group, (data, tok, str(workdir)), timeout=300)[0]


@pytest.fixture(scope="module")
def layouts(workdir, single):
    data, tok, _ = sft_data()
    out = {}
    for name, (world, flags, runs) in LAYOUTS.items():
        results = run_on_ranks(world, layout_group, (data, tok, str(workdir), name, flags, runs), timeout=300)
        for label in runs:  # every rank reports the pipeline-broadcast loss
            assert all(r[label] == results[0][label] for r in results), (name, label)
        out[name] = results[0]
    return out


# ---------------------------------------------------------------- layout parity and padding
def test_reference_losses_fall(single):
    for ref in (single["ref"], single["ref_packed"], single["aux_fixed"]):
        assert len(ref) == ITERS and all(math.isfinite(x) for x in ref)
        assert ref[-1] < ref[0], ref
    assert all(a is not None and a > 0 for a in single["aux_values"]), "MoE aux loss is logged"


@pytest.mark.parametrize("layout,label", PARITY, ids=[f"{a}-{b}" for a, b in PARITY])
def test_layout_parity(layouts, single, layout, label):
    """Every layout, fixed or variable length, packed or not, gives the 1-rank fixed-length losses;
    LoRA (adapters on attention and every expert, base frozen) under TP2 x PP2 x EP2 its 1-rank losses."""
    kind = LAYOUTS[layout][2][label][0]
    ref = single["lora" if label == "lora" else "ref_packed" if kind == "packed" else "ref"]
    got = layouts[layout][label]
    assert got == pytest.approx(ref, rel=PARITY_RTOL), (layout, label)


# With the MoE load-balancing loss on (--moe-aux-loss-coeff > 0): padding takes no part in routing
# statistics (sft_step passes megatron-core's padding_mask, sliced for later pipeline stages); with
# the mask, megatron-core counts the valid tokens over the sequence and TP2 x SP matches one rank.
def test_padding_does_not_change_the_losses_with_aux_loss(single):
    assert single["aux_variable"] == pytest.approx(single["aux_fixed"], rel=PARITY_RTOL)


def test_tp2_sp_parity_with_aux_loss(layouts, single):
    assert layouts["tp2"]["aux_fixed"] == pytest.approx(single["aux_fixed"], rel=PARITY_RTOL)


def test_packing_changes_the_batches(single):
    # Sanity of the parity above: packed and unpacked data are different global batches.
    assert single["ref_packed"][0] != single["ref"][0]


# ---------------------------------------------------------------- resume and shuffling
def test_resume_mid_epoch_is_exact(single):
    from moetrain.training.data_splits import split_counts

    assert split_counts(RECORDS, "90,10,0")[0] == TRAIN_ROWS
    full, resumed = single["full"], single["resumed"]
    assert sorted(full) == list(range(1, RESUME_ITERS + 1))
    # Iteration 3 ends at sample 24 of 54 training rows; iteration 7 crosses into the second epoch.
    assert sorted(resumed) == list(range(4, RESUME_ITERS + 1))
    assert resumed == {i: full[i] for i in resumed}
    assert single["resumed_eval"] == {i: single["full_eval"][i] for i in (6, 9)}


def test_shuffle_is_seeded_and_on_by_default(single):
    # Same initial weights and first shuffled batch as the 6-step reference: same first loss.
    assert single["full"][1] == single["ref"][0]
    assert single["no_shuffle"][0] != single["ref"][0]
    assert _global_rows(TRAIN_ROWS, 1) != list(range(GBS))


# ---------------------------------------------------------------- evaluation
def test_evaluation_produces_a_finite_validation_loss(single):
    evals = single["full_eval"]
    assert sorted(evals) == [3, 6, 9]
    assert all(math.isfinite(v) and v > 0 for v in evals.values()), evals


# ---------------------------------------------------------------- metrics
def _expected_counts(prefix: str, train_rows: int, iteration: int, variable: bool) -> tuple[int, int, int]:
    """(real, trained, padded) tokens of global batch ``iteration`` with MBS 1."""
    ids, labels = _rows(prefix)
    real = trained = padded = 0
    for row in _global_rows(train_rows, iteration):
        n = ids[row].size
        real += n
        trained += int((labels[row][1:] != -100).sum())  # next-token targets (one sample per row)
        padded += min(SEQ, math.ceil(n / 8) * 8) if variable else SEQ
    return real, trained, padded


def test_metrics_carry_sft_throughput_and_padding(single, layouts):
    from moetrain.training.run_log import METRIC_KEYS, SFT_METRIC_KEYS

    data, _, _ = sft_data()
    fixed = single["ref_metrics"]
    assert [m["iteration"] for m in fixed] == list(range(1, ITERS + 1))
    for m in fixed:
        assert tuple(m) == METRIC_KEYS + SFT_METRIC_KEYS
        assert m["tokens_per_sec_per_device"] > 0 and m["trained_tokens_per_sec"] > 0
        assert 0 < m["padding_fraction"] < 1
        real, trained, padded = _expected_counts(data["unpacked"], TRAIN_ROWS, m["iteration"], variable=False)
        assert m["padding_fraction"] == pytest.approx(1 - real / padded, rel=1e-9)
        # Same interval seconds: trained / real, on 1 device.
        assert m["trained_tokens_per_sec"] / m["tokens_per_sec_per_device"] == pytest.approx(trained / real,
                                                                                                rel=1e-9)
    for name in ("ep2", "tp2_pp2_ep2"):  # 2 data-parallel ranks: counts are summed over them
        variable = layouts[name]["variable_metrics"]
        for m in variable:
            real, _, padded = _expected_counts(data["unpacked"], TRAIN_ROWS, m["iteration"], variable=True)
            assert m["padding_fraction"] == pytest.approx(1 - real / padded, rel=1e-9), name
            assert 0 <= m["padding_fraction"] < fixed[m["iteration"] - 1]["padding_fraction"], name
    # Packed rows: fewer pad tokens than one sample per row, fewer still with variable lengths.
    packed_fixed = single["ref_packed_metrics"]
    packed_variable = layouts["tp2_pp2_ep2"]["packed_variable_metrics"]
    for p, v in zip(packed_fixed, packed_variable):  # the same global batches
        assert 0 <= v["padding_fraction"] < p["padding_fraction"]
    assert _mean(packed_fixed) < _mean(fixed)


def _mean(records: list[dict]) -> float:
    return float(np.mean([m["padding_fraction"] for m in records]))


# ---------------------------------------------------------------- fails before ranks start
def _fails(argv: list[str], capsys, world: int = 8, one_line: bool = True) -> str:
    capsys.readouterr()  # drop what came before (the preprocessor's report, when the data is built here)
    err = pretrain_fails(argv, capsys, world)
    lines = err.splitlines()
    if one_line:
        assert len(lines) == 1, err
    else:  # one error line, then the details it lists (indented)
        assert "error:" not in "".join(lines[1:]) and all(line.startswith("  - ") for line in lines[1:]), err
    return err


def _argv(data: str, *extra: str, seq: int = SEQ, instruction: bool = True) -> list[str]:
    _, tok, _ = sft_data()
    argv = ["--model", "grok1-tiny", "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tok,
            "--data-path", data, "--seq-length", str(seq), "--micro-batch-size", "1", "--global-batch-size", "8",
            "--train-iters", "6", "--split", "90,10,0", "--no-tensorboard", *extra]
    return [*argv, "--is-instruction-dataset"] if instruction else argv


def test_pretraining_text_with_is_instruction_dataset(capsys):
    data, _, _ = sft_data()
    err = _fails(_argv(data["text"]), capsys)
    assert "holds pretraining text" in err and data["text"] in err


def test_instruction_data_without_is_instruction_dataset(capsys):
    data, _, _ = sft_data()
    err = _fails(_argv(data["unpacked"], instruction=False), capsys)
    assert "is an instruction dataset" in err and "--is-instruction-dataset" in err


def test_prompt_type_differs_from_the_data(capsys):
    data, _, _ = sft_data()
    err = _fails(_argv(data["chatml128"], "--prompt-type", "llama3", seq=128), capsys)
    assert "--prompt-type llama3 differs" in err and "--prompt-type chatml" in err


def test_packed_rows_longer_than_seq_length(capsys):
    data, _, _ = sft_data()
    err = _fails(_argv(data["chatml128"], seq=32), capsys)
    assert "packed row" in err and "more than --seq-length 32" in err


def test_finetune_from_a_checkpoint_of_another_model_shape(single, workdir, capsys):
    data, _, _ = sft_data()
    err = _fails(_argv(data["unpacked"], "--finetune", "--load", str(workdir / "llama")), capsys, one_line=False)
    first = err.splitlines()[0]
    assert "incompatible model ('llama-tiny' vs --model 'grok1-tiny')" in first and str(workdir / "llama") in first
    assert "num_experts: checkpoint None vs run 4" in err
