r"""Throughput benchmarks: the model ceiling, tlfast's stages and the seed recipe.

    python benchmarks/run.py --data_dir=../shared/assets/datasets/hymenoptera \
        --backbones=vgg16,resnet50,mobilenet_v2,efficientnet_b0 \
        --modes=forward,extract,head,finetune --weights=none --max_images=256

Model modes (one row per backbone x precision):
  forward          frozen backbone on uint8 batches already in memory, through
                   the compiled `predict_on_batch` path: the model ceiling.
  extract          tlfast's feature extraction from the pixel pipeline (read
                   the prepared TFDS records, decode, resize, batch, forward,
                   write the feature cache), cold: a fresh cache folder each
                   time. extract / forward near 1 means the input side keeps
                   up with the model.
  head             head training on cached (synthetic) features:
                   `tlfast.head.train_head`, --head_examples x feature_dim,
                   --head_epochs epochs, batch --head_batch_size.
  finetune         end-to-end training steps with the top block unfrozen, on
                   uint8 batches in memory (augmentation included, as in
                   tlfast's fine-tuning).
Recipe modes (one row per backbone x precision, wall seconds):
  seed_recipe      the seed recipe: ImageDataGenerator + flow_from_directory
                   -> frozen keras.applications backbone -> Flatten ->
                   Dense(128) -> Dropout -> softmax, `fit` for --epochs.
  tlfast_recipe    `python -m tlfast.train` on the same data, backbone and
                   epochs: a cold cache, then the same cache again (warm).
Input modes (backbone-independent, --repeats runs, median):
  bare_decode      plain tf.data read + decode + resize + batch of the loose
                   files: the decode ceiling.
  pipeline         tlfast's pipeline, first epoch (read the prepared records,
                   decode, fill the cache).
  pipeline_cached  the same pipeline, a later epoch (served from the cache).
  idg              Keras `ImageDataGenerator.flow_from_directory` with the
                   seed recipe's augmentation, one epoch.

tlfast's modes read --data_dir as `tlfast-train` does, through the
`tlfast_image_folder` TFDS builder (prepared once under --cache_dir, or the
run's scratch folder, and reused while the folder is unchanged); the
baselines read the loose files. See benchmarks/inputs.py.

Every timed region is warmed up first (the first call's time, compilation or
tracing included, is reported as `compile_seconds`) and reads its results
back. Files are read once before timing so that no mode pays for a cold page
cache. Rows are flat JSON lines, appended to --output as they are made; an
out-of-memory failure becomes an `{"error": ...}` row instead of a crash.
With --model_repeats=N each model mode runs N times and keeps its fastest run
(the least disturbed on a shared machine); a backbone's model modes run back
to back, so that the extract / forward ratio compares like with like.

The model side runs on whatever Keras backend is selected (KERAS_BACKEND=jax
or tensorflow); tf.data stays the input pipeline and batches reach the model
as NumPy arrays.
"""

import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tlfast  # noqa: E402
from tlfast import backbones  # noqa: E402
from tlfast import features as features_lib  # noqa: E402
from tlfast import head as head_lib  # noqa: E402
from tlfast import model as model_lib  # noqa: E402
from tlfast.data import augment as augment_lib  # noqa: E402
from tlfast.training import TrainConfig  # noqa: E402

import inputs  # noqa: E402
from report import ALL_MODES  # noqa: E402
from report import INPUT_MODES  # noqa: E402
from report import MODEL_MODES  # noqa: E402
from report import RECIPE_MODES  # noqa: E402
from report import format_table  # noqa: E402
from report import plot  # noqa: E402


FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Image folder (class sub-folders, or "
                    "train/validation splits of them). Needed by extract, "
                    "the recipes and the input modes.")
flags.DEFINE_list("backbones", ["mobilenet_v2"], "Backbone registry names, "
                  "comma separated (see tlfast.list_backbones()).")
flags.DEFINE_list("modes", ["forward", "extract", "head", "finetune"],
                  f"Modes to run, comma separated: {', '.join(ALL_MODES)}.")
