"""Evaluation of a trained model on labelled images: metrics, errors, plots.

`evaluate_model` works on scanned `FileEntry`s (training calls it on its
validation split); `load_eval_entries` turns an image folder into them the
way training does, checking that its classes are the model's.

Files written into `output_dir`:

    <metrics_file>          accuracy, top-k accuracy, per-class precision /
                            recall / F1 / support, confusion matrix, the most
                            confidently misclassified files, skipped files
    confusion_matrix.png    counts, rows true class, columns predicted
    predictions.csv         path, true, predicted, probability, correct
"""

import dataclasses
import logging
import os

import numpy as np

from tlfast import atomic
from tlfast import config
from tlfast import plots
from tlfast.data import labels_csv
from tlfast.data import prepare
from tlfast import predict as predict_lib
from tlfast import progress
from tlfast import run_folder
from tlfast.data import scan as scan_lib
from tlfast.data import sources

log = logging.getLogger("tlfast")
SPLITS = config.EVAL_SPLITS
CONFUSION_PNG = "confusion_matrix.png"
PREDICTIONS_CSV = "predictions.csv"


def check_class_names(found, expected, where):
    """Raises ValueError when the data has classes the model does not.

    The data may list the model's classes in another order (a model trained
    on a TFDS dataset keeps its order; a folder's is sorted), or lack some:
    `load_eval_entries` maps its labels onto the model's by name.

    Args:
      found: Class names of the data.
      expected: Class names of the model.
      where: The data's location, for the message.
    """
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(
            f"The classes of '{where}' differ from the model's. Missing (the "
            f"model has them, the data does not): {missing}; extra (the data "
            f"has them, the model does not): {extra}. Evaluate on data whose "
            f"classes are among the model's {list(expected)}. Received: "
            f"{list(found)}")
    if missing:
        log.warning("'%s' has no folder for the model's classes %s: their "
                    "recall is not measured.", where, missing)


def _relabel(entries, found, expected):
    """Entries labelled by the model's class indices instead of the data's."""
    if tuple(found) == tuple(expected):
        return list(entries)
    index = {name: i for i, name in enumerate(expected)}
    return [dataclasses.replace(e, label=index[found[e.label]])
            for e in entries]


