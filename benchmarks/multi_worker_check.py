r"""Fine-tuning on two local `multi_worker` processes against one process.

    python benchmarks/multi_worker_check.py --assets=../shared/assets \
        --out=benchmarks/results/multi_worker_check.jsonl

Runs `tlfast-train` on flowers224 (MobileNet-0.25 with the shared ImageNet
weights, --fine_tune_epochs, default flags otherwise): once in one process,
then as two worker processes of one `multi_worker` job on this machine
(TF_CONFIG on localhost ports; each worker fine-tunes on its half of the
images, gradients all-reduced, see `tlfast.worker_fit`). Both runs share the
feature cache (the head is the same); the outputs go to separate folders.

Writes one JSON row: each run's val_accuracy, stages and seconds, whether
only the chief wrote outputs, and the difference (the issue asks <= 0.02).
"""

import json
import os
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rows as result_rows  # noqa: E402
from tlfast import distribute  # noqa: E402

FLAGS = flags.FLAGS
result_rows.define_asset_flags("multi_worker_check.jsonl",
                               "/tmp/tlfast-multi-worker")
flags.DEFINE_integer("fine_tune_epochs", 2, "Fine-tuning epochs.")
flags.DEFINE_integer("workers", 2, "Worker processes.")


def _command(output_dir, *extra):
    weights = os.path.join(FLAGS.assets, "weights",
                           "mobilenet_v1_0.25_224_no_top.weights.h5")
    return [sys.executable, "-m", "tlfast.train",
            f"--data_dir={os.path.join(FLAGS.assets, 'datasets', 'flowers224')}",
            f"--output_dir={output_dir}",
            f"--cache_dir={os.path.join(FLAGS.work_dir, 'cache')}",
            "--backbone=mobilenet_025", f"--weights={weights}",
            f"--fine_tune_epochs={FLAGS.fine_tune_epochs}", "--noreuse_outputs",
            *extra]


def _env(**extra):
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _summary(output_dir):
    metrics = json.load(open(os.path.join(output_dir, "metrics.json")))
    return {"val_accuracy": round(metrics["val_accuracy"], 4),
            "stages": metrics["stages"], "timings_s": metrics["timings_s"]}


def _single():
    output_dir = os.path.join(FLAGS.work_dir, "single")
    start = time.perf_counter()
    subprocess.run(_command(output_dir), env=_env(), check=True,
                   capture_output=True, text=True)
    return {**_summary(output_dir),
            "seconds": round(time.perf_counter() - start, 1)}


def _multi_worker():
    output_dir = os.path.join(FLAGS.work_dir, "multi_worker")
    start = time.perf_counter()
    procs = [subprocess.Popen(
        _command(output_dir, "--distribution=multi_worker"),
        env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
        for tf_config in distribute.local_cluster(FLAGS.workers)]
    outputs = [proc.communicate()[0] for proc in procs]
    seconds = time.perf_counter() - start
    for proc, out in zip(procs, outputs):
        if proc.returncode:
            raise RuntimeError(f"A worker failed:\n{out[-3000:]}")
    # Each worker's last line: "val_accuracy=... output_dir=...".
    finals = [next(line for line in reversed(out.splitlines())
                   if line.startswith("val_accuracy=")) for out in outputs]
    # The others wrote to scratch folders, deleted at their end; only
    # their logs are in the output folder.
    scratch = [re.search(r"outputs go to the scratch folder (\S+)", open(
        os.path.join(output_dir, f"train.worker{i}.log")).read())
               for i in range(1, FLAGS.workers)]
    written = set(os.listdir(output_dir))
    return {**_summary(output_dir), "seconds": round(seconds, 1),
            "workers_val_accuracy": [float(f.split()[0].split("=")[1])
                                     for f in finals],
            "only_chief_wrote": all(m and not os.path.exists(m.group(1))
                                    for m in scratch),
            "files": sorted(written)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    single = _single()
    multi = _multi_worker()
    row = {"data": "flowers224", "fine_tune_epochs": FLAGS.fine_tune_epochs,
           "workers": FLAGS.workers, "single": single, "multi_worker": multi,
           "difference": round(abs(single["val_accuracy"]
                                   - multi["val_accuracy"]), 4),
           "commit": result_rows.git_commit()}
    result_rows.append(FLAGS.out, row)
    return 0


if __name__ == "__main__":
    app.run(main)
