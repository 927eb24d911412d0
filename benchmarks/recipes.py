"""Recipe modes of benchmarks/run.py: the seed tutorial and tlfast-train, wall seconds."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf

import tlfast
from tlfast.config import TrainConfig

import jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    timer = jobs.EpochTimer()
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


MODES = {"seed_recipe": seed_recipe, "tlfast_recipe": tlfast_recipe}
