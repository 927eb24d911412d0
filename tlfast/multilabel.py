"""Multi-label classification: several labels an image, a sigmoid each.

The data layer hands out one integer per image, the index of its *label set*
(`tlfast.data.labels_csv`); a multi-hot matrix float32 [sets, labels] turns
that into targets inside the loss and the metric. So the cached features,
the pixel pipeline, the head's epoch loop and `fit` for fine-tuning all keep
their integer labels, and only the last layer (sigmoid), the loss (binary
cross-entropy) and the metrics change.

A label is predicted when its probability reaches a threshold chosen on the
validation set (the one of a 0.05 grid with the best micro-averaged F1), as
Model Maker and fastai users pick it; `metrics.json` reports it with the
per-label precision, recall and F1 at it.
"""

import os

import keras
import numpy as np

from tlfast import atomic

# Candidate thresholds; 0.5 wins ties (the sigmoid's natural boundary).
_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def _targets(matrix, y_true):
    index = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    return keras.ops.take(matrix, index, axis=0)


@keras.saving.register_keras_serializable(package="tlfast")
class SetCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of sigmoid outputs against label-set indices.

    Args:
      matrix: float [sets, labels] multi-hot rows (`labels_csv.label_sets`).
      label_smoothing: Pulls targets towards 0.5.
    """

    def __init__(self, matrix, label_smoothing=0.0,
                 name="set_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.matrix = np.asarray(matrix, np.float32)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return keras.losses.binary_crossentropy(
            _targets(self.matrix, y_true), y_pred,
            label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix.tolist(),
                "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tlfast")
class SetAccuracy(keras.metrics.MeanMetricWrapper):
    """Per-label accuracy at 0.5 (Keras' binary accuracy) on label-set indices."""

    def __init__(self, matrix, name="accuracy", **kwargs):
        self.matrix = np.asarray(matrix, np.float32)
        super().__init__(self._accuracy, name=name, **kwargs)

    def _accuracy(self, y_true, y_pred):
        return keras.metrics.binary_accuracy(_targets(self.matrix, y_true),
                                             y_pred)

    def get_config(self):
        return {"name": self.name, "matrix": self.matrix.tolist()}


def correct_per_example(matrix, labels, probs):
    """Per-label accuracy at 0.5 of each example, float32 [B] (a TF op)."""
    import tensorflow as tf

    targets = tf.gather(tf.constant(matrix), labels)
    hits = tf.equal(tf.cast(probs >= 0.5, tf.float32), targets)
    return tf.reduce_mean(tf.cast(hits, tf.float32), axis=-1)


def _counts(predicted, targets):
    tp = (predicted & targets).sum(axis=0).astype(np.float64)
    return tp, predicted.sum(axis=0).astype(np.float64), \
        targets.sum(axis=0).astype(np.float64)


def _f1(tp, predicted, actual):
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(tp), where=precision + recall > 0)
    return precision, recall, f1


def _micro(tp, predicted, actual):
    """(precision, recall, F1) over all labels pooled."""
    return tuple(float(v[0]) for v in _f1(
        np.array([tp.sum()]), np.array([predicted.sum()]),
        np.array([actual.sum()])))


def choose_threshold(probs, targets):
    """The grid threshold with the best micro F1 on (probs, targets)."""
    targets = np.asarray(targets) > 0.5
    best, best_f1 = 0.5, -1.0
    for t in sorted(_GRID, key=lambda t: abs(t - 0.5)):
        f1 = _micro(*_counts(probs >= t, targets))[2]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