def _choose(folder, split):
    """The entries of one split of a listed folder, and the split's name.

    Entries are None for a split that training made by hash (no validation
    folder): it is re-created from the scanned files.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    if split == "auto":
        split = "validation" if folder.presplit else "all"
    if split == "all":
        return [e for files in folder.splits.values() for e in files], split
    # Without a validation folder the run split its training images by hash,
    # which depends only on (seed, label, relpath): same settings, same files.
    hashed = split in ("train", "validation") and "validation" not in folder.splits
    if not hashed:
        if split not in folder.splits:
            raise ValueError(
                f"'{folder.root}' has no '{split}' split. Available: "
                f"{sorted(folder.splits)} (or 'all'). Received: split={split!r}")
        return list(folder.splits[split]), split
    return None, split  # Re-created from the usable files: see the caller.


def load_eval_entries(data_dir, class_names, *, split="auto", validation_split=0.2,
                      seed=0, cache_dir=None, skip_placeholders=True,
                      follow_links=False,
                      max_pixels=scan_lib.DEFAULT_MAX_PIXELS, labels=None):
    """Lists and scans the images of one split of a folder, as training does.

    Args:
      data_dir: Folder of class sub-folders, or with train/ and val/
        (validation/, test/) sub-folders of them.
      class_names: The model's classes. The folder's must be among them, in
        any order; the entries' labels index into `class_names`.
      split: "auto" (the validation folder of a pre-split folder, else
        everything), "validation", "train", "test" or "all". Without a
        validation folder, "train"/"validation" re-create the run's hash
        split from `validation_split` and `seed` (see `run.json`).
      validation_split: The run's validation fraction.
      seed: The run's split seed.
      cache_dir: Scan-verdict cache (training's `cache_dir`); None: no cache.
      skip_placeholders: Skip "image not found" graphics, as training does.
      follow_links: Use links out of the folder, as training did.
      max_pixels: Skip larger images, as training does (the run's setting).
      labels: Optional `tlfast.data.labels_csv.LabelsCsv` (labels from a
        CSV instead of class folders).

    Returns:
      (entries, skipped, split): usable `FileEntry`s, `Skipped` files of the
      chosen split (of the whole folder for a re-created hash split: bad
      files are left out before the split, so they belong to neither side),
      and the split's resolved name.

    Raises:
      FileNotFoundError: No such folder.
      ValueError: Fewer than two class folders, classes that `class_names`
        lacks, an unknown split, or no usable image.
    """
    folder = sources.list_image_folder(data_dir, follow_links, labels)
    check_class_names(folder.class_names, class_names, folder.root)
    entries, split = _choose(folder, split)
    if entries is None:
        # Training scans first and splits the usable files (a class's
        # held-out share depends on how many are usable): so must this.
        data = prepare.prepare_folder(
            data_dir, validation_split=validation_split, seed=seed,
            cache_dir=cache_dir, max_pixels=max_pixels,
            skip_placeholders=skip_placeholders, follow_links=follow_links,
            labels=labels)
        return (_relabel(getattr(data, split), folder.class_names, class_names),
                list(data.skipped), split)
    # Listing-time skips (bad extensions) of the chosen split only: those
    # under the same split folder as its files.
    tops = {e.relpath.split("/")[0] for e in entries} if folder.presplit else None
    listed_skips = [s for s in folder.skipped if tops is None or
                    os.path.relpath(s.path, folder.root).split(os.sep)[0] in tops]
    result = scan_lib.scan_files(entries, root=folder.root, cache_dir=cache_dir,
                                 skip_placeholders=skip_placeholders,
                                 max_pixels=max_pixels)
    skipped = listed_skips + list(result.skipped)
    if not result.usable:
        raise ValueError(
            f"No usable images to evaluate in the '{split}' split of "
            f"'{folder.root}' ({len(entries)} listed, {len(skipped)} "
            "skipped). Pass a folder with images in class sub-folders, or "
            f"another --split. Received: data_dir={os.fspath(data_dir)!r}")
    return (_relabel(result.usable, folder.class_names, class_names), skipped,
            split)


def report_dir_for(output_dir, split):
    """Where an evaluation of `split` writes its files.

    A training run's folder (it has run.json) already holds the run's own
    evaluation.json, predictions.csv and confusion_matrix.png: the report
    goes into its `eval_<split>/` sub-folder instead of replacing them.
    """
    if os.path.isfile(run_folder.RunFolder(output_dir).file(run_folder.RUN_INFO)):
        return os.path.join(output_dir, f"eval_{split}")
    return output_dir


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_metrics(probs, labels, class_names, *, top_k=5):
    """Accuracy, top-k accuracy, per-class P/R/F1 and the confusion matrix.

    Args:
      probs: float [N, C] class probabilities (or any scores).
      labels: int [N] true classes in [0, C).
      class_names: C names.
      top_k: k of the top-k accuracy; capped at C.

    Returns:
      A JSON-ready dict: "accuracy", "top_k", "top_k_accuracy",
      "num_examples", "per_class" {name: {"precision", "recall", "f1",
      "support"}}, "macro_avg" {"precision", "recall", "f1"} and
      "confusion_matrix" (C lists of C counts; row = true, column =
      predicted). A class never predicted has precision 0; the macro
      average is over the classes that occur (as true or predicted class),
      as scikit-learn's.

    Raises:
      ValueError: Shapes disagree, labels out of range, or no examples.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels, np.int64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes or len(labels) != len(probs):
        raise ValueError(
            f"Expected probs [N, {num_classes}] and labels [N]. Received: "
            f"probs.shape={probs.shape}, labels.shape={labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}). Received: "
                         f"min={labels.min()}, max={labels.max()}")
    if not len(labels):
        raise ValueError(
            "Nothing to evaluate: no example could be read. Received: 0 "
            "examples (see the skipped files logged above).")
    k = predict_lib.check_top_k(top_k, num_classes)
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    correct = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _safe_div(correct, matrix.sum(axis=0).astype(np.float64))
    recall = _safe_div(correct, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    # Stable sort: on ties the lower class index ranks first, as argmax.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    in_top = (top == labels[:, None]).any(axis=1)
    n = len(labels)
    # A class absent from this split (never true, never predicted) has no
    # precision or recall to average.
    present = (support > 0) | (matrix.sum(axis=0) > 0)
    return {
        "accuracy": float(correct.sum() / n),
        "top_k": k,
        "top_k_accuracy": float(in_top.mean()),
        "num_examples": int(n),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)},
        "macro_avg": {"precision": float(precision[present].mean()),
                      "recall": float(recall[present].mean()),
                      "f1": float(f1[present].mean())},
        "confusion_matrix": matrix.tolist(),
    }


def confident_errors(probs, labels, paths, class_names, worst=20):
    """The `worst` misclassified files with the highest predicted probability.

    Returns:
      A list of {"path", "true", "predicted", "probability",
      "true_probability"}, most confident first.
    """
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:max(worst, 0)]
    return [{"path": paths[i], "true": class_names[labels[i]],
             "predicted": class_names[predicted[i]],
             "probability": float(probs[i, predicted[i]]),
             "true_probability": float(probs[i, labels[i]])} for i in order]


