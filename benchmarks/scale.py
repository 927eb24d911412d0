r"""Per-image cost and peak memory of the whole job as the folder grows.

    python benchmarks/scale.py --sizes=20000,200000 \
        --out=benchmarks/results/scale.jsonl --plot=benchmarks/results/plots/scale.png

For each N: makes N small JPEGs (--image_side px, 2 classes, reproducible,
made once per N under --work_dir), reads them once (both jobs then read
them from the OS page cache), then in separate processes under
`/usr/bin/time` (peak RSS):

  tlfast     `tlfast-train` cold (fresh cache), --backbone at --image_size,
             --weights=none: µs/image per phase from metrics.json's timings
  baseline   what a Keras user writes instead: `image_dataset_from_directory`
             + a compiled `predict` of the same backbone's pooled features

One JSON row per (N, job); the plot shows µs/image and peak RSS against N.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import rows as result_rows  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["20000"], "Folder sizes N.")
flags.DEFINE_integer("image_side", 48, "Side of the JPEGs.")
flags.DEFINE_integer("image_size", 32, "Model input side.")
flags.DEFINE_string("backbone", "mobilenet_025", "Backbone.")
flags.DEFINE_integer("processes", os.cpu_count() or 2, "Processes making JPEGs.")
flags.DEFINE_string("work_dir", "/tmp/tlfast-scale", "Folders and caches.")
flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results",
                                        "scale.jsonl"), "JSON lines.")
flags.DEFINE_string("plot", None, "PNG of µs/image and peak RSS against N.")
flags.DEFINE_list("extra", [], "More tlfast-train flags, e.g. --augment_views=2.")

_BASELINE = textwrap.dedent("""
    import json, sys, time
    import keras, tensorflow as tf
    from tlfast import backbones
    folder, size, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    start = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=256, shuffle=False,
        label_mode="int")
    model = backbones.create_backbone(name, None, size)
    features = model.predict(ds.map(lambda x, y: x), verbose=0)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "images": int(features.shape[0])}))
""")


def _timed(command):
    """Runs `command` under /usr/bin/time; (stdout, peak RSS MiB, seconds)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "peak_rss_kb=%M", *command],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT,
                                   TF_CPP_MIN_LOG_LEVEL="2"))
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{command[:3]} failed: {done.stderr[-3000:]}")
    peak = int(done.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0]) / 1024
    return done.stdout, round(peak), seconds


def measure(n):
    from photos import make_folder

    folder = os.path.join(FLAGS.work_dir, f"data_{n}")
    if not os.path.isdir(os.path.join(folder, "dogs")):
        make_folder(folder, n, FLAGS.image_side, FLAGS.processes)
    # Both jobs read the folder from the OS page cache: whichever ran first
    # would otherwise pay for the disk (2.09x against 1.75-1.90x warm).
    for name in os.listdir(folder):
        for entry in os.scandir(os.path.join(folder, name)):
            with open(entry.path, "rb") as f:
                f.read()
    run = os.path.join(FLAGS.work_dir, f"run_{n}")
    cache = os.path.join(FLAGS.work_dir, f"cache_{n}_{time.time_ns()}")
    _, peak, wall = _timed([
        sys.executable, "-m", "tlfast.train", f"--data_dir={folder}",
        f"--output_dir={run}", f"--cache_dir={cache}",
        f"--backbone={FLAGS.backbone}", "--weights=none",
        f"--image_size={FLAGS.image_size}", "--epochs=2", "--noreuse_outputs",
        *FLAGS.extra])
    subprocess.run(["rm", "-rf", cache], check=False)
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    images = metrics["num_train"] + metrics["num_val"]
    per_image = {k: round(v / images * 1e6) for k, v in metrics["timings_s"].items()}
    rows = [{"n": n, "job": "tlfast", **({"extra": FLAGS.extra} if FLAGS.extra
                                          else {}),
             "images": images, "peak_rss_mb": peak,
             "wall_s": round(wall, 1), "us_per_image": per_image,
             "total_us_per_image": round(wall / images * 1e6)}]
    out, peak, wall = _timed([sys.executable, "-c", _BASELINE, folder,
                              str(FLAGS.image_size), FLAGS.backbone])
    result = json.loads(out.strip().splitlines()[-1])
    rows.append({"n": n, "job": "baseline", "images": result["images"],
                 "peak_rss_mb": peak, "wall_s": round(wall, 1),
                 "total_us_per_image": round(wall / result["images"] * 1e6),
                 "in_process_us_per_image": round(
                     result["seconds"] / result["images"] * 1e6)})
    return rows


def plot(rows, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    for ax, key, label in ((fig.add_subplot(1, 2, 1), "total_us_per_image",
                            "µs / image (wall, whole job)"),
                           (fig.add_subplot(1, 2, 2), "peak_rss_mb",
                            "peak RSS (MiB)")):
        for job in ("tlfast", "baseline"):
            points = sorted((r["n"], r[key]) for r in rows if r["job"] == job)
            ax.plot(*zip(*points), marker="o", label=job)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images")
        ax.set_title(label)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    rows = []
    for n in (int(s) for s in FLAGS.sizes):
        for row in measure(n):
            # Rows without them (before session 9) are of 48-px JPEGs at 32 px.
            row.update(image_side=FLAGS.image_side, image_size=FLAGS.image_size)
            row["commit"] = result_rows.git_commit()
            result_rows.append(FLAGS.out, row)
            rows.append(row)
    if FLAGS.plot:
        plot(rows, FLAGS.plot)
    return 0


if __name__ == "__main__":
    app.run(main)
