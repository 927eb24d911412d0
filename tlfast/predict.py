"""Predictions from a trained model: load a run, decode files, top-k rows.

Images go through `tlfast.data.pipeline.files_dataset`, the decode path of
training, so a file is resized and cropped exactly as the model saw its
training images. Files are scanned first (`tlfast.data.scan`) with the same
rules as training; the ones that fail are returned as `Skipped` with a
reason, never as a row, so a predictions CSV holds only real predictions.

    run = load_model_run("runs/photos/model.keras")
    rows, skipped = predict_images(run.model, list_image_files("new/"),
                                   run.class_names, resize=run.resize)
"""

import dataclasses
import glob
import logging
import os

import numpy as np
import tensorflow as tf

from tlfast import atomic
from tlfast import config
from tlfast import multilabel
from tlfast import progress
from tlfast.data import pipeline
from tlfast.data import scan as scan_lib
from tlfast.data import sources
from tlfast.data.sources import FileEntry
from tlfast.data.sources import Skipped
from tlfast.run_folder import load_model_run  # noqa: F401  (public here too)
from tlfast.run_folder import model_image_size

log = logging.getLogger("tlfast")
DEFAULT_RESIZE = config.DEFAULT_RESIZE


def _is_listed(name):
    return not name.startswith(".")


def list_image_files(images):
    """Expands a folder (recursively), a glob pattern or a file to file paths.

    Every file is listed, whatever its extension, so that non-images are
    reported by the scan rather than silently left out. Hidden files
    (".name") are not listed.

    Args:
      images: A folder, a glob pattern (`**` recurses) or one file.

    Returns:
      Sorted file paths (joined onto `images`, so relative stays relative).

    Raises:
      FileNotFoundError: Nothing matches.
      ValueError: The folder holds no files.
    """
    images = os.path.expanduser(os.fspath(images))
    if os.path.isfile(images):
        return [images]
    if os.path.isdir(images):
        paths = []
        for dirpath, dirnames, filenames in os.walk(images):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            paths += [os.path.join(dirpath, n) for n in filenames if _is_listed(n)]
        if not paths:
            raise ValueError(
                f"The folder '{images}' holds no files to predict. Pass a "
                f"folder of images, a glob such as '{images}/*.jpg', or a file. "
                f"Received: images={images!r}")
        return sorted(paths)
    paths = [p for p in glob.glob(images, recursive=True)
             if os.path.isfile(p) and _is_listed(os.path.basename(p))]
    if not paths:
        raise FileNotFoundError(
            f"No files match '{images}'. Pass an existing folder, a glob "
            f"pattern such as 'photos/*.jpg', or a file. Received: images={images!r}")
    return sorted(paths)


def iter_batches(entries, image_size, resize, batch_size):
    """Decodes files in batches with the training pipeline's decode path.

    Args:
      entries: `FileEntry`s that passed the scan.
      image_size: Output side S.
      resize: One of `pipeline.RESIZE_MODES`.
      batch_size: Images per batch.

    Yields:
      (images uint8 [b, S, S, 3], positions int64 [b]): positions index
      `entries`. A file that stops decoding after the scan (changed on disk)
      is dropped by the pipeline, so its position is missing; callers must
      use the positions, not count.
    """
    # The label carries the position through `files_dataset`, which drops
    # files that fail to decode instead of failing the whole run.
    indexed = [dataclasses.replace(e, label=i) for i, e in enumerate(entries)]
    ds = pipeline.files_dataset(indexed, image_size, resize)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    for batch in ds.as_numpy_iterator():
        yield batch["image"], batch["label"].astype(np.int64)


def predict_entries(model, entries, *, resize=DEFAULT_RESIZE, batch_size=32):
    """Class probabilities for scanned files.

    Args:
      model: uint8 [B, S, S, 3] -> float [B, C] probabilities.
      entries: `FileEntry`s that passed the scan.
      resize: How images are made square, as in training.
      batch_size: Images per forward pass.

    Returns:
      (probs float32 [N, C], positions int64 [N]) for the N <= len(entries)
      files that decoded; `positions` index `entries`, ascending.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    size = model_image_size(model)
    probs, positions = [], []
    for images, index in iter_batches(entries, size, resize, batch_size):
        probs.append(np.asarray(model.predict_on_batch(images), np.float32))
        positions.append(index)
    if not probs:
        return (np.zeros((0, model.output_shape[-1]), np.float32),
                np.zeros((0,), np.int64))
    return np.concatenate(probs), np.concatenate(positions)


def lost_in_decoding(entries, positions):
    """`Skipped` for entries whose position is missing from `positions`."""
    kept = set(positions.tolist())
    return [Skipped(e.path, "could not be decoded when predicting (changed "
                    "on disk since the scan?)")
            for i, e in enumerate(entries) if i not in kept]


def check_top_k(top_k, num_classes):
    """min(top_k, num_classes), or ValueError for top_k < 1."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1. Received: top_k={top_k!r}")
    return min(int(top_k), num_classes)