def _write_predictions(path, probs, labels, paths, class_names):
    predicted = probs.argmax(axis=1)
    atomic.write_csv(
        path, ["path", "true", "predicted", "probability", "correct"],
        ([paths[i], class_names[labels[i]], class_names[p],
          f"{probs[i, p]:.6f}", int(p == labels[i])]
         for i, p in enumerate(predicted)))


def evaluate_model(model, entries, class_names, output_dir, *, batch_size=32,
                   top_k=5, worst=20, resize=predict_lib.DEFAULT_RESIZE,
                   skipped=(), metrics_file="evaluation.json", extra=None):
    """Evaluates a model on labelled, scanned image files and writes reports.

    Args:
      model: uint8 [B, S, S, 3] -> float [B, C] probabilities; S is read
        from its input shape.
      entries: `FileEntry`s that passed the scan; labels index `class_names`.
      class_names: C names, in the model's output order.
      output_dir: Where `metrics_file`, confusion_matrix.png and
        predictions.csv go; None writes nothing.
      batch_size: Images per forward pass.
      top_k: k of the top-k accuracy; capped at C.
      worst: How many confidently misclassified files to list.
      resize: The run's resize mode ("resize", "crop" or "pad").
      skipped: `Skipped` files to report (e.g. from `load_eval_entries`).
      metrics_file: JSON file name: "evaluation.json" beside a training
        run's own metrics.json, "metrics.json" for a standalone evaluation.
      extra: Optional dict merged into the report (e.g. {"split": ...}).

    Returns:
      The report dict (see `classification_metrics`), plus
      "most_confident_errors" (see `confident_errors`), "class_names",
      "skipped" [{"path", "reason"}] and "files" {kind: path written}.

    Raises:
      ValueError: No entries, or class names that do not match the model.
    """
    entries = list(entries)
    if not entries:
        raise ValueError("No images to evaluate: entries is empty. Pass the "
                         "scanned files of a labelled split.")
    num_outputs = model.output_shape[-1]
    if len(class_names) != num_outputs:
        raise ValueError(
            f"The model has {num_outputs} outputs but {len(class_names)} class "
            f"names were given. Received: class_names={list(class_names)}")
    probs, positions = predict_lib.predict_entries(
        model, entries, resize=resize, batch_size=batch_size)
    skipped = list(skipped) + predict_lib.lost_in_decoding(entries, positions)
    kept = [entries[i] for i in positions]
    return report_from_probabilities(
        probs, kept, class_names, output_dir, top_k=top_k, worst=worst,
        skipped=skipped, metrics_file=metrics_file, extra=extra)


