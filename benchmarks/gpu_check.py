r"""One call that measures tlfast end to end on an accelerator (or, --smoke, checks itself on CPU).

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --out=$OUT/gpu_check.jsonl
    python benchmarks/gpu_check.py --smoke --out=/tmp/smoke.jsonl     # CI, CPU, < 1 min

Steps, each appending JSON rows (device, backend, precision) to --out:

  a. make_folder   --num_images photo-sized synthetic JPEGs in 2 classes,
                   written by --processes processes.
  b. run.py        forward + extract + finetune (one epoch's steps, in-model
                   augmentation "standard") for --backbones at
                   --precision=auto, then the bare_decode and idg input rows.
  c. tlfast-train  cold, then warm (same cache, new output folder), with
                   --train_backbone (the seed's VGG16, 2 classes,
                   --weights=none), timings from metrics.json.

The GPU machine has no TensorFlow: install tensorflow-cpu and Keras first
(`../shared/gpu/`, BUILD.md "GPU recipe"); the model runs on the GPU through
KERAS_BACKEND=jax. Everything is rehearsed by the --smoke run in
`tests/test_benchmarks.py`, so device time goes to measuring.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from photos import make_folder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results",
                                        "gpu_check.jsonl"), "JSON lines output.")
flags.DEFINE_string("work_dir", "/tmp/tlfast-gpu-check", "Scratch folder.")
flags.DEFINE_bool("smoke", False, "A CPU-sized run of every step (CI).")
flags.DEFINE_integer("num_images", 20000, "Synthetic JPEGs to make.")
flags.DEFINE_integer("image_side", 320, "Their longer side (photo-sized).")
flags.DEFINE_integer("processes", 16, "Processes making the folder.")
flags.DEFINE_list("backbones", ["vgg16", "resnet50", "mobilenet_v2",
                                "efficientnet_b0"], "run.py's backbones.")
flags.DEFINE_integer("max_images", 4096, "Images per run.py model mode.")
flags.DEFINE_integer("input_images", 2000, "Images per run.py input mode.")
flags.DEFINE_integer("batch_size", 256, "Batch size of run.py and tlfast-train.")
flags.DEFINE_string("train_backbone", "vgg16", "tlfast-train's backbone.")
flags.DEFINE_integer("image_size", None, "Model input side (default: each "
                     "backbone's).")

SMOKE = dict(num_images=48, image_side=48, processes=2,
             backbones=["mobilenet_025"], max_images=32, input_images=32,
             batch_size=16, train_backbone="mobilenet_025", image_size=32)


def _append(rows, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def run_benchmarks(s, data, out):
    """Step b: the model and input rows of benchmarks/run.py."""
    common = [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"),
              f"--data_dir={data}", "--weights=none", "--precision=auto",
              f"--batch_size={s['batch_size']}", f"--output={out}"]
    if s["image_size"]:
        common.append(f"--image_size={s['image_size']}")
    subprocess.run(common + [f"--backbones={','.join(s['backbones'])}",
                             "--modes=forward,extract,finetune",
                             f"--max_images={s['max_images']}"],
                   check=True, env=_env(), cwd=ROOT)
    subprocess.run(common + ["--modes=bare_decode,idg", "--repeats=1",
                             f"--max_images={s['input_images']}"],
                   check=True, env=_env(), cwd=ROOT)


def train_twice(s, data, work):
    """Step c: tlfast-train cold, then warm on the same cache; two rows."""
    rows = []
    for phase in ("cold", "warm"):
        command = [sys.executable, "-m", "tlfast.train", f"--data_dir={data}",
                   f"--output_dir={os.path.join(work, 'run_' + phase)}",
                   f"--cache_dir={os.path.join(work, 'cache')}",
                   f"--backbone={s['train_backbone']}", "--weights=none",
                   "--precision=auto", f"--batch_size={s['batch_size']}"]
        if s["image_size"]:
            command.append(f"--image_size={s['image_size']}")
        start = time.perf_counter()
        subprocess.run(command, check=True, env=_env(), cwd=ROOT)
        wall = time.perf_counter() - start
        metrics = json.load(open(os.path.join(work, "run_" + phase,
                                              "metrics.json")))
        rows.append({"mode": f"tlfast_train_{phase}",
                     "backbone": s["train_backbone"], "wall_seconds": round(wall, 2),
                     "timings_s": metrics["timings_s"],
                     "images": metrics["num_train"] + metrics["num_val"],
                     "feature_cache": metrics["feature_cache"],
                     "val_accuracy": metrics["val_accuracy"]})
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    s = {k: getattr(FLAGS, k) for k in SMOKE}
    if FLAGS.smoke:
        s.update(SMOKE)
    work = FLAGS.work_dir
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    seconds = make_folder(data, s["num_images"], s["image_side"], s["processes"])
    device = {"device_requested": "smoke-cpu" if FLAGS.smoke else "accelerator",
              "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    _append([{"mode": "make_folder", "images": s["num_images"],
              "seconds": round(seconds, 2), **device}], FLAGS.out)
    run_benchmarks(s, data, FLAGS.out)
    _append([{**row, **device} for row in train_twice(s, data, work)], FLAGS.out)
    print(f"gpu_check: rows in {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
