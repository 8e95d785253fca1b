"""--split is checked against the data before launch: megatron-core's GPTDataset loops forever on
an empty split, so a split that gets no documents is refused in one line with a split that works."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from moetrain.config import ConfigError
from moetrain.training.data_splits import check_splits, sequence_count, split_counts, working_split


def _megatron_counts(n: int, split: str) -> list[int | None]:
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [None if m is None else int(round(m[1] * n)) - int(round(m[0] * n)) for m in matrix]


@pytest.mark.parametrize("split", ["969,30,1", "98,1,1", "1,0,0", "0.9,0.1", "90,5,5", "7,2,1", "1,1,1"])
@pytest.mark.parametrize("n", [1, 3, 10, 299, 300, 999, 1000, 12345])
def test_split_counts_are_megatrons(n, split):
    assert split_counts(n, split) == _megatron_counts(n, split)


def _dataset(tmp_path, docs: int) -> str:
    prefix = str(tmp_path / f"c{docs}_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for i in range(docs):
        builder.add_document(np.arange(1 + i % 5, dtype=np.uint16), [1 + i % 5])
    builder.finalize(prefix + ".idx")
    return prefix


def test_empty_split_is_refused_with_counts_and_a_split_that_works(tmp_path):
    prefix = _dataset(tmp_path, 300)
    assert sequence_count(prefix) == 300
    with pytest.raises(ConfigError) as e:
        check_splits([prefix], "969,30,1")
    message = str(e.value)
    assert "test split" in message and "300 documents" in message and "test 0" in message, message
    assert "--split 294,3,3" in message and "\n" not in message
    check_splits([prefix], working_split(300))  # the suggestion works
    check_splits([prefix], "1,0,0")  # a split of weight 0 is not built, so it cannot hang


def test_large_corpus_keeps_the_default_split(tmp_path):
    check_splits([_dataset(tmp_path, 1000)], "969,30,1")
