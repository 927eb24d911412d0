"""A run's folder: the one module that reads and writes its files.

`tlfast-train --output_dir=RUN` fills it; predict, evaluate, export and the
output reuse read it back through here, never by file name:

    RUN/
        model.keras          uint8 [B, S, S, 3] -> float32 [B, C]
        labels.txt           the C class names in output order, one a line
        run.json             "schema", settings ("config"), what they
                             resolved to ("resolved": backbone, image_size,
                             resize, augment, precision, replicas, ...),
                             versions, split, feature-cache keys; and what
                             lets an identical run reuse the outputs
                             ("run_key", "outputs", "feature_shards")
        metrics.json         results of the latest run (a reused one too)
        train.log            every log line of the latest tlfast-train run
        history.csv          per-epoch metrics, head then fine-tune
        split.csv            which file went where (`tlfast.data.split`)
        training_curves.png, evaluation.json, confusion_matrix.png,
        predictions.csv      (`tlfast.plots`, `tlfast.evaluate`)
        report.html          all of it on one page (`tlfast.report`)
        eval_<split>/        reports of `tlfast-evaluate` into the run
        export/              `tlfast.export`
        logs/                TensorBoard
        .tlfast-run.lock     one run at a time

run.json schema versions: 1 (no "schema" field; tlfast 0.1 up to ca7df94:
the resize mode only under "config"); 2 adds "schema" and
"resolved.resize". Readers accept both. Every write is atomic
(`tlfast.atomic`).
"""

import dataclasses
import json
import logging
import os
import re

from tlfast import atomic
from tlfast import locks
from tlfast.config import DEFAULT_RESIZE

log = logging.getLogger("tlfast")

SCHEMA_VERSION = 2
MODEL = "model.keras"
LABELS = "labels.txt"
RUN_INFO = "run.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
SPLIT = "split.csv"
CURVES = "training_curves.png"
LOG = "train.log"
LR_FIND = "lr_find.png"
EVALUATION = "evaluation.json"
LOCK = ".tlfast-run.lock"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """run.json, read back (either schema version).

    Attributes:
      raw: The whole file as a dict ({} when there is none).
    """

    raw: dict

    @property
    def schema(self):
        return int(self.raw.get("schema", 1)) if self.raw else None

    @property
    def config(self):
        """The run's `TrainConfig` fields, as a dict."""
        return self.raw.get("config") or {}

    @property
    def resolved(self):
        return self.raw.get("resolved") or {}

    def setting(self, name, default=None):
        """One `TrainConfig` field of the run, or `default`."""
        value = self.config.get(name)
        return default if value is None else value

    @property
    def resize(self):
        """How the run made images square."""
        return (self.resolved.get("resize") or self.setting("resize")
                or DEFAULT_RESIZE)


