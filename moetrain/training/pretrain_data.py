"""Pretraining data: megatron-core's GPTDataset over preprocessed .bin/.idx, read by consumed samples.

The position in the data is one integer, the number of samples consumed so far. Global batch ``k``
is samples ``[k*gbs, (k+1)*gbs)``; micro-batch ``j`` of it holds ``mbs * dp`` consecutive samples,
of which data-parallel rank ``r`` takes ``[r*mbs, (r+1)*mbs)`` (Megatron's pretraining sampler). So
a resumed run, or a run with another DP size, sees exactly the same global batches.

``--mock-data`` (Megatron-LM's meaning) builds megatron-core's own ``MockGPTDataset`` through the same
``BlendedMegatronDatasetBuilder``: a config with no blend is a mock config, split 1,1,1. Its
documents are fixed (a hard-coded seed) and the sample order comes from ``--seed``, so it is read by
consumed samples exactly like a real corpus and a resumed run sees the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moetrain.config import DataSection


@dataclass(frozen=True)
class DatasetSizes:
    train: int
    valid: int
    test: int


def dataset_sizes(train_iters: int, global_batch_size: int, eval_interval: int, eval_iters: int) -> DatasetSizes:
    """Samples each split must provide (Megatron-LM's rule)."""
    evals = (train_iters // max(eval_interval, 1) + 1) * eval_iters
    return DatasetSizes(train=train_iters * global_batch_size, valid=evals * global_batch_size,
                        test=eval_iters * global_batch_size)


def mock_tokenizer(vocab_size: int):
    """What MockGPTDataset reads from a tokenizer (``vocab_size``, ``eod``) when none is given:
    megatron-core's NullTokenizer sized so that every token, the EOD id included, is below the
    model's ``vocab_size`` (NullTokenizer(n) has n + 1 ids, EOD = n)."""
    from megatron.core.tokenizers import MegatronTokenizer

    return MegatronTokenizer.from_pretrained(metadata_path={"library": "null"}, vocab_size=vocab_size - 1)


def build_datasets(data: DataSection, tokenizer, seq_length: int, seed: int, sizes: DatasetSizes,
                   vocab_size: int | None = None):
    """(train, valid, test) GPTDatasets (None for an empty split). Collective on every rank.

    With ``data.mock_data``: MockGPTDatasets; ``tokenizer`` may be None, then ``vocab_size`` (the
    model's) sizes the synthetic tokens."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    if data.mock_data:
        if tokenizer is None:
            if vocab_size is None:
                raise ValueError("--mock-data without a tokenizer needs the model's vocab_size")
            tokenizer = mock_tokenizer(vocab_size)
        cls, blend, split = MockGPTDataset, None, None  # no blend: megatron-core's mock config
    else:
        cls, blend, split = GPTDataset, data.blend(), data.split
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=blend, split=split,
        path_to_cache=data.data_cache_path, tokenizer=tokenizer, reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=data.eod_mask_loss,
        # The model applies its causal mask itself; a [b,1,s,s] mask per sample is wasted memory.
        create_attention_mask=False, mmap_bin_files=True,
    )
    # Every rank reads the data (cheap: memory-mapped); megatron builds the index caches on rank 0 first.
    builder = BlendedMegatronDatasetBuilder(cls, [sizes.train, sizes.valid, sizes.test], lambda: True, config)
    return tuple(builder.build())


def stack_pretrain_items(items: list[dict]) -> dict[str, torch.Tensor]:
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


class MicroBatches:
    """Iterator of this data-parallel rank's micro-batches, starting at ``start_sample``.

    ``row`` maps a global sample position to a dataset index (default: wrap around, which keeps an
    eval split shorter than asked from stopping mid-step; SFT passes its epoch order) and
    ``collate`` turns the micro-batch's items into tensors."""

    def __init__(self, dataset, start_sample: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 row=None, collate=stack_pretrain_items) -> None:
        self.dataset = dataset
        self.position = start_sample
        self.mbs = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.row = row or (lambda k: k % len(dataset))
        self.collate = collate

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        first = self.position + self.dp_rank * self.mbs
        items = [self.dataset[self.row(k)] for k in range(first, first + self.mbs)]
        self.position += self.mbs * self.dp_size
        return self.collate(items)


def iterators(dataset, start_sample: int, micro_batch_size: int, dp_rank: int, dp_size: int, chunks: int):
    """One iterator per model chunk (the interleaved schedule pulls data per virtual stage)."""
    its = [MicroBatches(dataset, start_sample, micro_batch_size, dp_rank, dp_size) for _ in range(chunks)]
    return its if chunks > 1 else its[0]
