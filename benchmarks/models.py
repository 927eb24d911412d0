"""Model modes of benchmarks/run.py: forward, extract, head, finetune.

One row per backbone x precision; see run.py's docstring for what each
measures.
"""

import shutil
import statistics
import tempfile
import time

import numpy as np

from tlfast import backbones
from tlfast import feature_pass
from tlfast import features as features_lib
from tlfast import head as head_lib
from tlfast import model as model_lib
from tlfast.data import augment as augment_lib
from tlfast.config import TrainConfig

import jobs


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
    return {**jobs.step_stats(times, steps * job.settings.batch_size, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit}


# extract_features' shard size (its default), passed explicitly: `extract`
# pre-compiles the batch shapes its chunks end with.
_SHARD = 512


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
    _, stats = feature_pass.extract_features(source.ids[:count], make_dataset,
                                             timer, cache, shard_size=_SHARD)
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
    # Compile for every batch shape the run will see: full batches, the
    # remainder of the whole run (one dataset, overlapped) and of each
    # _SHARD-sized chunk (decoded chunk by chunk on the CPU).
    shapes = {batch, count % batch} | {
        min(_SHARD, count - s) % batch for s in range(0, count, _SHARD)}
    start = time.perf_counter()
    for n in sorted(shapes - {0}):
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
    return {**jobs.step_stats(times, count, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit,
            "resize": job.settings.resize}


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
    timer = jobs.EpochTimer()
    start = time.perf_counter()
    head_lib.train_head(model, (x, y), None, config, callbacks=[timer])
    seconds = time.perf_counter() - start
    steps = -(-s.head_examples // s.head_batch_size)
    steady = timer.seconds[1:] or timer.seconds
    # Per-step times are epoch means: train_head fires no batch callbacks.
    times = [t / steps for t in steady for _ in range(steps)]
    stats = jobs.step_stats(times, s.head_examples * len(steady), sum(steady))
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
    return {**jobs.step_stats(times, steps * s.batch_size, seconds),
            "compile_seconds": compile_seconds, "jit_compile": jit,
            "augment": TrainConfig.augment}


MODES = {
    "forward": forward,
    "extract": extract,
    "head": head,
    "finetune": finetune,
}
