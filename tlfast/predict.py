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

import contextlib
import csv
import dataclasses
import glob
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

# Registers tlfast's custom layers, which `load_model` needs.
from tlfast import atomic
from tlfast import backbones  # noqa: F401
from tlfast.data import augment  # noqa: F401
from tlfast.data import pipeline
from tlfast.data import scan as scan_lib
from tlfast.data import sources
from tlfast.data.sources import FileEntry
from tlfast.data.sources import Skipped

log = logging.getLogger("tlfast")
DEFAULT_RESIZE = "crop"


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """A trained model with what is needed to feed it.

    Attributes:
      model: The `keras.Model`, uint8 [B, S, S, 3] -> float32 [B, C].
      class_names: C names; output column i is `class_names[i]`.
      image_size: S, from the model's input shape.
      resize: How the run made images square ("resize", "crop" or "pad").
      run_dir: Folder of the model file.
      run: Contents of `run.json` beside the model, or {} when absent.
    """

    model: object
    class_names: tuple
    image_size: int
    resize: str
    run_dir: str
    run: dict


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"'{path}' is not valid JSON: {e}. Re-run training "
                         "or remove the file.") from e


def read_class_names(run_dir):
    """Class names of a run: `labels.txt`, else `metrics.json`'s class_names.

    Raises:
      FileNotFoundError: Neither file names the classes.
    """
    labels_path = os.path.join(run_dir, "labels.txt")
    if os.path.isfile(labels_path):
        # utf-8-sig: a labels.txt saved by a Windows editor starts with a BOM.
        with open(labels_path, encoding="utf-8-sig") as f:
            names = [line.rstrip("\r\n") for line in f]
        while names and not names[-1]:
            names.pop()
        return tuple(names)
    names = _read_json(os.path.join(run_dir, "metrics.json")).get("class_names")
    if names:
        return tuple(names)
    raise FileNotFoundError(
        f"No labels.txt (or metrics.json with class_names) beside the model in "
        f"'{run_dir}'. tlfast-train writes labels.txt next to model.keras: "
        "copy it there, one class name per line in output order.")


def model_image_size(model):
    """S of a model taking [B, S, S, 3] images.

    Raises:
      ValueError: The input is not square RGB images of a fixed size.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or not shape[1] or shape[1] != shape[2]:
        raise ValueError(
            "Expected a model taking square RGB images [batch, S, S, 3] of a "
            f"fixed size S (as tlfast-train writes). Received: input_shape={shape}")
    return int(shape[1])


def load_model_run(model_path):
    """Loads a model written by training, with its class names and resize mode.

    Args:
      model_path: `RUN/model.keras`, or the run folder holding it.

    Returns:
      A `ModelRun`.

    Raises:
      FileNotFoundError: No model file, or no class names beside it.
      ValueError: The file is not a loadable Keras model, or its output size
        differs from the number of class names.
    """
    path = os.path.expanduser(os.fspath(model_path))
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Model file not found: '{path}'. Pass the model.keras that "
            "tlfast-train wrote (--model=RUN/model.keras) or its run folder. "
            f"Received: model={os.fspath(model_path)!r}")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many kinds for a bad file.
        raise ValueError(
            f"Cannot load '{path}' as a Keras model: {type(e).__name__}: {e}. "
            "Expected a .keras file written by tlfast-train.") from e
    run_dir = os.path.dirname(os.path.abspath(path))
    class_names = read_class_names(run_dir)
    num_outputs = model.output_shape[-1]
    if num_outputs != len(class_names):
        raise ValueError(
            f"The model has {num_outputs} outputs but {len(class_names)} class "
            f"names were found beside it in '{run_dir}' (labels.txt). They must "
            f"match. Received: class_names={list(class_names)}")
    run = _read_json(os.path.join(run_dir, "run.json"))
    resize = (run.get("resolved", {}).get("resize")
              or run.get("config", {}).get("resize") or DEFAULT_RESIZE)
    return ModelRun(model, class_names, model_image_size(model), resize,
                    run_dir, run)


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
    indexed = [FileEntry(e.path, e.relpath, i) for i, e in enumerate(entries)]
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
                   resize=DEFAULT_RESIZE, skip_placeholders=True):
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

    Returns:
      (rows, skipped). rows: one dict per usable file, in input order, with
      "path", then "label_1", "prob_1", ..., "label_k", "prob_k" (prob a
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
    fields = ["path"] + [f"{kind}_{r}" for r in range(1, top_k + 1)
                         for kind in ("label", "prob")]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Written beside, then renamed: an interrupted write never leaves a
    # truncated file (or a truncated copy of the previous one).
    fd, tmp = atomic.mkstemp(directory)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: f"{value:.6f}" if key.startswith("prob_")
                                 else value for key, value in row.items()})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
