r"""Demonstrates that kill -9 during feature extraction loses nothing.

    python scripts/kill_resume_demo.py --work_dir=/tmp/tlfast-kill --num_images=2000

1. Writes `--num_images` synthetic photos (two classes) under --work_dir.
2. Runs `tlfast-train` once, uninterrupted, with its own cache (reference).
3. Runs the same command with a second cache, kills it with SIGKILL at a
   random moment during feature extraction, then runs it again.
4. Compares: the resumed run's val_accuracy and every cached feature vector
   must equal the reference's, and the resumed run must report reused shards.
Exit status 0 when everything matches; a JSON report is printed.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/tlfast-kill", "Scratch folder.")
flags.DEFINE_integer("num_images", 2000, "Images to generate.")
flags.DEFINE_integer("seed", 0, "Seed of the kill moment.")
flags.DEFINE_string("weights", None, "Backbone weights (default: the shared "
                    "MobileNet-0.25 file when present, else none).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_WEIGHTS = os.path.join(os.path.dirname(REPO), "shared", "assets", "weights",
                              "mobilenet_v1_0.25_224_no_top.weights.h5")


def make_images(root, n):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % 2
        path = os.path.join(root, f"class_{label}", f"{i:05d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        y, x = np.mgrid[0:240, 0:320] / 240.0
        stripes = np.sin((8 + 8 * label) * (x if label else y) + rng.uniform(0, 6))
        image = 120 + 80 * stripes[..., None] + rng.normal(0, 25, (240, 320, 3))
        Image.fromarray(np.clip(image, 0, 255).astype("uint8")).save(path, quality=90)


def train_command(data_dir, cache_dir, output_dir, weights):
    return [sys.executable, "-m", "tlfast.train", f"--data_dir={data_dir}",
            f"--cache_dir={cache_dir}", f"--output_dir={output_dir}",
            "--backbone=mobilenet_025", f"--weights={weights}",
            "--feature_shard_size=128", "--epochs=20"]


def shards(cache_dir):
    return glob.glob(os.path.join(cache_dir, "features", "*", "shard-*.npz"))


def all_features(cache_dir):
    out = {}
    for path in shards(cache_dir):
        with np.load(path) as shard:
            for i, f in zip(shard["ids"], shard["features"]):
                out[(os.path.basename(os.path.dirname(path)), str(i))] = f
    return out


def main(argv):
    del argv
    weights = FLAGS.weights or (SHARED_WEIGHTS if os.path.exists(SHARED_WEIGHTS)
                                else "none")
    work = FLAGS.work_dir
    data = os.path.join(work, "images")
    make_images(data, FLAGS.num_images)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    for sub in ("ref_cache", "kill_cache"):
        subprocess.run(["rm", "-rf", os.path.join(work, sub)], check=True)

    reference = train_command(data, os.path.join(work, "ref_cache"),
                              os.path.join(work, "ref_out"), weights)
    subprocess.run(reference, check=True, env=env, capture_output=True)

    kill_cache = os.path.join(work, "kill_cache")
    command = train_command(data, kill_cache, os.path.join(work, "kill_out"), weights)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not shards(kill_cache) and proc.poll() is None:
        time.sleep(0.01)
    # A random moment within the extraction that follows the first shard.
    time.sleep(random.Random(FLAGS.seed).uniform(0.0, 3.0))
    killed_at = len(shards(kill_cache))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(command, check=True, env=env, capture_output=True)

    ref_metrics = json.load(open(os.path.join(work, "ref_out", "metrics.json")))
    metrics = json.load(open(os.path.join(work, "kill_out", "metrics.json")))
    ref_features, features = all_features(os.path.join(work, "ref_cache")), \
        all_features(kill_cache)
    same_features = ref_features.keys() == features.keys() and all(
        np.array_equal(ref_features[k], features[k]) for k in ref_features)
    report = {
        "images": FLAGS.num_images, "weights": weights,
        "shards_when_killed": killed_at,
        "killed_during_extraction": proc.returncode == -signal.SIGKILL
        and metrics["features_cached"] > 0,
        "resumed_features_cached": metrics["features_cached"],
        "resumed_forwarded": metrics["backbone_images_forwarded"],
        "val_accuracy": metrics["val_accuracy"],
        "reference_val_accuracy": ref_metrics["val_accuracy"],
        "identical_features": same_features,
        "feature_vectors": len(features),
    }
    print(json.dumps(report, indent=1))
    ok = (report["killed_during_extraction"] and same_features
          and metrics["val_accuracy"] == ref_metrics["val_accuracy"])
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)