def _read_json(path, strict):
    """The JSON object at `path`; None when missing (or, unless strict, bad)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if not strict:
            return None
        raise ValueError(f"'{path}' is not valid JSON: {e}. Re-run training "
                         "or remove the file.") from e
    if not isinstance(data, dict):
        if not strict:
            return None
        raise ValueError(f"'{path}' does not hold a JSON object. Re-run "
                         "training or remove the file.")
    return data


class RunFolder:
    """The files of one run folder.

    Args:
      path: The folder (`--output_dir` of the run).
    """

    def __init__(self, path):
        self.path = os.path.expanduser(os.fspath(path))

    def file(self, name):
        """The path of one of the folder's files (a name above)."""
        return os.path.join(self.path, name)

    def lock(self, timeout=None):
        """One run at a time: two would mix their files, and run.json would
        vouch for files another run wrote. `timeout`: see `locks.lock`."""
        return locks.lock(self.file(LOCK), timeout=timeout, waiting_message=(
            f"Waiting for the other run writing to {self.path} to finish."))

    # --- Writing (each file atomically). ---

    def write_model(self, model):
        """Saves the classifier: a kill never leaves a torn model.keras."""
        with atomic.replacing(self.file(MODEL)) as tmp:
            model.save(tmp)

    def write_labels(self, class_names):
        atomic.write_text(self.file(LABELS), "\n".join(class_names) + "\n")

    def write_history(self, stages):
        """history.csv of [(stage, keras History.history dict), ...]."""
        rows = []
        for stage, history in stages:
            for epoch in range(len(next(iter(history.values()), []))):
                rows.append({"stage": stage, "epoch": epoch + 1,
                             **{k: float(v[epoch]) for k, v in history.items()}})
        fields = ["stage", "epoch"] + sorted({k for r in rows for k in r} -
                                             {"stage", "epoch"})
        atomic.write_csv(self.file(HISTORY), fields,
                         ([r.get(k, "") for k in fields] for r in rows))

    def write_split(self, splits, class_names):
        """split.csv of {split: [FileEntry]} (format: `tlfast.data.split`)."""
        from tlfast.data import split as split_lib

        split_lib.write_split(self.file(SPLIT), splits, class_names)

    def write_run_info(self, info):
        """run.json: `info` with the schema version."""
        atomic.write_json(self.file(RUN_INFO),
                          {**info, "schema": SCHEMA_VERSION})

    def write_metrics(self, metrics):
        atomic.write_json(self.file(METRICS), metrics)

    # --- Reading. ---

    def read_run_info(self, strict=True):
        """run.json as a `RunRecord` (empty when there is none).

        Args:
          strict: Raise ValueError for a malformed file; False treats it as
            missing (output reuse then trains anew).
        """
        return RunRecord(_read_json(self.file(RUN_INFO), strict) or {})

    def read_metrics(self, strict=True):
        """metrics.json as a dict, or None when there is none."""
        return _read_json(self.file(METRICS), strict)

    def read_evaluation(self):
        """evaluation.json (written by `tlfast.evaluate`) as a dict, or {}."""
        return _read_json(self.file(EVALUATION), strict=False) or {}

    def read_split(self):
        """{split: [(relpath, label)]} of split.csv, or {} without one."""
        from tlfast.data import split as split_lib

        if not os.path.isfile(self.file(SPLIT)):
            return {}
        return split_lib.read_split(self.file(SPLIT))

    def read_class_names(self):
        """The class names: labels.txt, else metrics.json's class_names.

        Raises:
          FileNotFoundError: Neither file names the classes.
        """
        path = self.file(LABELS)
        if os.path.isfile(path):
            # utf-8-sig: a labels.txt saved by a Windows editor starts with
            # a BOM.
            with open(path, encoding="utf-8-sig") as f:
                names = [line.rstrip("\r\n") for line in f]
            while names and not names[-1]:
                names.pop()
            return tuple(names)
        names = (self.read_metrics() or {}).get("class_names")
        if names:
            return tuple(names)
        raise FileNotFoundError(
            f"No labels.txt (or metrics.json with class_names) beside the "
            f"model in '{self.path}'. tlfast-train writes labels.txt next to "
            "model.keras: copy it there, one class name per line in output "
            "order.")


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """A trained model with what is needed to feed it.

    Attributes:
      model: The `keras.Model`, uint8 [B, S, S, 3] -> float32 [B, C].
      class_names: C names; output column i is `class_names[i]`.
      image_size: S, from the model's input shape.
      resize: How the run made images square ("resize", "crop" or "pad").
      run_dir: Folder of the model file.
      run: The run's `RunRecord` (empty without a run.json).
    """

    model: object
    class_names: tuple
    image_size: int
    resize: str
    run_dir: str
    run: RunRecord

    @property
    def folder(self):
        return RunFolder(self.run_dir)


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
    import keras

    from tlfast import model as _  # noqa: F401  (registers tlfast's layers)

    path = os.path.expanduser(os.fspath(model_path))
    if os.path.isdir(path):
        path = os.path.join(path, MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Model file not found: '{path}'. Pass the model.keras that "
            "tlfast-train wrote (--model=RUN/model.keras) or its run folder. "
            f"Received: model={os.fspath(model_path)!r}")
    check_loadable(path, keras.__version__)
    try:
        # safe_mode: a .keras file cannot run code (Lambda layers' pickled
        # functions are refused); tlfast writes none.
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many kinds for a bad file.
        raise ValueError(
            f"Cannot load '{path}' as a Keras model: {type(e).__name__}: {e}. "
            "Expected a .keras file written by tlfast-train.") from e
    folder = RunFolder(os.path.dirname(os.path.abspath(path)))
    class_names = folder.read_class_names()
    num_outputs = model.output_shape[-1]
    if num_outputs != len(class_names):
        raise ValueError(
            f"The model has {num_outputs} outputs but {len(class_names)} class "
            f"names were found beside it in '{folder.path}' (labels.txt). They "
            f"must match. Received: class_names={list(class_names)}")
    run = folder.read_run_info()
    return ModelRun(model, class_names, model_image_size(model), run.resize,
                    folder.path, run)


# Keras releases before 3.11.3 run code from crafted .keras files even in
# safe mode (CVE-2025-1550, -8747, -9906; -9905: .h5 ignores safe_mode).
SAFE_KERAS = (3, 11, 3)


def check_loadable(path, keras_version):
    """Refuses model files tlfast will not load.

    Only `.keras` archives load, with Keras' safe mode, on a Keras release
    without the known model-loading CVEs: legacy `.h5` / SavedModel files
    can hold code that runs on load. (Backbone weights may still come from
    `.h5` weights files: those load weights only.)

    Raises:
      ValueError: Another file kind, or a Keras older than 3.11.3.
    """
    if not path.endswith(".keras"):
        raise ValueError(
            f"Only .keras model files are loaded (a legacy .h5 or SavedModel "
            f"can run code when loaded): '{path}'. Pass the model.keras that "
            "tlfast-train wrote, or re-save a trusted model with "
            "model.save('model.keras').")
    release = tuple(int(p) for p in re.findall(r"\d+", keras_version)[:3])
    if release < SAFE_KERAS:
        raise ValueError(
            f"Keras {keras_version} can run code from a crafted model file "
            "even in safe mode; tlfast loads models only with Keras >= "
            f"{'.'.join(map(str, SAFE_KERAS))}: pip install -U keras.")


def load_model(model_path):
    """The `keras.Model` of a run (see `load_model_run`)."""
    return load_model_run(model_path).model


def split_entries(folder, data_dir=None):
    """{split: [FileEntry]} of a run's split.csv, for files still present.

    Args:
      folder: The `RunFolder`.
      data_dir: Where the run's images are now; default: run.json's.

    Returns:
      {} when the run has no split.csv or no data folder.

    Raises:
      FileNotFoundError: The data folder does not exist.
    """
    from tlfast.data.sources import FileEntry

    data_dir = data_dir or folder.read_run_info().setting("data_dir")
    split = folder.read_split()
    if not data_dir or not split:
        return {}
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"The run's data folder '{data_dir}' does not exist. Pass "
            "--data_dir=<where the training images are now>.")
    out = {}
    for name, items in split.items():
        entries = [FileEntry(os.path.join(data_dir, *rel.split("/")), rel, label)
                   for rel, label in items]
        out[name] = [e for e in entries if os.path.isfile(e.path)]
    return out
