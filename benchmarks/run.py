r"""Throughput benchmarks: the model ceiling, tlfast's stages and the seed recipe.

    python benchmarks/run.py --data_dir=../shared/assets/datasets/hymenoptera \
        --backbones=vgg16,resnet50,mobilenet_v2,efficientnet_b0 \
        --modes=forward,extract,head,finetune --weights=none --max_images=256

Model modes (one row per backbone x precision):
  forward          frozen backbone on uint8 batches already in memory, through
                   the compiled `predict_on_batch` path: the model ceiling.
  extract          tlfast's feature extraction from the pixel pipeline (decode,
                   resize, batch, forward, write the feature cache), cold: a
                   fresh cache folder each time. extract / forward near 1
                   means the input side keeps up with the model.
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
  bare_decode      plain tf.data read + decode + resize + batch: the decode
                   ceiling.
  pipeline         tlfast's pipeline, first epoch (decode + fill the cache).
  pipeline_cached  the same pipeline, a later epoch (served from the cache).
  idg              Keras `ImageDataGenerator.flow_from_directory` with the
                   seed recipe's augmentation, one epoch.

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
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tlfast  # noqa: E402
from tlfast import backbones  # noqa: E402
from tlfast import data as tld  # noqa: E402
from tlfast import features as features_lib  # noqa: E402
from tlfast import head as head_lib  # noqa: E402
from tlfast import model as model_lib  # noqa: E402
from tlfast.data import augment as augment_lib  # noqa: E402
from tlfast.data import pipeline as pipeline_lib  # noqa: E402
from tlfast.training import TrainConfig  # noqa: E402

MODEL_MODES = ("forward", "extract", "head", "finetune")
RECIPE_MODES = ("seed_recipe", "tlfast_recipe")
INPUT_MODES = ("bare_decode", "pipeline", "pipeline_cached", "idg")
# Execution order, whatever the order of --modes: each backbone's model modes,
# then the recipes (seed_recipe before tlfast_recipe, so that the speed-ups
# can go into the tlfast rows), then the input modes.
ALL_MODES = MODEL_MODES + RECIPE_MODES + INPUT_MODES

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
        self._entries = None

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
        if self._entries is None:
            self._entries = load_entries(self.settings, self.workdir)
        return self._entries

    def num_images(self):
        if self.settings.max_images:
            return self.settings.max_images
        return len(self.entries()) if self.settings.data_dir else 256

    def set_jit_compile(self, model):
        """Applies --jit_compile; returns what the model will use."""
        if self.settings.jit_compile != "auto":
            model.jit_compile = self.settings.jit_compile == "true"
        return bool(model.jit_compile)


def load_entries(settings, workdir):
    """Scanned, usable files, cycled to `max_images`; the page cache warmed."""
    if not settings.data_dir:
        raise ValueError("This mode reads images: pass --data_dir, a folder of "
                         "class sub-folders. Received: data_dir=None")
    folder = tld.list_image_folder(settings.data_dir)
    entries = [e for split in folder.splits.values() for e in split]
    cache_dir = settings.cache_dir or os.path.join(workdir, "scan")
    usable = list(tld.scan_files(entries, root=folder.root,
                                 cache_dir=cache_dir).usable)
    if settings.max_images:
        # A small folder is cycled to reach max_images, so that short timings
        # are not dominated by start-up.
        repeats = -(-settings.max_images // max(len(usable), 1))
        usable = (usable * repeats)[:settings.max_images]
    for entry in usable:  # No mode pays for disk reads.
        with open(entry.path, "rb") as f:
            f.read()
    return usable


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


def _extract_once(job, model, entries, cache_dir):
    """`extract_features` as `tlfast.training._extract` runs it; returns
    (seconds, step seconds)."""
    size, resize, batch = job.image_size, job.settings.resize, job.settings.batch_size
    key = features_lib.FeatureKey(
        backbone=job.backbone, weights="bench", image_size=size, resize=resize,
        preprocessing=job.spec.preprocessing, precision=job.precision)
    cache = features_lib.FeatureCache(cache_dir, key)
    # Cycled folders repeat files: the position makes each id unique.
    ids = [f"{i}|{features_lib.example_id(e)}" for i, e in enumerate(entries)]

    def make_dataset(indices):
        subset = [entries[i] for i in indices]
        ds = pipeline_lib.files_dataset(subset, size, resize)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    timer = _StepTimer(model)
    start = time.perf_counter()
    _, stats = features_lib.extract_features(ids, make_dataset, timer, cache)
    seconds = time.perf_counter() - start
    if stats.forwarded != len(entries):
        raise RuntimeError(f"Expected a cold extraction of {len(entries)} "
                           f"images; {stats.forwarded} were forwarded.")
    marks = [start] + timer.done
    return seconds, [b - a for a, b in zip(marks, marks[1:])]


def extract(job):
    """tlfast's cold feature extraction from files."""
    model = model_lib.build_feature_model(job.backbone_model())
    jit = job.set_jit_compile(model)
    entries = job.entries()[:job.num_images()]
    batch = job.settings.batch_size
    # Compile for both batch shapes the run will see (full and remainder).
    start = time.perf_counter()
    for n in sorted({batch, len(entries) % batch} - {0}):
        np.asarray(model.predict_on_batch(
            np.zeros((n, job.image_size, job.image_size, 3), np.uint8)))
    compile_seconds = time.perf_counter() - start
    # Warms tf.data's functions and the decoder on a throw-away cache.
    _extract_once(job, model, entries[:batch],
                  tempfile.mkdtemp(dir=job.workdir, prefix="warm-"))
    cache_dir = tempfile.mkdtemp(dir=job.workdir, prefix="features-")
    try:
        seconds, times = _extract_once(job, model, entries, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {**step_stats(times, len(entries), seconds),
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


# ---------------------------------------------------------------- input modes


def timed_epoch(ds):
    """Iterates one epoch; returns (images, seconds)."""
    start = time.perf_counter()
    images = 0
    for batch in ds:
        image = batch["image"] if isinstance(batch, dict) else batch
        images += int(image.shape[0])  # .shape of a produced tensor: read back.
    return images, time.perf_counter() - start


def _bare_decode(job):
    paths = [e.path for e in job.entries()]
    size = (job.image_size, job.image_size)

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return tf.image.resize(image, size)

    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(job.settings.batch_size).prefetch(tf.data.AUTOTUNE))
    return timed_epoch(ds)


def _pipeline_ds(job):
    config = tld.PipelineConfig(image_size=job.image_size,
                                batch_size=job.settings.batch_size,
                                resize=job.settings.resize, cache="memory")
    return tld.image_folder_dataset(job.entries(), config, training=True)


def _pipeline(job):
    return timed_epoch(_pipeline_ds(job))


def _pipeline_cached(job):
    ds = _pipeline_ds(job)
    timed_epoch(ds)  # Fills the cache.
    return timed_epoch(ds)


def _idg(job):
    """The seed recipe's input side: ImageDataGenerator + flow_from_directory."""
    entries = job.entries()
    with tempfile.TemporaryDirectory(dir=job.workdir) as tmp:
        for i, entry in enumerate(entries):
            class_dir = os.path.join(tmp, f"class_{entry.label}")
            os.makedirs(class_dir, exist_ok=True)
            ext = os.path.splitext(entry.path)[1]
            os.symlink(os.path.abspath(entry.path),
                       os.path.join(class_dir, f"{i}{ext}"))
        generator = tf.keras.preprocessing.image.ImageDataGenerator(
            rescale=1 / 255, rotation_range=20, width_shift_range=0.2,
            height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
            horizontal_flip=True)
        flow = generator.flow_from_directory(
            tmp, target_size=(job.image_size, job.image_size),
            batch_size=job.settings.batch_size, class_mode="categorical", seed=0)
        start = time.perf_counter()
        images = 0
        for _ in range(len(flow)):
            x, _ = next(flow)
            images += x.shape[0]
        return images, time.perf_counter() - start


def _repeated(fn):
    def run(job):
        runs = [fn(job) for _ in range(job.settings.repeats)]
        seconds = statistics.median(s for _, s in runs)
        return {"images": runs[0][0], "seconds": seconds,
                "images_per_sec": runs[0][0] / seconds,
                "repeats": len(runs)}
    run.__doc__ = fn.__doc__
    return run


MODES = {
    "forward": forward,
    "extract": extract,
    "head": head,
    "finetune": finetune,
    "seed_recipe": seed_recipe,
    "tlfast_recipe": tlfast_recipe,
    "bare_decode": _repeated(_bare_decode),
    "pipeline": _repeated(_pipeline),
    "pipeline_cached": _repeated(_pipeline_cached),
    "idg": _repeated(_idg),
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


def _key(row):
    order = {m: i for i, m in enumerate(ALL_MODES)}
    return (order.get(row["mode"], 99), row["backbone"], row["precision"],
            row.get("cache", ""))


def format_table(rows):
    """The rows as a fixed-width table, then extract/forward ratios and the
    recipe speed-ups."""
    lines = [f"{'mode':<16}{'backbone':<17}{'precision':<16}{'images/s':>10}"
             f"{'median ms':>11}{'p90 ms':>10}{'compile s':>11}{'seconds':>10}"
             "  notes"]
    for row in sorted(rows, key=_key):
        notes = []
        if "error" in row:
            notes.append(f"ERROR {row['error'][:60]}")
        if "cache" in row:
            notes.append(f"cache={row['cache']}")
        if row.get("speedup_vs_seed"):
            notes.append(f"{row['speedup_vs_seed']:.1f}x vs seed")
        if "val_accuracy" in row:
            notes.append(f"val_acc={row['val_accuracy']:.3f}")
        if row["mode"] == "head" and "error" not in row:
            notes.append(f"{row['epochs']} epochs x {row['examples']} x "
                         f"{row['feature_dim']}; steady "
                         f"{row['steady_images_per_sec']:.0f}/s")
        fmt = lambda k, spec: format(row[k], spec) if row.get(k) is not None else ""
        lines.append(
            f"{row['mode']:<16}{row['backbone'] or '-':<17}"
            f"{row['precision'] or '-':<16}{fmt('images_per_sec', '.1f'):>10}"
            f"{fmt('median_step_ms', '.1f'):>11}{fmt('p90_step_ms', '.1f'):>10}"
            f"{fmt('compile_seconds', '.2f'):>11}{fmt('seconds', '.2f'):>10}"
            f"  {'; '.join(notes)}".rstrip())
    ok = {(r["mode"], r["backbone"], r["precision"]): r for r in rows
          if "error" not in r}
    ratios = []
    for (mode, backbone, precision), row in sorted(ok.items()):
        forward_row = ok.get(("forward", backbone, precision))
        if mode == "extract" and forward_row:
            ratio = row["images_per_sec"] / forward_row["images_per_sec"]
            ratios.append(f"  {backbone:<17}{precision:<16}{ratio:6.2f}")
    if ratios:
        lines += ["", "extract / forward (1.0: the input side keeps up with "
                  "the model):"] + ratios
    speedups = [f"  {r['backbone']:<17}{r['precision']:<16}{r['cache']:<6}"
                f"{r['speedup_vs_seed']:7.1f}x  ({r['seconds']:.1f}s)"
                for r in sorted(rows, key=_key) if r["mode"] == "tlfast_recipe"
                and r.get("speedup_vs_seed")]
    if speedups:
        lines += ["", "tlfast_recipe speed-up over seed_recipe:"] + speedups
    return "\n".join(lines)


def plot(rows, folder):
    """One PNG bar chart per mode: images/s (seconds for the recipes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    # The two recipes share one chart: the point is their comparison.
    charts = [(m, (m,)) for m in MODEL_MODES + INPUT_MODES]
    charts.insert(len(MODEL_MODES), ("recipes", RECIPE_MODES))
    for mode, members in charts:
        mode_rows = sorted((r for r in rows if r["mode"] in members), key=_key)
        if not mode_rows:
            continue
        recipe = mode == "recipes"
        field = "seconds" if recipe else "images_per_sec"
        labels = ["\n".join(filter(None, [r["mode"] if recipe else "",
                                          r["backbone"], r["precision"],
                                          r.get("cache")])) or mode
                  for r in mode_rows]
        values = [0.0 if "error" in r else r[field] for r in mode_rows]
        fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(values) + 1.5), 4))
        bars = ax.bar(range(len(values)), values, color="tab:blue")
        for bar, r, v in zip(bars, mode_rows, values):
            text = "OOM/error" if "error" in r else f"{v:.3g}"
            if r.get("speedup_vs_seed"):
                text += f"\n{r['speedup_vs_seed']:.1f}x faster"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_ylabel("wall seconds (lower is better)" if recipe
                      else "images/s (higher is better)")
        first = mode_rows[0]
        ax.set_title(f"{mode}: batch {first['batch_size']}, {first['backend']}, "
                     f"{first['device']} ({first['cpu_count']} cores)",
                     fontsize=9)
        if recipe and max(values, default=0) > 50 * min(
                (v for v in values if v > 0), default=1):
            ax.set_yscale("log")  # Warm runs are otherwise invisible.
        ax.margins(y=0.15)
        fig.tight_layout()
        path = os.path.join(folder, f"{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


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
