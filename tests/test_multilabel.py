"""tlfast.multilabel: label-set targets, sigmoid head, threshold and metrics."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_folder
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import head as head_lib
from tlfast import multilabel
from tlfast.config import HeadConfig

MATRIX = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]], np.float32)


def test_set_crossentropy_is_binary_crossentropy_of_the_sets():
    y = np.array([0, 2, 1])
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.3, 0.7], [0.1, 0.8, 0.4]],
                     np.float32)
    got = multilabel.SetCrossentropy(MATRIX)(y, probs)
    want = keras.losses.BinaryCrossentropy()(MATRIX[y], probs)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    again = multilabel.SetCrossentropy.from_config(
        multilabel.SetCrossentropy(MATRIX, 0.1).get_config())
    np.testing.assert_array_equal(again.matrix, MATRIX)
    assert again.label_smoothing == pytest.approx(0.1)


def test_set_accuracy_counts_each_label():
    metric = multilabel.SetAccuracy(MATRIX)
    metric.update_state(np.array([2, 1]), np.array([[0.9, 0.1, 0.2],
                                                    [0.1, 0.9, 0.1]]))
    assert float(metric.result()) == pytest.approx(5 / 6)
    same = tf.reduce_mean(multilabel.correct_per_example(
        MATRIX, tf.constant([2, 1]), tf.constant([[0.9, 0.1, 0.2],
                                                  [0.1, 0.9, 0.1]])))
    assert float(same) == pytest.approx(5 / 6)


def test_metrics_at_a_threshold():
    probs = np.array([[0.9, 0.6], [0.2, 0.7], [0.4, 0.1]], np.float32)
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    m = multilabel.multilabel_metrics(probs, targets, ("a", "b"), 0.5)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.5,
                                   "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["b"]["precision"] == 0.5
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["micro_avg"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # Any threshold in (0.2, 0.4] catches a's 0.4 (F1 6/7, the best);
    # of those, the one nearest 0.5.
    assert multilabel.choose_threshold(probs, targets) == pytest.approx(0.4)
    assert multilabel.labels_above(probs, ("a", "b"), 0.5) == [
        ["a", "b"], ["b"], []]


def test_head_learns_label_sets():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = (MATRIX[y] @ rng.normal(size=(3, 16)) * 3
         + rng.normal(size=(600, 16))).astype(np.float32)
    head = head_lib.build_head(16, 3, HeadConfig(epochs=30), "sigmoid")
    history = head_lib.train_head(head, (x[:500], y[:500]), (x[500:], y[500:]),
                                  HeadConfig(epochs=30), label_matrix=MATRIX)
    assert history.history["val_accuracy"][-1] > 0.95
    probs = head_lib.predict_head(head, x[500:])
    assert probs.shape == (100, 3) and probs.max() <= 1.0


@pytest.fixture
def multi_run(tmp_path):
    root = make_folder(tmp_path / "data", {"cats": 12, "dogs": 12})
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("path,label\n")
        for name in ("cats", "dogs"):
            for i in range(12):
                extra = " indoor" if i % 2 else ""
                f.write(f"{name}/img_{i:03d}.jpg,{name[:-1]}{extra}\n")
    from tlfast import training

    register_tiny_backbone()
    config = tiny_train_config(tmp_path, root, labels_csv=str(
        tmp_path / "labels.csv"), multi_label=True, epochs=5,
        fine_tune_epochs=1, export="keras")
    metrics = training.run_training(config)
    return config, metrics


def test_a_multi_label_run_end_to_end(multi_run, tmp_path):
    config, metrics = multi_run
    out = tmp_path / "out"
    assert (out / "labels.txt").read_text().split() == ["cat", "dog", "indoor"]
    assert metrics["label_names"] == ["cat", "dog", "indoor"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["per_class"]) == {"cat", "dog", "indoor"}
    assert 0.05 <= evaluation["threshold"] <= 0.95
    assert metrics["evaluation"]["threshold"] == evaluation["threshold"]
    run = json.loads((out / "run.json").read_text())
    assert run["resolved"]["multi_label_threshold"] == evaluation["threshold"]
    assert metrics["exports"]["keras"]["parity_ok"]
    page = (out / "report.html").read_text()
    assert "Per label" in page and "micro F1" in page

    from tlfast import predict
    from tlfast.config import PredictConfig

    images = tmp_path / "data" / "cats"
    rows, skipped, _ = predict.run_prediction(PredictConfig(
        model=str(out), images=str(images), output=str(tmp_path / "p.csv")))
    threshold = evaluation["threshold"]
    for row in rows:
        above = {row[f"label_{r}"] for r in (1, 2, 3)
                 if row[f"prob_{r}"] >= threshold}
        assert set(row["labels"].split()) == above
    with open(tmp_path / "p.csv") as f:
        assert next(csv.reader(f))[:2] == ["path", "labels"]