def report_from_probabilities(probs, entries, class_names, output_dir, *,
                              top_k=5, worst=20, skipped=(),
                              metrics_file="evaluation.json", extra=None):
    """The evaluation report for predictions already made.

    Training uses this on the head's predictions over cached validation
    features: the same numbers as a pass over the pixels, without one.

    Args:
      probs: float [N, C] class probabilities, row i for `entries[i]`.
      entries: N `FileEntry`s (paths and true labels).
      Others: as in `evaluate_model`.

    Returns:
      The report dict, as `evaluate_model`.
    """
    probs = np.asarray(probs, np.float32)
    labels = np.array([e.label for e in entries], np.int64)
    paths = [e.path for e in entries]
    report = classification_metrics(probs, labels, class_names, top_k=top_k)
    report["class_names"] = list(class_names)
    report["most_confident_errors"] = confident_errors(
        probs, labels, paths, class_names, worst)
    report["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    report.update(extra or {})
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        files = {"metrics": os.path.join(output_dir, metrics_file),
                 "confusion_matrix": os.path.join(output_dir, CONFUSION_PNG),
                 "predictions": os.path.join(output_dir, PREDICTIONS_CSV)}
        report["files"] = files
        _write_predictions(files["predictions"], probs, labels, paths, class_names)
        atomic.write_json(files["metrics"], report)
        plots.plot_confusion_matrix(report["confusion_matrix"], class_names,
                                    files["confusion_matrix"])
    log.info("evaluated %d image(s): accuracy=%.4f top_%d_accuracy=%.4f "
             "(%d skipped)", report["num_examples"], report["accuracy"],
             report["top_k"], report["top_k_accuracy"], len(skipped))
    return report


def _trained_on(data_dir, run):
    """Whether `data_dir` is the folder the run trained on (run.json's)."""
    trained_on = run.setting("data_dir")
    try:
        return bool(trained_on) and os.path.samefile(data_dir, trained_on)
    except OSError:  # Either folder moved or gone: not the same one.
        return False


def run_evaluation(config):
    """`tlfast-evaluate`: a run's model on a labelled folder, with reports.

    On the folder the model was trained on (run.json's data_dir),
    split="auto" means the run's validation images: "all" would mix in the
    training images. The run's split settings, `max_pixels` and
    `skip_placeholders` apply, so the same images are judged.

    Args:
      config: A `tlfast.config.EvaluateConfig`.

    Returns:
      The report (see `evaluate_model`), also written under
      `config.output_dir` (into its eval_<split>/ when it is a run folder).
    """
    progress.ensure_visible()
    model_run = run_folder.load_model_run(config.model)
    run = model_run.run
    split, same = config.split, _trained_on(config.data_dir, run)
    if split == "auto" and same:
        split = "validation"
    if run.setting("multi_label", False):
        raise ValueError(
            f"tlfast-evaluate does not evaluate multi-label models yet; the "
            f"training run's metrics.json and report.html hold the per-label "
            f"precision, recall and F1 on validation. Received: "
            f"model={config.model!r}")
    # The run's labels CSV when evaluating the folder it trained on.
    labels = labels_csv.of_settings(
        config.labels_csv or (run.setting("labels_csv") if same else None))
    entries, skipped, split = load_eval_entries(
        config.data_dir, model_run.class_names, split=split,
        validation_split=run.setting("validation_split", 0.2),
        seed=run.setting("seed", 0),
        cache_dir=os.path.expanduser(config.cache_dir),
        # Judge the same images the run trained and validated on.
        skip_placeholders=run.setting("skip_placeholders", True),
        follow_links=run.setting("follow_links", False),
        max_pixels=run.setting("max_pixels", scan_lib.DEFAULT_MAX_PIXELS),
        labels=labels)
    out = report_dir_for(config.output_dir, split)
    result = evaluate_model(
        model_run.model, entries, model_run.class_names, out,
        batch_size=config.batch_size, top_k=config.top_k, worst=config.worst,
        resize=model_run.resize, skipped=skipped, metrics_file="metrics.json",
        extra={"split": split, "data_dir": os.path.abspath(config.data_dir),
               "model": os.path.abspath(config.model)})
    from tlfast import report

    result["files"]["report"] = report.write_report(
        out, evaluation=result, run=run,
        title=f"tlfast evaluation: {split} of {os.path.basename(os.path.abspath(config.data_dir))}")
    return result
