"""Frozen-backbone features of a run's examples: every view, cached, sharded over workers.

`extract_all` keys each set of features (validation, each training view) by
everything that determines them and fills `tlfast.features`' disk cache,
forwarding only what is missing. With several `multi_worker` workers each
forwards its part into the shared cache; after a barrier all read the whole.
"""

import dataclasses
import gc
import hashlib
import logging
import os

import numpy as np
import tensorflow as tf

from tlfast import backbones
from tlfast import distribute
from tlfast import feature_pass
from tlfast import features as features_lib
from tlfast import host_arrays
from tlfast import model as model_lib
from tlfast.data import augment as augment_lib
from tlfast.data import pipeline
from tlfast.progress import Phase

log = logging.getLogger("tlfast")


def extraction_sizes(batch_size, image_size, shard_size):
    """(images a backbone call takes, images a chunk decodes) in extraction.

    A call takes about as many pixels as `batch_size` images of 224 px: at
    least `batch_size`, at most a chunk. Each `predict_on_batch` costs ~5 ms
    besides the model: 20k 48-px JPEGs at 32 px took 626 calls of 32 images,
    4.3 s of an 8 s extraction. A chunk is a feature shard, or up to
    `_CHUNK_SHARDS` of them for small images (at most a shard of 224-px
    images' pixels decoded at once): 20k 32-px images go through the model
    in 0.72 s in calls of 1,024, 0.92 in calls of 512.
    """
    scale = (224 / image_size) ** 2
    chunk = max(shard_size, min(_CHUNK_SHARDS * shard_size,
                                int(shard_size * scale)))
    batch = max(batch_size, min(chunk, int(batch_size * scale)))
    return batch, chunk


# Most shards a chunk holds decoded (4 x 512 images of 112 px: 77 MB).
_CHUNK_SHARDS = 4


def _extract(examples, feature_model, key, config, phase, workers, strategy,
             out):
    """Cached features of `examples` (see `tlfast.data.examples`), one view.

    With several workers each forwards its part into the shared cache; after
    a barrier every worker reads the whole of it.

    Returns:
      (features [N, D]: `out`, filled; ExtractStats with
      `forwarded` summed over the workers).
    """
    cache = features_lib.FeatureCache(os.path.expanduser(config.cache_dir), key,
                                      lock_timeout=config.lock_timeout)
    offset = phase.done
    ids = examples.ids

    def progress(done, total, rate):
        phase.update(offset + done)

    batch_size, chunk_size = extraction_sizes(
        config.batch_size, examples.image_size, config.feature_shard_size)

    def make_dataset(indices):
        return examples.batched(indices, batch_size)

    def extract(part=None):
        return feature_pass.extract_features(
            ids, make_dataset, feature_model, cache,
            shard_size=config.feature_shard_size, progress=progress, part=part,
            chunk_size=chunk_size, out=out)

    if workers.count == 1:
        return extract()
    _, mine = extract(part=(workers.index, workers.count))
    log.info("Worker %d of %d forwarded %d image(s) of its part",
             workers.index, workers.count, mine.forwarded)
    forwarded = distribute.all_sum(strategy, mine.forwarded)  # Barrier.
    features, stats = extract()
    if stats.forwarded:
        log.warning(
            "Worker %d had to compute %d features that the other workers "
            "computed: is --cache_dir on storage that all workers share?",
            workers.index, stats.forwarded)
    return features, dataclasses.replace(
        stats, forwarded=int(round(forwarded)) + stats.forwarded)


@dataclasses.dataclass(frozen=True)
class Extracted:
    """What `extract_all` gives the run.

    Attributes:
      validation: Features [num_val, D] of the cache's dtype, in validation
        order, a `host_arrays` array.
      train_views: [views + 1, num_train, D] of the cache's dtype (view 0:
        plain), a `host_arrays` array that TensorFlow reads in place.
      status: "hit", "miss" or "partial" over all the sets.
      forwarded: Images that went through the backbone in this run.
      stats: One `ExtractionStats` per set (validation first).
      digests: The feature-cache key digest of each set.
      weights_identity: The weights part of the keys, as it was when the
        features were computed (fine-tuning changes a random backbone's).
    """

    validation: np.ndarray
    train_views: np.ndarray
    status: str
    forwarded: int
    stats: list
    digests: list
    weights_identity: str