flags.DEFINE_list("precision", ["float32"], "Keras dtype policies, comma "
                  "separated, e.g. float32,mixed_bfloat16.")
flags.DEFINE_string("weights", "none", "imagenet | none | path to a weights "
                    "file. Throughput does not depend on the values.")
flags.DEFINE_integer("batch_size", 32, "Batch size (the head has its own).")
flags.DEFINE_integer("image_size", None, "Square image side (default: each "
                     "backbone's; 224 for the input modes).")
flags.DEFINE_integer("max_images", None, "Images per model/input mode (a "
                     "smaller folder is cycled); default: the folder's "
                     "count, or 256 without --data_dir.")
flags.DEFINE_integer("epochs", 10, "Epochs for seed_recipe and tlfast_recipe.")
flags.DEFINE_integer("head_examples", 20000, "Synthetic feature vectors for "
                     "the head mode.")
flags.DEFINE_integer("head_epochs", 10, "Epochs for the head mode.")
flags.DEFINE_integer("head_batch_size", TrainConfig.head_batch_size,
                     "Batch size for the head mode.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps before forward and "
                     "finetune (the first one is compile_seconds).")
flags.DEFINE_integer("repeats", 3, "Timed runs per input mode; the median "
                     "is kept.")
flags.DEFINE_integer("model_repeats", 1, "Timed runs per model mode; the "
                     "fastest is kept (the least disturbed by other processes "
                     "on a shared machine), all are listed in the row.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "XLA for the TensorFlow backend's compiled functions (auto: "
                  "Keras' choice, off on CPU). JAX always compiles with XLA.")
flags.DEFINE_string("cache_dir", None, "tlfast scan cache for the input "
                    "listing; default: a temporary folder. Feature caches are "
                    "always fresh temporary folders.")
flags.DEFINE_string("output", None, "Append result rows (JSON lines) here.")
flags.DEFINE_string("table", None, "Also write the printed table here.")
flags.DEFINE_string("plot", None, "Folder for one PNG bar chart per mode "
                    "(both recipes in recipes.png).")
