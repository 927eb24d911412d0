r"""Throughput benchmarks: tlfast's pipeline against a bare tf.data loop and the seed recipe.

    python benchmarks/run.py --data_dir=../shared/assets/datasets/hymenoptera \
        --modes=bare_decode,pipeline,pipeline_cached,idg

Modes:
  bare_decode      plain tf.data read + decode + resize + batch over the same
                   files: the ceiling for decoding.
  pipeline         tlfast's pipeline, first epoch (decode + fill the cache).
  pipeline_cached  the same pipeline, a later epoch (served from the cache).
  idg              Keras `ImageDataGenerator.flow_from_directory` with the
                   seed recipe's augmentation, one epoch.

Each timed region reads every batch's result, and files are read once before
timing so that no mode pays for a cold page cache. Each mode runs `--repeats`
times; the median is reported. Rows are JSON lines appended to `--output`.
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

import tlfast  # noqa: E402
from tlfast import data as tld  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Image folder (class sub-folders, or "
                    "train/validation splits of them).")
flags.DEFINE_list("modes", ["bare_decode", "pipeline", "pipeline_cached", "idg"],
                  "Modes to run, comma separated.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Square image side.")
flags.DEFINE_integer("max_images", None, "Use this many images (a smaller "
                     "folder is cycled).")
flags.DEFINE_integer("repeats", 3, "Timed runs per mode; the median is kept.")
flags.DEFINE_string("cache_dir", None, "tlfast cache folder (scan verdicts); "
                    "default: a temporary folder.")
flags.DEFINE_string("output", None, "Append result rows (JSON lines) here.")


def timed_epoch(ds):
    """Iterates one epoch; returns (images, seconds)."""
    start = time.perf_counter()
    images = 0
    for batch in ds:
        image = batch["image"] if isinstance(batch, dict) else batch
        images += int(image.shape[0])  # .shape of a produced tensor: read back.
    return images, time.perf_counter() - start


def bare_decode(entries):
    paths = [e.path for e in entries]
    size = (FLAGS.image_size, FLAGS.image_size)

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return tf.image.resize(image, size)

    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE))
    return timed_epoch(ds)


def _pipeline(entries):
    config = tld.PipelineConfig(image_size=FLAGS.image_size,
                                batch_size=FLAGS.batch_size, cache="memory")
    return tld.image_folder_dataset(entries, config, training=True)


def pipeline(entries):
    return timed_epoch(_pipeline(entries))


def pipeline_cached(entries):
    ds = _pipeline(entries)
    timed_epoch(ds)  # Fills the cache.
    return timed_epoch(ds)


def idg(entries):
    """The seed recipe's input side: ImageDataGenerator + flow_from_directory."""
    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    # flow_from_directory reads a folder, so link exactly the same files.
    with tempfile.TemporaryDirectory() as tmp:
        for i, entry in enumerate(entries):
            class_dir = os.path.join(tmp, f"class_{entry.label}")
            os.makedirs(class_dir, exist_ok=True)
            ext = os.path.splitext(entry.path)[1]
            os.symlink(entry.path, os.path.join(class_dir, f"{i}{ext}"))
        generator = ImageDataGenerator(
            rescale=1 / 255, rotation_range=20, width_shift_range=0.2,
            height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
            horizontal_flip=True)
        flow = generator.flow_from_directory(
            tmp, target_size=(FLAGS.image_size, FLAGS.image_size),
            batch_size=FLAGS.batch_size, class_mode="categorical", seed=0)
        start = time.perf_counter()
        images = 0
        for _ in range(len(flow)):
            x, _ = next(flow)
            images += x.shape[0]
        return images, time.perf_counter() - start


MODES = {
    "bare_decode": bare_decode,
    "pipeline": pipeline,
    "pipeline_cached": pipeline_cached,
    "idg": idg,
}


def environment():
    """Fields common to every row."""
    return {
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else "",
        "tlfast": tlfast.__version__,
        "python": platform.python_version(),
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
    }


def load_entries(cache_dir):
    folder = tld.list_image_folder(FLAGS.data_dir)
    entries = [e for split in folder.splits.values() for e in split]
    result = tld.scan_files(entries, root=folder.root, cache_dir=cache_dir)
    usable = list(result.usable)
    if FLAGS.max_images:
        # A small folder is cycled to reach --max_images, so that short
        # timings are not dominated by start-up.
        repeats = -(-FLAGS.max_images // max(len(usable), 1))
        usable = (usable * repeats)[:FLAGS.max_images]
    for entry in usable:  # Warm the page cache: no mode pays for disk reads.
        with open(entry.path, "rb") as f:
            f.read()
    return usable, result.skipped


def print_table(rows):
    print(f"\n{'mode':<18}{'images/s':>12}{'images':>9}{'seconds':>10}"
          f"{'vs bare':>9}")
    bare = next((r["images_per_sec"] for r in rows
                 if r["mode"] == "bare_decode"), None)
    for row in sorted(rows, key=lambda r: -r["images_per_sec"]):
        ratio = f"{row['images_per_sec'] / bare:.2f}x" if bare else ""
        print(f"{row['mode']:<18}{row['images_per_sec']:>12.1f}"
              f"{row['images']:>9}{row['seconds']:>10.3f}{ratio:>9}")


def main(argv):
    del argv
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required: a folder of class "
                             "sub-folders of images.")
    unknown = [m for m in FLAGS.modes if m not in MODES]
    if unknown:
        raise app.UsageError(f"Unknown --modes {unknown}; choose from "
                             f"{', '.join(MODES)}.")
    with tempfile.TemporaryDirectory() as tmp:
        entries, skipped = load_entries(FLAGS.cache_dir or tmp)
        print(f"{len(entries)} images ({len(skipped)} skipped by the scan)")
        common = environment()
        rows = []
        for mode in FLAGS.modes:
            runs = [MODES[mode](entries) for _ in range(FLAGS.repeats)]
            seconds = statistics.median(s for _, s in runs)
            images = runs[0][0]
            row = {"mode": mode, "images_per_sec": images / seconds,
                   "images": images, "seconds": seconds,
                   "batch_size": FLAGS.batch_size,
                   "image_size": FLAGS.image_size, **common}
            print(json.dumps(row))
            rows.append(row)
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print_table(rows)


if __name__ == "__main__":
    app.run(main)