def _jobs(train, validation, run, identity):
    """(examples, FeatureKey, augmentation layer or None) of every set."""
    config, spec = run.config, run.spec
    base = dict(backbone=spec.name, weights=identity,
                image_size=run.image_size, resize=config.resize,
                preprocessing=spec.preprocessing, precision=run.policy,
                dtype=config.feature_dtype, source=run.source,
                decode=pipeline.DECODE_VERSION)
    jobs = [(validation, features_lib.FeatureKey(**base), None)]
    for view in range(run.views + 1):
        augmentation = None
        if view:
            augmentation = augment_lib.make_augmentation(
                run.augment, seed=augment_lib.view_seed(config.seed, view),
                always=True)
        key = features_lib.FeatureKey(
            **base, view=view,
            augment=f"{run.augment}#v{augment_lib.VIEW_VERSION}" if view else "",
            seed=config.seed if view else 0)
        jobs.append((train, key, augmentation))
    return jobs


def extract_all(train, validation, backbone_model, run, timings, strategy=None):
    """Features for every training view and for validation; an `Extracted`.

    Args:
      train, validation: `tlfast.data.examples.Examples`.
      backbone_model: From `tlfast.backbones.create_backbone`.
      run: The `tlfast.resolve.ResolvedRun`.
      timings: Phase timings to add to.
      strategy: The run's tf.distribute strategy, or None.
    """
    workers = distribute.workers_of(strategy)
    identity = weights_fingerprint(run.config.weights, backbone_model,
                                   run.spec.name)
    jobs = _jobs(train, validation, run, identity)
    total = sum(len(examples) for examples, _, _ in jobs)
    stats = []
    with Phase("extract", total=total, timings=timings) as phase:
        clean = model_lib.build_feature_model(backbone_model)
        # Every training view in one array of the stored dtype: the head
        # reads it in place (float16 at 160k images, 2 added views of 256
        # dims: 164 MB more at the peak, where float32 copies cost ~1 GB).
        # Validation likewise: at 40k images its float32 copy and that
        # copy's tensor in the head were 78 MiB, now 20.
        dim, dtype = clean.output_shape[-1], run.config.feature_dtype
        train_views = host_arrays.zeros((run.views + 1, len(train), dim), dtype)
        validation_x = host_arrays.zeros((len(validation), dim), dtype)
        views_seconds = 0.0
        for examples, key, augmentation in jobs:
            feature_model = clean if augmentation is None else (
                model_lib.build_feature_model(backbone_model, augmentation))
            if workers.count > 1:
                feature_model = _LocalPredictor(feature_model)
            offset = phase.done
            _, stat = _extract(
                examples, feature_model, key, run.config, phase, workers,
                strategy, validation_x if examples is validation else
                train_views[key.view])
            phase.update(offset + len(examples), force=True)
            stats.append(stat)
            if key.view:
                views_seconds += stat.seconds
                # An augmented model and its traced function hold ~20 MB
                # until a full collection, which the heap of long-lived
                # TensorFlow objects makes rare: at 200k images the second
                # view ran with the first's model still alive (measured:
                # +20 MiB RSS for each model kept, none once collected).
                del feature_model
                gc.collect()
    if run.views:
        # Part of "extract": what the augmented views cost.
        timings["extract_views"] = round(views_seconds, 3)
    forwarded = sum(s.forwarded for s in stats)
    cached = sum(s.cached for s in stats)
    status = "hit" if not forwarded else ("miss" if not cached else "partial")
    return Extracted(validation=validation_x, train_views=train_views,
                     status=status, forwarded=forwarded, stats=stats,
                     digests=[key.digest() for _, key, _ in jobs],
                     weights_identity=identity)


class _LocalPredictor:
    """`predict_on_batch` without cross-worker gathering.

    Under MultiWorkerMirroredStrategy Keras's predict concatenates every
    worker's outputs (a collective), but each worker extracts its own part:
    a plain compiled call on the local copy of the weights is what it needs.
    """

    def __init__(self, model):
        self._call = tf.function(lambda x: model(x, training=False),
                                 reduce_retracing=True)

    def predict_on_batch(self, images):
        return self._call(images).numpy()


def weights_fingerprint(weights, backbone_model, name=None):
    """The weights part of the feature-cache key.

    "imagenet" and files have a stable identity of their own. Random
    initialisation does not: its identity is a hash of the initial weights
    themselves, so features from one random backbone are never served to
    another (same seed, same weights, same key).
    """
    identity = backbones.weights_identity(weights, name)
    if identity != "none":
        return identity
    digest = hashlib.sha256()
    for weight in backbone_model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return "random:" + digest.hexdigest()[:16]