flags.DEFINE_string("from_rows", None, "Measure nothing: print the table "
                    "(and --plot) of the rows in this JSON lines file.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the modes need from the flags (the modes never read FLAGS)."""

    data_dir: str = None
    weights: str = "none"
    batch_size: int = 32
    image_size: int = None
    max_images: int = None
    epochs: int = 10
    head_examples: int = 20000
    head_epochs: int = 10
    head_batch_size: int = 256
    warmup_steps: int = 2
    repeats: int = 3
    model_repeats: int = 1
    jit_compile: str = "auto"
    cache_dir: str = None
    num_classes: int = 10  # Synthetic labels for head and finetune.
    resize: str = TrainConfig.resize


class Job:
    """One (backbone, precision) cell: lazily built models and data.

    Args:
      settings: `Settings`.
      workdir: Scratch folder for this run.
      backbone: Registry name, or None for the input modes.
      precision: Keras dtype policy name, or None for the input modes.
      rows: Rows made so far (the recipes look up the seed's time).
    """

    def __init__(self, settings, workdir, backbone=None, precision=None,
                 rows=()):
        self.settings = settings
        self.workdir = workdir
        self.backbone = backbone
        self.precision = precision
        self.rows = rows
        self.spec = backbones.get_backbone_spec(backbone) if backbone else None
        if settings.image_size:
            self.image_size = settings.image_size
        else:
            self.image_size = self.spec.default_size if self.spec else 224
        self._backbone_model = None
        self._entries = self._source = None

    def backbone_model(self):
        """The frozen `create_backbone` model, built once (under the policy)."""
        if self._backbone_model is None:
            self._backbone_model = backbones.create_backbone(
                self.backbone, self.settings.weights, self.image_size)
        return self._backbone_model

    def release(self):
        """Drops the models (memory for the next backbone)."""
        self._backbone_model = None
        keras.backend.clear_session()
        gc.collect()

    def entries(self):
        """The loose files (for the baselines), cycled to --max_images."""
        if self._entries is None:
            self._entries = inputs.load_entries(self.settings, self.workdir)
        return self._entries

    def prepared_source(self):
        """The folder through tlfast's TFDS builder, cycled to --max_images."""
        if self._source is None:
            self._source = inputs.PreparedSource(self.settings, self.workdir)
        return self._source

    def num_images(self):
        if self.settings.max_images:
            return self.settings.max_images
        return len(self.prepared_source()) if self.settings.data_dir else 256

    def set_jit_compile(self, model):
        """Applies --jit_compile; returns what the model will use."""
        if self.settings.jit_compile != "auto":
            model.jit_compile = self.settings.jit_compile == "true"
        return bool(model.jit_compile)


# ---------------------------------------------------------------- statistics


def step_stats(step_seconds, images, seconds=None):
    """Throughput fields from per-step wall times (seconds)."""
    seconds = sum(step_seconds) if seconds is None else seconds
    row = {"images": int(images), "seconds": seconds,
           "images_per_sec": images / seconds if seconds > 0 else 0.0}
    if step_seconds:
        ms = np.asarray(step_seconds) * 1000
        row.update(steps=len(ms), median_step_ms=float(np.median(ms)),
                   p90_step_ms=float(np.percentile(ms, 90)))
    return row


def _uint8_batches(job, count):
    """A few distinct random uint8 batches, reused cyclically (content does
    not change the compute, and a small pool keeps memory flat)."""
    rng = np.random.default_rng(0)
    shape = (job.settings.batch_size, job.image_size, job.image_size, 3)
    return [rng.integers(0, 256, shape, dtype=np.uint8)
            for _ in range(min(count, 4))]


def _full_batches(job):
    """Steps of full batches covering `num_images` (partial batches would
    recompile under JAX inside the timed region)."""
    return max(1, job.num_images() // job.settings.batch_size)


# ---------------------------------------------------------------- model modes


def forward(job):
    """The frozen backbone alone, on uint8 batches in memory."""
    model = model_lib.build_feature_model(job.backbone_model())
    jit = job.set_jit_compile(model)
    steps = _full_batches(job)
    pool = _uint8_batches(job, steps)
    start = time.perf_counter()
    np.asarray(model.predict_on_batch(pool[0]))
    compile_seconds = time.perf_counter() - start
    for i in range(1, job.settings.warmup_steps):
        np.asarray(model.predict_on_batch(pool[i % len(pool)]))
    times = []
    start = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        np.asarray(model.predict_on_batch(pool[i % len(pool)]))
        times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    return {**step_stats(times, steps * job.settings.batch_size, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit}


class _StepTimer:
    """Wraps a model's `predict_on_batch`, recording when each batch is done.

    The gaps between completions are the extraction's step times: input
    waits included, which is what the ratio to `forward` is about.
    """

    def __init__(self, model):
        self.model = model
        self.done = []

    def predict_on_batch(self, x):
        out = np.asarray(self.model.predict_on_batch(x))
        self.done.append(time.perf_counter())
        return out


def _extract_once(job, model, count, cache_dir):
    """`extract_features` as `tlfast.extraction._extract` runs it, over the
    first `count` prepared examples; returns (seconds, step seconds)."""
    size, resize, batch = job.image_size, job.settings.resize, job.settings.batch_size
    key = features_lib.FeatureKey(
        backbone=job.backbone, weights="bench", image_size=size, resize=resize,
        preprocessing=job.spec.preprocessing, precision=job.precision)
    cache = features_lib.FeatureCache(cache_dir, key)
    source = job.prepared_source()

    def make_dataset(indices):
        return source.batched(indices, size, resize, batch)

    timer = _StepTimer(model)
    start = time.perf_counter()
    _, stats = features_lib.extract_features(source.ids[:count], make_dataset,
                                             timer, cache)
    seconds = time.perf_counter() - start
    if stats.forwarded != count:
        raise RuntimeError(f"Expected a cold extraction of {count} images; "
                           f"{stats.forwarded} were forwarded.")
    marks = [start] + timer.done
    return seconds, [b - a for a, b in zip(marks, marks[1:])]


def extract(job):
    """tlfast's cold feature extraction from the prepared folder."""
    model = model_lib.build_feature_model(job.backbone_model())
    jit = job.set_jit_compile(model)
    count = min(job.num_images(), len(job.prepared_source()))
    batch = job.settings.batch_size
    # Compile for both batch shapes the run will see (full and remainder).
    start = time.perf_counter()
    for n in sorted({batch, count % batch} - {0}):
        np.asarray(model.predict_on_batch(
            np.zeros((n, job.image_size, job.image_size, 3), np.uint8)))
    compile_seconds = time.perf_counter() - start
    # Warms tf.data's functions and the decoder on a throw-away cache.
    _extract_once(job, model, min(batch, count),
                  tempfile.mkdtemp(dir=job.workdir, prefix="warm-"))
    cache_dir = tempfile.mkdtemp(dir=job.workdir, prefix="features-")
    try:
        seconds, times = _extract_once(job, model, count, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {**step_stats(times, count, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit,
            "resize": job.settings.resize}


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def head(job):
    """`train_head` on synthetic features; compile cost is in the first epoch."""
    s = job.settings
    rng = np.random.default_rng(0)
    dim = job.spec.feature_dim
    x = rng.standard_normal((s.head_examples, dim), dtype=np.float32)
    y = rng.integers(0, s.num_classes, s.head_examples).astype(np.int32)
    config = head_lib.HeadConfig(epochs=s.head_epochs,
                                 batch_size=s.head_batch_size, patience=0)
    model = head_lib.build_head(dim, s.num_classes, config)
    timer = _EpochTimer()
    start = time.perf_counter()
    head_lib.train_head(model, (x, y), None, config, callbacks=[timer])
    seconds = time.perf_counter() - start
    steps = -(-s.head_examples // s.head_batch_size)
    steady = timer.seconds[1:] or timer.seconds
    # Per-step times are epoch means: train_head fires no batch callbacks.
    times = [t / steps for t in steady for _ in range(steps)]
    stats = step_stats(times, s.head_examples * len(steady), sum(steady))
    # seconds and images_per_sec cover the whole call (compilation too), as
    # a user sees it; steady_images_per_sec leaves out the first epoch.
    images = s.head_examples * len(timer.seconds)
    return {**stats, "images": images, "seconds": seconds,
            "images_per_sec": images / seconds,
            "steady_images_per_sec": stats["images_per_sec"],
            "epochs": len(timer.seconds), "examples": s.head_examples,
            "compile_seconds": max(timer.seconds[0] - statistics.median(steady), 0.0),
            "feature_dim": dim, "batch_size": s.head_batch_size,
            "jit_compile": bool(model.jit_compile)}


def finetune(job):
    """Training steps with the top block unfrozen, augmentation included."""
    s = job.settings
    backbone_model = job.backbone_model()
    try:
        backbones.unfreeze_top_blocks(backbone_model, job.spec, 1)
        head = head_lib.build_head(job.spec.feature_dim, s.num_classes)
        augmentation = augment_lib.make_augmentation(TrainConfig.augment, seed=0)
        classifier = model_lib.build_classifier(backbone_model, head, augmentation)
        head_lib.compile_classifier(classifier, TrainConfig.fine_tune_learning_rate)
        jit = job.set_jit_compile(classifier)
        steps = _full_batches(job)
        pool = _uint8_batches(job, steps)
        labels = np.random.default_rng(1).integers(
            0, s.num_classes, s.batch_size).astype(np.int32)
        start = time.perf_counter()
        classifier.train_on_batch(pool[0], labels, return_dict=True)
        compile_seconds = time.perf_counter() - start
        for i in range(1, s.warmup_steps):
            classifier.train_on_batch(pool[i % len(pool)], labels)
        times = []
        start = time.perf_counter()
        for i in range(steps):
            t = time.perf_counter()
            # Returns Python floats: the step has finished.
            classifier.train_on_batch(pool[i % len(pool)], labels, return_dict=True)
            times.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    finally:
        backbones.unfreeze_top_blocks(backbone_model, job.spec, 0)
    return {**step_stats(times, steps * s.batch_size, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit,
            "augment": TrainConfig.augment}


# --------------------------------------------------------------- recipe modes


def _prepared(job):
    """The split tlfast.train makes, so both recipes see the same files."""
    return tlfast.prepare_folder(
        job.settings.data_dir, validation_split=TrainConfig.validation_split,
        seed=TrainConfig.seed, cache_dir=os.path.join(job.workdir, "scan"))


def _link_split(root, entries, class_names):
    """flow_from_directory reads a folder: link exactly the given files."""
    for name in class_names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for i, entry in enumerate(entries):
        ext = os.path.splitext(entry.path)[1]
        os.symlink(os.path.abspath(entry.path), os.path.join(
            root, class_names[entry.label], f"{i:06d}{ext}"))


def seed_recipe(job):
    """The seed tutorial, as it is (its rescale=1/255 input included)."""
    s = job.settings
    data = _prepared(job)
    root = tempfile.mkdtemp(dir=job.workdir, prefix="seed-")
    _link_split(os.path.join(root, "train"), data.train, data.class_names)
    _link_split(os.path.join(root, "val"), data.validation, data.class_names)
    size = (job.image_size, job.image_size)
    start = time.perf_counter()
    # The Keras 3 home of the legacy generator is the tf.keras namespace.
    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    train_flow = ImageDataGenerator(
        rescale=1 / 255, rotation_range=20, width_shift_range=0.2,
        height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
        horizontal_flip=True).flow_from_directory(
            os.path.join(root, "train"), target_size=size,
            batch_size=s.batch_size, class_mode="categorical", seed=0)
    val_flow = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        os.path.join(root, "val"), target_size=size, batch_size=s.batch_size,
        class_mode="categorical", shuffle=False)
    weights = None if s.weights in (None, "none") else s.weights
    base = getattr(keras.applications, job.spec.constructor)(
        include_top=False, weights=weights, input_shape=(*size, 3),
        **dict(job.spec.kwargs))
    base.trainable = False
    model = keras.Sequential([
        base,
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(len(data.class_names), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    timer = _EpochTimer()
    history = model.fit(train_flow, epochs=s.epochs, validation_data=val_flow,
                        callbacks=[timer], verbose=2)
    seconds = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    images = len(data.train) * s.epochs
    return {"images": images, "seconds": seconds,
            "images_per_sec": images / seconds,
            "epoch_seconds": [round(t, 2) for t in timer.seconds],
            "val_accuracy": float(history.history["val_accuracy"][-1]),
            "num_train": len(data.train), "num_val": len(data.validation),
            "epochs": s.epochs}


def _train_command(job, output_dir, cache_dir):
    s = job.settings
    command = [sys.executable, "-m", "tlfast.train", f"--data_dir={s.data_dir}",
               f"--output_dir={output_dir}", f"--cache_dir={cache_dir}",
               f"--backbone={job.backbone}", f"--weights={s.weights}",
               f"--epochs={s.epochs}", f"--batch_size={s.batch_size}",
               f"--precision={job.precision}"]
    if s.image_size:
        command.append(f"--image_size={s.image_size}")
    return command


def _run_train(job, output_dir, cache_dir):
    """Runs the tlfast-train script; returns (wall seconds, metrics dict)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    command = _train_command(job, output_dir, cache_dir)
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    with open(output_dir + ".log", "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode:
        tail = (done.stdout + done.stderr)[-3000:]
        if "RESOURCE_EXHAUSTED" in tail or "MemoryError" in tail:
            raise MemoryError(f"tlfast.train ran out of memory: {tail[-500:]}")
        raise RuntimeError(f"tlfast.train failed (exit {done.returncode}):\n{tail}")
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return seconds, json.load(f)


def tlfast_recipe(job):
    """Two rows: a cold cache, then warm (same cache folder)."""
    s = job.settings
    cache_dir = tempfile.mkdtemp(dir=job.workdir, prefix="tlfast-cache-")
    seed = next((r for r in job.rows if r.get("mode") == "seed_recipe"
                 and r.get("backbone") == job.backbone
                 and r.get("precision") == job.precision and "error" not in r),
                None)
    rows = []
    for cache in ("cold", "warm"):
        output_dir = os.path.join(job.workdir, f"tlfast-{job.backbone}-{cache}")
        seconds, metrics = _run_train(job, output_dir, cache_dir)
        images = metrics["num_train"] * s.epochs
        rows.append({
            "cache": cache, "images": images, "seconds": seconds,
            "images_per_sec": images / seconds,
            "speedup_vs_seed": seed["seconds"] / seconds if seed else None,
            "val_accuracy": metrics["val_accuracy"],
            "feature_cache": metrics["feature_cache"],
            "timings_s": json.dumps(metrics["timings_s"], sort_keys=True),
            "num_train": metrics["num_train"], "num_val": metrics["num_val"],
            "epochs": s.epochs})
    shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


MODES = {
    "forward": forward,
    "extract": extract,
    "head": head,
    "finetune": finetune,
    "seed_recipe": seed_recipe,
    "tlfast_recipe": tlfast_recipe,
    **inputs.INPUT_MODES,
}


# ------------------------------------------------------------------- running


def _git_commit():
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _device():
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{device.device_kind}"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"gpu:{details.get('device_name', gpus[0].name)}"
    return "cpu"


def environment():
    """Fields common to every row."""
    backend = keras.backend.backend()
    jax_version = ""
    if backend == "jax":
        import jax

        jax_version = jax.__version__
    return {
        "backend": backend,
        # JAX compiles every step with XLA; TF's is per model (jit_compile).
        "xla": "always" if backend == "jax" else f"jit_compile={FLAGS.jit_compile}",
        "device": _device(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "jax": jax_version,
        "tlfast": tlfast.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


def is_out_of_memory(error):
    """Whether `error` is an out-of-memory failure (TF, JAX/XLA or Python)."""
    if isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError)):
        return True
    # jaxlib's XlaRuntimeError has no stable import path across versions.
    return "RESOURCE_EXHAUSTED" in str(error)


def run_job(mode, job, common):
    """Runs one mode for one job; returns its rows (an error row on OOM).

    Args:
      mode: A key of `MODES`.
      job: A `Job`.
      common: Fields for every row (`environment()`).

    Returns:
      A list of flat dict rows.
    """
    base = {"backbone": job.backbone or "", "mode": mode,
            "precision": job.precision or "", "batch_size": job.settings.batch_size,
            "image_size": job.image_size, "weights": job.settings.weights,
            "load_avg_1m": round(os.getloadavg()[0], 2), **common}
    if job.precision:
        keras.mixed_precision.set_global_policy(job.precision)
    try:
        if mode in MODEL_MODES and job.settings.model_repeats > 1:
            # On a shared machine other processes come and go: the fastest
            # run is the least disturbed one.
            runs = [MODES[mode](job) for _ in range(job.settings.model_repeats)]
            result = dict(max(runs, key=lambda r: r["images_per_sec"]),
                          repeats=len(runs),
                          runs_images_per_sec=[r["images_per_sec"] for r in runs])
        else:
            result = MODES[mode](job)
    except Exception as e:  # Only out-of-memory is kept; the rest is a bug.
        if not is_out_of_memory(e):
            raise
        keras.backend.clear_session()
        gc.collect()
        return [{**base, "images_per_sec": 0.0,
                 "error": f"{type(e).__name__}: {str(e)[:500]}"}]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    results = result if isinstance(result, list) else [result]
    return [{**base, **r} for r in results]


def settings_from_flags():
    return Settings(
        data_dir=FLAGS.data_dir, weights=FLAGS.weights,
        batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
        max_images=FLAGS.max_images, epochs=FLAGS.epochs,
        head_examples=FLAGS.head_examples, head_epochs=FLAGS.head_epochs,
        head_batch_size=FLAGS.head_batch_size, warmup_steps=FLAGS.warmup_steps,
        repeats=FLAGS.repeats, model_repeats=FLAGS.model_repeats,
        jit_compile=FLAGS.jit_compile,
        cache_dir=FLAGS.cache_dir)


def _check_flags():
    unknown = [m for m in FLAGS.modes if m not in MODES]
    if unknown:
        raise app.UsageError(f"Unknown --modes {unknown}; choose from "
                             f"{', '.join(ALL_MODES)}.")
    for name in FLAGS.backbones:
        try:
            backbones.get_backbone_spec(name)
        except ValueError as e:
            raise app.UsageError(str(e))
    for policy in FLAGS.precision:
        try:
            keras.mixed_precision.Policy(policy)
        except ValueError as e:
            raise app.UsageError(f"Bad --precision {policy!r}: {e}")
    needs_data = [m for m in FLAGS.modes
                  if m in ("extract",) + RECIPE_MODES + INPUT_MODES]
    if needs_data and not FLAGS.data_dir:
        raise app.UsageError(f"--data_dir is required by --modes {needs_data}: "
                             "a folder of class sub-folders of images.")
    if min(FLAGS.batch_size, FLAGS.head_batch_size, FLAGS.epochs,
           FLAGS.head_epochs, FLAGS.head_examples, FLAGS.repeats,
           FLAGS.model_repeats, FLAGS.warmup_steps) < 1:
        raise app.UsageError("--batch_size, --head_batch_size, --epochs, "
                             "--head_epochs, --head_examples, --repeats, "
                             "--model_repeats and --warmup_steps must be >= 1.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.from_rows:
        with open(FLAGS.from_rows) as f:
            report([json.loads(line) for line in f if line.strip()])
        return
    _check_flags()
    if keras.backend.backend() == "jax":
        # tf.data only feeds NumPy to JAX: keep TensorFlow off any GPU so it
        # does not reserve the memory JAX needs.
        tf.config.set_visible_devices([], "GPU")
    settings = settings_from_flags()
    common = environment()
    modes = [m for m in ALL_MODES if m in FLAGS.modes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlfast-bench-") as workdir:
        jobs = []
        for backbone in FLAGS.backbones:
            for precision in FLAGS.precision:
                jobs.append(Job(settings, workdir, backbone, precision, rows))
        input_job = Job(settings, workdir, rows=rows)
        # One backbone's model modes run back to back, so that forward and
        # extract (whose ratio matters) see the same machine load; a job's
        # models are dropped before the next job's are built.
        schedule = [(mode, job) for job in jobs for mode in modes
                    if mode in MODEL_MODES]
        schedule += [(mode, job) for mode in modes if mode in RECIPE_MODES
                     for job in jobs]
        schedule += [(mode, input_job) for mode in modes if mode in INPUT_MODES]
        for i, (mode, job) in enumerate(schedule):
            print(f"[{mode}] {job.backbone or ''} {job.precision or ''}",
                  flush=True)
            new = run_job(mode, job, common)
            for row in new:
                print(json.dumps(row), flush=True)
                if FLAGS.output:
                    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)),
                                exist_ok=True)
                    with open(FLAGS.output, "a") as f:
                        f.write(json.dumps(row) + "\n")
            rows.extend(new)
            if all(job is not later for _, later in schedule[i + 1:]):
                job.release()
    report(rows)


def report(rows):
    """Prints the table; writes --table and --plot."""
    table = format_table(rows)
    print("\n" + table)
    if FLAGS.table:
        with open(FLAGS.table, "w") as f:
            f.write(table + "\n")
    if FLAGS.plot:
        for path in plot(rows, FLAGS.plot):
            print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
