"""A run's files: history, atomic JSON/text writes, curves, evaluation and exports."""

import csv
import io
import json
import os

from tlfast import atomic
from tlfast.progress import Phase


def write_history(path, stages):
    rows = []
    for stage, history in stages:
        for epoch in range(len(next(iter(history.values()), []))):
            rows.append({"stage": stage, "epoch": epoch + 1,
                         **{k: float(v[epoch]) for k, v in history.items()}})
    fields = ["stage", "epoch"] + sorted({k for r in rows for k in r} -
                                         {"stage", "epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_text(path, text):
    """Atomic write: a reader never sees a half-written file."""
    fd, tmp = atomic.mkstemp(os.path.dirname(path) or ".")
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def finish_run(classifier, data, size, config, timings, val_probs=None):
    """Curves, an evaluation from pixels, and the requested exports.

    Returns:
      Entries for metrics.json: "evaluation" (accuracy from pixels, top-k,
      per-class scores; the full report is in evaluation.json) and "exports"
      (paths and parity per format).
    """
    from tlfast import evaluate
    from tlfast import export
    from tlfast import plots

    out = config.output_dir
    report = {}
    plots.plot_training_curves(os.path.join(out, "history.csv"),
                               os.path.join(out, "training_curves.png"))
    val_entries = getattr(data.validation, "entries", None)
    if val_entries is not None:
        with Phase("evaluate", total=len(val_entries), timings=timings):
            if val_probs is not None:
                # The frozen backbone's validation features are cached: the
                # head's predictions on them are the model's predictions.
                result = evaluate.report_from_probabilities(
                    val_probs, val_entries, data.class_names, out,
                    metrics_file="evaluation.json")
            else:
                result = evaluate.evaluate_model(
                    classifier, val_entries, data.class_names, out,
                    batch_size=config.batch_size, resize=config.resize,
                    metrics_file="evaluation.json")
        report["evaluation"] = {k: result[k] for k in (
            "accuracy", "top_k", "top_k_accuracy") if k in result}
    formats = [f.strip() for f in config.export.split(",") if f.strip()]
    if formats:
        with Phase("export", timings=timings):
            train_entries = getattr(data.train, "entries", None)
            representative = validation = None
            if train_entries is not None:
                representative = export.decode_entries(
                    train_entries, size, config.resize, limit=100)[0]
                # Capped: decoded pixels of a large validation set would
                # not fit in memory; evenly spaced, every class is there.
                validation = export.decode_entries(
                    val_entries, size, config.resize,
                    limit=export.PARITY_IMAGES)
            report["exports"] = export.export_model(
                classifier, formats, os.path.join(out, "export"),
                class_names=data.class_names, representative=representative,
                validation=validation, batch_size=config.batch_size)
    return report
