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

import gc
import json
import os
import platform
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tlfast  # noqa: E402
from tlfast import backbones  # noqa: E402
from tlfast.config import TrainConfig  # noqa: E402
from tlfast.precision import resolve_precision  # noqa: E402

import inputs  # noqa: E402
import models  # noqa: E402
import recipes  # noqa: E402
import rows as result_rows  # noqa: E402
from jobs import Job  # noqa: E402
from jobs import Settings  # noqa: E402
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
                  "separated, e.g. float32,mixed_bfloat16; auto: what "
                  "tlfast-train --precision=auto picks on this device.")
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


MODES = {**models.MODES, **recipes.MODES, **inputs.INPUT_MODES}


# ------------------------------------------------------------------- running


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
        "git_commit": result_rows.git_commit(),
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
        if policy == "auto":  # tlfast's choice for this device.
            continue
        try:
            keras.mixed_precision.Policy(policy)
        except ValueError as e:
            raise app.UsageError(f"Bad --precision {policy!r}: {e}")
    if not FLAGS.modes:
        raise app.UsageError(f"--modes is empty; choose from {', '.join(ALL_MODES)}.")
    if "tlfast_recipe" in FLAGS.modes:
        # tlfast-train's own choices: checked now, not after the seed run.
        from tlfast.precision import PRECISIONS
        bad = [p for p in FLAGS.precision if p not in PRECISIONS]
        if bad:
            raise app.UsageError(f"--modes=tlfast_recipe runs tlfast-train, whose "
                                 f"--precision is one of {PRECISIONS}. Received: "
                                 f"--precision={','.join(FLAGS.precision)}")
    needs_data = [m for m in FLAGS.modes
                  if m in ("extract",) + RECIPE_MODES + INPUT_MODES]
    if needs_data and not FLAGS.data_dir:
        raise app.UsageError(f"--data_dir is required by --modes {needs_data}: "
                             "a folder of class sub-folders of images.")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir is not a folder. Received: "
                             f"--data_dir={FLAGS.data_dir}")
    for name in ("max_images", "image_size"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            raise app.UsageError(f"--{name} must be >= 1 (or unset). Received: "
                                 f"--{name}={value}")
    for name in FLAGS.backbones if FLAGS.image_size else ():
        spec = backbones.get_backbone_spec(name)
        if FLAGS.image_size < spec.min_size:
            raise app.UsageError(f"--image_size must be >= {spec.min_size} for "
                                 f"'{name}'. Received: --image_size={FLAGS.image_size}")
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
                # "auto": what tlfast-train --precision=auto resolves to here
                # (bf16 on tensor-core GPUs, float32 on a CPU).
                jobs.append(Job(settings, workdir, backbone,
                                resolve_precision(precision), rows))
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
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.table)), exist_ok=True)
        with open(FLAGS.table, "w") as f:
            f.write(table + "\n")
    if FLAGS.plot:
        for path in plot(rows, FLAGS.plot):
            print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
