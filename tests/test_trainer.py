"""The Trainer's parts and hooks, as a fine-tuning workflow would use them (1 gloo rank).

A recording DataProvider (pretraining's, with every hook counted) drives the Trainer: the hooks are
called where the loop promises (datasets once, iterators at the consumed-sample position, the
forward step for training and evaluation, extra metrics per metrics line), its losses equal plain
``pretrain``'s bit for bit, and the start-up console lines come in their documented order.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest
from test_training_e2e import demo_data

from moetrain.testing.spawn import run_on_ranks

ITERS = 4


def _args(data, tokenizer, tmp: Path, name: str, *extra: str, iters: int = ITERS) -> list[str]:
    return ["--model", "grok1-tiny", "--data-path", data, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tokenizer, "--seq-length", "32", "--micro-batch-size", "1",
            "--global-batch-size", "4", "--train-iters", str(iters), "--lr", "1e-2", "--min-lr", "1e-3",
            "--lr-warmup-iters", "1", "--eval-iters", "1", "--eval-interval", "2", "--split", "90,10,0",
            "--log-interval", "2", "--log-dir", str(tmp / f"logs_{name}"), "--no-tensorboard", *extra]


def hooks_group(rank, world_size, data, tokenizer, tmp):
    import multiprocessing

    import torch.distributed as dist

    # dist_checkpointing's writer starts helper processes; the harness's ranks are daemonic.
    multiprocessing.current_process()._config["daemon"] = False
    from moetrain.device import setup_device
    from moetrain.pretrain import prepare, run_pretrain
    from moetrain.training.loop import PretrainData
    from moetrain.training.trainer import Trainer

    class Recording(PretrainData):
        def __init__(self) -> None:
            self.builds, self.starts, self.forwards, self.metrics = 0, [], 0, 0

        def build(self, trainer):
            self.builds += 1
            return super().build(trainer)

        def iterator(self, trainer, dataset, start_sample):
            self.starts.append(start_sample)
            return super().iterator(trainer, dataset, start_sample)

        def forward_step(self, data_iterator, model):
            self.forwards += 1
            return super().forward_step(data_iterator, model)

        def extra_metrics(self, trainer, result, seconds, steps):
            self.metrics += 1
            return {}

    class CountingSaves(Trainer):
        def __init__(self, *args) -> None:
            self.saves: list[int] = []
            super().__init__(*args)

        def save(self):
            self.saves.append(self.state.iteration)
            return super().save()

    def trainer(argv, provider):
        run, _ = prepare(argv, world_size=dist.get_world_size())
        return CountingSaves(run, setup_device(run.cfg.device), provider)

    tmp = Path(tmp)
    out = {}
    reference = run_pretrain(_args(data, tokenizer, tmp, "ref"))
    out["ref"] = (reference.losses, reference.eval_losses)

    fresh, console = Recording(), io.StringIO()
    with contextlib.redirect_stdout(console):
        t = trainer(_args(data, tokenizer, tmp, "fresh", "--save", str(tmp / "ckpt"), "--save-interval", "2"), fresh)
        summary = t.train()
    out["fresh"] = {"losses": (summary.losses, summary.eval_losses), "builds": fresh.builds, "starts": fresh.starts,
                    "forwards": fresh.forwards, "metrics": fresh.metrics, "saves": t.saves,
                    "console": console.getvalue().splitlines()}

    resumed, console = Recording(), io.StringIO()
    with contextlib.redirect_stdout(console):
        t = trainer(_args(data, tokenizer, tmp, "resumed", "--load", str(tmp / "ckpt"), iters=ITERS + 2), resumed)
        out["resumed_state"] = (t.state.iteration, t.state.consumed_train_samples)
        summary = t.train()
    out["resumed"] = {"losses": sorted(summary.losses), "starts": resumed.starts,
                      "console": console.getvalue().splitlines()}
    return out


@pytest.fixture(scope="module")
def hooks():
    tmp = Path(tempfile.mkdtemp(prefix="moetrain_trainer_"))
    try:
        data, tokenizer = demo_data()
        yield run_on_ranks(1, hooks_group, (data, tokenizer, str(tmp)), timeout=300)[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_pretrain_names_are_the_trainers():
    from moetrain.training import loop, trainer

    assert loop.TrainingError is trainer.TrainingError and loop.TrainSummary is trainer.TrainSummary
    with pytest.raises(TypeError):
        trainer.DataProvider()  # build and iterator are the workflow's to supply


@pytest.mark.multirank
def test_hooks_are_called_where_the_loop_promises(hooks):
    fresh = hooks["fresh"]
    assert fresh["builds"] == 1
    # train from sample 0; evaluations at iterations 2 and 4 own eval batches 0 and 1 (4 samples each)
    assert fresh["starts"] == [0, 0, 4]
    assert fresh["forwards"] == (ITERS + 2) * 4  # 4 micro-batches per train step and per eval step
    assert fresh["metrics"] == 3  # iteration 1 (first of run), 2 and 4 (--log-interval 2)
    assert fresh["saves"] == [2, 4]  # the final save is skipped: iteration 4 was just saved


@pytest.mark.multirank
def test_composed_trainer_matches_pretrain_exactly(hooks):
    assert hooks["fresh"]["losses"] == hooks["ref"]


@pytest.mark.multirank
def test_resume_starts_the_iterator_at_the_consumed_samples(hooks):
    assert hooks["resumed_state"] == (ITERS, ITERS * 4)
    assert hooks["resumed"]["starts"][0] == ITERS * 4
    assert hooks["resumed"]["losses"] == [ITERS + 1, ITERS + 2]


@pytest.mark.multirank
def test_start_up_lines_come_before_their_steps(hooks):
    def startup(lines):  # the first two words of every line before "training from ..."
        end = next(i for i, line in enumerate(lines) if line.startswith("training from"))
        return [" ".join(line.split()[:2]) for line in lines[:end]]

    assert startup(hooks["fresh"]["console"]) == ["moetrain: grok1-tiny", "building the", "building dataset"]
    assert startup(hooks["resumed"]["console"]) == ["moetrain: grok1-tiny", "building the", "loading checkpoint",
                                                    "building dataset"]
