r"""Peak memory of the pixel pipeline under a RAM budget.

    python benchmarks/memory.py --num_images=20000 --ram_budget_mb=1024 \
        --work_dir=/tmp/tlfast-memory

Writes `--num_images` synthetic JPEGs of `--image_size` under `--work_dir`
(once per count and size; reused on later runs), then, with a fresh cache
folder, in a fresh child process, scans them and runs two epochs
of the training pipeline (shuffle on) with the given RAM budget, and reports
the child's peak resident memory. With 20,000 images the decoded pixels are
about 2.8 GiB, so a 1 GiB budget must spill to the disk cache.
"""

import concurrent.futures
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 20000, "Synthetic images to generate.")
flags.DEFINE_integer("image_size", 224, "Side of the generated and the "
                     "pipeline's images.")
flags.DEFINE_integer("ram_budget_mb", 1024, "Pipeline RAM budget.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_string("work_dir", "/tmp/tlfast-memory", "Images and cache go "
                    "here.")
flags.DEFINE_bool("measure", False, "Internal: run the measured child.")
flags.DEFINE_string("output", None, "Append the result row (JSON) here.")


def _write_one(path, seed, size):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth colour fields plus mild noise: photo-like JPEG sizes (~10 KB).
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 255, 3)
    image = base + 80 * np.stack([np.sin(6 * x + s) * np.cos(4 * y - s)
                                  for s in rng.uniform(0, 6, 3)], -1)
    image += rng.normal(0, 6, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(path, quality=85)


def generate(root, n, size):
    paths = [os.path.join(root, f"class_{i % 2}", f"{i:06d}.jpg") for i in range(n)]
    todo = [(p, i) for i, p in enumerate(paths) if not os.path.exists(p)]
    for c in range(2):
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(lambda t: _write_one(t[0], t[1], size), todo))
    return len(todo)


def _images_dir():
    # Per count and size: an earlier run's images must not be measured too.
    return os.path.join(FLAGS.work_dir,
                        f"images-{FLAGS.num_images}-{FLAGS.image_size}px")


def measure():
    import tlfast

    root = _images_dir()
    cache_dir = os.path.join(FLAGS.work_dir, "cache")
    folder = tlfast.list_image_folder(root)
    scan = tlfast.scan_files(folder.splits["all"], root=root, cache_dir=cache_dir)
    config = tlfast.PipelineConfig(
        image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
        ram_budget_mb=FLAGS.ram_budget_mb, cache_dir=cache_dir)
    from tlfast.data import pipeline

    mode = pipeline.choose_cache(len(scan.usable), config)
    ds = tlfast.image_folder_dataset(scan.usable, config, training=True)
    seen, epochs = 0, []
    for _ in range(2):
        start = time.perf_counter()
        for batch in ds:
            seen += int(batch["image"].shape[0])
        epochs.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "mode": "memory", "images": len(scan.usable), "examples_seen": seen,
        "ram_budget_mb": FLAGS.ram_budget_mb, "cache": mode,
        "peak_rss_mb": round(peak_mb, 1), "epoch_seconds": epochs,
        "decoded_pixels_mb": round(len(scan.usable) * config.image_bytes / 2**20),
    }))


def main(argv):
    del argv
    if FLAGS.measure:
        measure()
        return
    if min(FLAGS.num_images, FLAGS.image_size, FLAGS.batch_size) < 1 or (
            FLAGS.ram_budget_mb < 0):
        raise app.UsageError(
            "--num_images, --image_size and --batch_size must be >= 1 and "
            f"--ram_budget_mb >= 0. Received: --num_images={FLAGS.num_images} "
            f"--image_size={FLAGS.image_size} --batch_size={FLAGS.batch_size} "
            f"--ram_budget_mb={FLAGS.ram_budget_mb}")
    root = _images_dir()
    made = generate(root, FLAGS.num_images, FLAGS.image_size)
    print(f"{made} images written, {FLAGS.num_images - made} reused in {root}")
    # A pixel cache left by an earlier run would skip the cache fill, the
    # part of the first epoch this measures.
    shutil.rmtree(os.path.join(FLAGS.work_dir, "cache"), ignore_errors=True)
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure",
         *[f"--{k}={getattr(FLAGS, k)}" for k in
           ("num_images", "image_size", "ram_budget_mb", "batch_size",
            "work_dir")]],
        capture_output=True, text=True)
    if child.returncode:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"The measuring child process failed (exit "
                         f"{child.returncode}); its output is above.")
    row = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(row))
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    app.run(main)