def multilabel_metrics(probs, targets, label_names, threshold):
    """Per-label precision / recall / F1 at `threshold`, and averages.

    Args:
      probs: float [N, L] sigmoid outputs.
      targets: {0, 1} [N, L] true labels.
      label_names: L names.
      threshold: A label is predicted when its probability >= this.

    Returns:
      A JSON-ready dict: "threshold", "accuracy" (per-label accuracy),
      "exact_match" (every label right), "micro_avg" and "macro_avg"
      {"precision", "recall", "f1"}, "per_class" {label: {"precision",
      "recall", "f1", "support"}} and "num_examples".
    """
    probs = np.asarray(probs, np.float32)
    targets = np.asarray(targets) > 0.5
    if probs.shape != targets.shape or probs.shape[1] != len(label_names):
        raise ValueError(
            f"Expected probs and targets [N, {len(label_names)}]. Received: "
            f"probs.shape={probs.shape}, targets.shape={targets.shape}")
    predicted = probs >= threshold
    tp, npred, nact = _counts(predicted, targets)
    precision, recall, f1 = _f1(tp, npred, nact)
    micro = _micro(tp, npred, nact)
    return {
        "threshold": float(threshold),
        "accuracy": float((predicted == targets).mean()),
        "exact_match": float((predicted == targets).all(axis=1).mean()),
        "num_examples": int(len(probs)),
        "micro_avg": dict(zip(("precision", "recall", "f1"), micro)),
        "macro_avg": {"precision": float(precision.mean()),
                      "recall": float(recall.mean()), "f1": float(f1.mean())},
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(nact[i])}
            for i, name in enumerate(label_names)},
    }


def labels_above(probs, label_names, threshold):
    """Each row's labels at or above `threshold`, highest first."""
    rows = []
    for p in np.asarray(probs):
        order = np.argsort(-p, kind="stable")
        rows.append([label_names[i] for i in order if p[i] >= threshold])
    return rows


def worst_examples(probs, targets, paths, label_names, threshold, worst=20):
    """Images whose predicted label set is wrong, most wrong first.

    Returns:
      [{"path", "true", "predicted", "probability"}], "probability" being the
      largest gap between a probability and its target.
    """
    targets = np.asarray(targets) > 0.5
    gap = np.abs(probs - targets).max(axis=1)
    wrong = np.flatnonzero(((probs >= threshold) != targets).any(axis=1))
    order = wrong[np.argsort(-gap[wrong], kind="stable")][:max(worst, 0)]
    predicted = labels_above(probs[order], label_names, threshold)
    return [{"path": paths[i],
             "true": " ".join(n for n, t in zip(label_names, targets[i]) if t),
             "predicted": " ".join(p) or "(none)",
             "probability": float(gap[i])} for i, p in zip(order, predicted)]


def write_report(probs, entries, matrix, label_names, output_dir, *,
                 threshold=None, worst=20, skipped=(),
                 metrics_file="evaluation.json"):
    """The multi-label evaluation report (and its files) for predictions made.

    Args:
      probs: float [N, L] sigmoid outputs, row i for `entries[i]`.
      entries: N `FileEntry`s whose labels index the rows of `matrix`.
      matrix: float [sets, L] multi-hot rows of the label sets.
      label_names: L names.
      output_dir: Where `metrics_file` and predictions.csv go (None: nowhere).
      threshold: The decision threshold; None chooses it on these examples.
      worst: How many wrongly labelled files to list.
      skipped: `Skipped` files to report.
      metrics_file: The report's JSON file name.

    Returns:
      The `multilabel_metrics` dict plus "multi_label", "class_names",
      "most_confident_errors", "skipped" and "files".
    """
    probs = np.asarray(probs, np.float32)
    targets = np.asarray(matrix)[[e.label for e in entries]]
    if threshold is None:
        threshold = choose_threshold(probs, targets)
    paths = [e.path for e in entries]
    report = multilabel_metrics(probs, targets, label_names, threshold)
    report.update(
        multi_label=True, class_names=list(label_names),
        most_confident_errors=worst_examples(probs, targets, paths,
                                             label_names, threshold, worst),
        skipped=[{"path": s.path, "reason": s.reason} for s in skipped])
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        files = {"metrics": os.path.join(output_dir, metrics_file),
                 "predictions": os.path.join(output_dir, "predictions.csv")}
        report["files"] = files
        predicted = labels_above(probs, label_names, threshold)
        atomic.write_csv(files["predictions"], ["path", "true", "predicted",
                                                *label_names], (
            [path, " ".join(n for n, t in zip(label_names, row) if t),
             " ".join(labels), *(f"{p:.6f}" for p in prob)]
            for path, row, labels, prob in zip(paths, targets, predicted, probs)))
        atomic.write_json(files["metrics"], report)
    return report
