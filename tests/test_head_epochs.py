"""Tests for tlfast/head_epochs.py (its two paths are compared step for step
in tests/test_head.py, through `train_head`)."""

import numpy as np

from tlfast import head as head_lib
from tlfast import head_epochs


def test_compiled_epochs_are_used_with_tensorflow():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 16)).astype("float32"), rng.integers(0, 3, 20)
    head = head_lib.build_head(16, 3)
    head_lib.compile_classifier(head, 1e-3)
    run = head_epochs.compiled_epochs(head, x, y.astype("int32"),
                                      np.arange(20, dtype="int32"), None, 8)
    assert run is not None
    logs = run(np.arange(20))
    assert set(logs) == {"loss", "accuracy"} and logs["loss"] > 0


def test_float32_rows_cast_a_chunk_of_float16_features():
    features = np.arange(12, dtype=np.float16).reshape(6, 2)
    rows = head_epochs.float32_rows(features, 4, 3)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, [[8, 9], [10, 11]])