def predict_images(model, paths, class_names, *, top_k=3, batch_size=32,
                   resize=DEFAULT_RESIZE, skip_placeholders=True,
                   threshold=None):
    """Top-k predictions for image files.

    Args:
      model: uint8 [B, S, S, 3] -> float [B, C] probabilities (e.g.
        `load_model_run(...).model`).
      paths: Image file paths (see `list_image_files`).
      class_names: C names, in the model's output order.
      top_k: Labels per row; capped at C.
      batch_size: Images per forward pass.
      resize: "resize", "crop" or "pad": use the run's (`ModelRun.resize`).
      skip_placeholders: Skip blank / "image not found" graphics, as
        training does.
      threshold: Multi-label models: rows also get "labels", every label
        whose probability reaches this (space-separated, best first).

    Returns:
      (rows, skipped). rows: one dict per usable file, in input order, with
      "path", ["labels",] then "label_1", "prob_1", ..., "label_k", "prob_k" (prob a
      float in [0, 1], best first). skipped: a `Skipped(path, reason)` per
      file that is not a usable image; these have no row.

    Raises:
      ValueError: Bad top_k / batch_size / resize, or `class_names` that do
        not match the model's outputs.
    """
    num_classes = model.output_shape[-1]
    if len(class_names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} outputs but {len(class_names)} class "
            f"names were given. Received: class_names={list(class_names)}")
    k = check_top_k(top_k, num_classes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size!r}")
    if resize not in pipeline.RESIZE_MODES:
        raise ValueError(f"resize must be one of {pipeline.RESIZE_MODES}. "
                         f"Received: resize={resize!r}")
    paths = [os.fspath(p) for p in paths]
    misnamed = [Skipped(p, sources.NOT_UTF8) for p in paths
                if not sources.is_utf8(p)]
    entries = [FileEntry(p, p, 0) for p in paths if sources.is_utf8(p)]
    result = scan_lib.scan_files(entries, skip_placeholders=skip_placeholders)
    usable = list(result.usable)
    probs, positions = predict_entries(model, usable, resize=resize,
                                       batch_size=batch_size)
    skipped = (misnamed + list(result.skipped)
               + lost_in_decoding(usable, positions))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    rows = []
    for p, best, position in zip(probs, order, positions):
        row = {"path": usable[position].path}
        if threshold is not None:
            row["labels"] = " ".join(
                multilabel.labels_above(p[None], class_names, threshold)[0])
        for rank, c in enumerate(best, start=1):
            row[f"label_{rank}"] = class_names[c]
            row[f"prob_{rank}"] = float(p[c])
        rows.append(row)
    return rows, skipped


def write_predictions_csv(path, rows, top_k):
    """Writes rows from `predict_images` (path, label_1, prob_1, ...) as CSV.

    Probabilities are written with 6 decimals. The header is written even
    for no rows.
    """
    rows = list(rows)
    labels = ["labels"] if rows and "labels" in rows[0] else []
    fields = ["path", *labels] + [f"{kind}_{r}" for r in range(1, top_k + 1)
                                  for kind in ("label", "prob")]
    # Written beside, then renamed: an interrupted write never leaves a
    # truncated file (or a truncated copy of the previous one).
    def cell(row, key):
        value = row.get(key, "")
        return f"{value:.6f}" if isinstance(value, float) else value

    atomic.write_csv(path, fields, ([cell(row, key) for key in fields]
                                    for row in rows))


def write_skipped_csv(path, skipped):
    """Writes `Skipped` files as CSV (path, reason)."""
    atomic.write_csv(path, ["path", "reason"],
                     ((s.path, s.reason) for s in skipped))


def threshold_of(run):
    """A multi-label run's decision threshold (its `RunRecord`), else None."""
    if not run.setting("multi_label", False):
        return None
    return float((run.resolved or {}).get("multi_label_threshold", 0.5))


def run_prediction(config):
    """`tlfast-predict`: top-k predictions of a run's model, as CSV.

    Writes `config.output` (one row per usable image) and, when files were
    skipped, `<output>.skipped.csv` with their reasons (a stale one from an
    earlier call is removed). The run's resize mode and placeholder rule
    apply unless `config` overrides them.

    Args:
      config: A `tlfast.config.PredictConfig`.

    Returns:
      (rows, skipped, skipped_csv or None); see `predict_images`.

    Raises:
      ValueError: No file is a usable image.
    """
    progress.ensure_visible()
    paths = list_image_files(config.images)
    run = load_model_run(config.model)
    skip = config.skip_placeholders
    if skip is None:
        skip = run.run.setting("skip_placeholders", True)
    rows, skipped = predict_images(
        run.model, paths, run.class_names, top_k=config.top_k,
        batch_size=config.batch_size, resize=config.resize or run.resize,
        skip_placeholders=skip, threshold=threshold_of(run.run))
    for item in skipped:
        log.warning("skipped: %s: %s", item.path, item.reason)
    if not rows:
        raise ValueError(
            f"None of the {len(paths)} file(s) from '{config.images}' is a "
            "usable image (reasons above). Received: "
            f"images={config.images!r}")
    write_predictions_csv(config.output, rows,
                          check_top_k(config.top_k, len(run.class_names)))
    skipped_path = config.output + ".skipped.csv"
    if skipped:
        write_skipped_csv(skipped_path, skipped)
    elif os.path.exists(skipped_path):
        os.remove(skipped_path)  # From an earlier run; now stale.
    return rows, skipped, skipped_path if skipped else None
