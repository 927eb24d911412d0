"""One backbone pass over the examples a `FeatureCache` lacks.

`extract_features` looks `ids` up in the cache, forwards only the missing
examples, and writes their features shard by shard as they come:

    ids ──lookup──> found rows ────────────────────────────┐
     └── missing ──> make_dataset ──> model ──> rows [B, D] ├──> features [N, D]
                                                 └──> shard-*.npz every
                                                      `shard_size` rows

A killed call loses at most the shard it was filling; a call that cannot
match features to ids deletes what it wrote (the cache format is
`tlfast.features`'s).
"""

import collections
import dataclasses
import os
import time

import numpy as np


@dataclasses.dataclass
class ExtractStats:
    """What `extract_features` did.

    Attributes:
      total: Examples asked for.
      cached: Examples served from the cache.
      forwarded: Examples pushed through the backbone in this call.
      seconds: Wall time of the call.
      shards: (name, size, mtime_ns) of the cache shards that hold the
        examples afterwards, sorted (what a later run checks is unchanged).
    """

    total: int
    cached: int
    forwarded: int
    seconds: float
    shards: tuple = ()

    @property
    def status(self):
        """"hit" (nothing forwarded), "miss" (nothing cached) or "partial"."""
        if self.forwarded == 0:
            return "hit"
        return "miss" if self.cached == 0 and self.total > 0 else "partial"


def _model_on_cpu():
    """Whether Keras runs models on the CPU (no accelerator for its backend)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return not (tf.config.list_logical_devices("GPU")
                    or tf.config.list_logical_devices("TPU"))
    if backend == "torch":
        import torch

        return not torch.cuda.is_available()
    return True


def _batches(make_dataset, indices, chunk_size, overlap):
    """The batches of `make_dataset(indices)`, decoded chunk by chunk unless
    `overlap`."""
    if not indices:
        return
    if overlap:
        yield from make_dataset(indices)
        return
    for start in range(0, len(indices), chunk_size):
        # Decode a whole chunk with every core, then run the model with every
        # core. Decoding alongside a CPU model stalls the model's threads far
        # more than the decoding costs: measured on 2 cores, ResNet50 reached
        # 0.53 of its in-memory throughput overlapped, 0.95 chunked.
        yield from list(make_dataset(indices[start:start + chunk_size]))


def _checked(ids, shard_size, out, part):
    """Returns (ids as a list of str, the cache lock's scope for `part`)."""
    ids = [str(x) for x in ids]
    if len(set(ids)) != len(ids):
        counts = collections.Counter(ids)
        duplicates = sorted(x for x, n in counts.items() if n > 1)
        raise ValueError(f"ids must be unique. Received duplicates: {duplicates[:5]}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(
            f"shard_size must be a positive int. Received: shard_size={shard_size!r}")
    if out is not None and (out.ndim != 2 or len(out) != len(ids)):
        raise ValueError(
            f"out must be an array [len(ids), D] = [{len(ids)}, D]. Received: "
            f"out.shape={out.shape}")
    if part is None:
        return ids, None
    index, count = part
    if not (isinstance(count, int) and isinstance(index, int)
            and 0 <= index < count):
        raise ValueError("part must be (index, count) with 0 <= index < "
                         f"count. Received: part={part!r}")
    return ids, f"part{index}of{count}"


def _rounded(outputs, rows, ids, dtype):
    """`outputs` rounded like the stored copy, so hits and misses agree."""
    with np.errstate(over="ignore"):
        stored = outputs.astype(dtype)
    if np.isfinite(stored).all():
        return stored
    # Cached, they would be served to every later run.
    bad = ids[rows[int(np.argwhere(~np.isfinite(stored))[0][0])]]
    if np.isfinite(outputs).all():
        raise ValueError(
            f"Features of '{bad}' overflow the cache's {dtype} (largest "
            f"|value| {float(np.abs(outputs).max()):.3g}). Store them as "
            "float32: --feature_dtype=float32 (TrainConfig.feature_dtype).")
    raise ValueError(
        f"The backbone gave non-finite features (NaN or inf) for '{bad}': "
        "check its weights and the input images.")


class _Fill:
    """The missing rows of `features` as the model computes them, written to
    the cache a shard at a time."""

    def __init__(self, ids, missing, cache, features, shard_size, progress):
        self.ids, self.missing, self.cache = ids, missing, cache
        self.features, self.shard_size = features, shard_size
        self.progress, self.start = progress, time.perf_counter()
        self.written, self.pending, self.done = [], [], 0
        # Rows that came with their index: a mask, not a set of ints (1M
        # rows: 1 MB, where a set held ~60 MB).
        self.seen = np.zeros(len(ids), bool)

    def _rows(self, batch, size):
        if "index" not in batch:
            return self.missing[self.done:self.done + size]
        # Indexed elements stay matched to their ids even when the pipeline
        # drops an example (a file broken since the scan).
        rows = [int(i) for i in np.asarray(batch["index"])]
        self.seen[rows] = True
        return rows

    def add(self, batch, model):
        """Forwards one batch of `make_dataset`'s and stores its rows."""
        images = np.asarray(batch["image"])
        rows = self._rows(batch, len(images))
        outputs = np.asarray(model.predict_on_batch(images))
        dim = outputs.shape[-1] if self.features is None else self.features.shape[1]
        if outputs.shape != (len(images), dim) or len(rows) < len(outputs):
            # Unmatched rows may already pair ids with the wrong features in
            # this call's shards: never leave those behind.
            self.cache.discard(self.written)
            raise ValueError(
                f"Expected model outputs [B, {dim}] for the {len(self.missing)} "
                f"examples asked of make_dataset. Received: shape="
                f"{outputs.shape} after {self.done} examples")
        if self.features is None:
            self.features = np.zeros((len(self.ids), dim), np.float32)
        self.features[rows] = _rounded(outputs, rows, self.ids, self.cache.key.dtype)
        self.done += len(rows)
        self.pending.extend(rows)
        while len(self.pending) >= self.shard_size or (
                self.pending and self.done == len(self.missing)):
            self._write(self.shard_size)
            if self.progress is not None:
                rate = self.done / max(time.perf_counter() - self.start, 1e-9)
                self.progress(len(self.ids) - len(self.missing) + self.done,
                              len(self.ids), rate)

    def _write(self, count):
        shard, self.pending = self.pending[:count], self.pending[count:]
        self.written.append(self.cache.write_shard(
            [self.ids[i] for i in shard], self.features[shard]))

    def finish(self):
        """Raises if rows are missing, keeping only shards known to be right."""
        if self.done == len(self.missing):
            return
        if self.seen.any():
            # Every row came with its index: what was computed is right, so
            # keep it (a rerun then computes only what is still missing).
            if self.pending:
                self._write(len(self.pending))
            lost = [i for i in self.missing if not self.seen[i]]
            raise ValueError(
                f"{len(lost)} of {len(self.missing)} examples could not be read "
                f"(changed or deleted since the scan?), e.g. '{self.ids[lost[0]]}'. "
                f"The features of the other {self.done} are kept in the cache. "
                "Run again: the scan checks changed files anew and skips "
                "unreadable ones.")
        self.cache.discard(self.written)
        raise ValueError(
            f"make_dataset yielded {self.done} examples for {len(self.missing)} "
            "indices (a file unreadable since the scan?), so features and ids "
            "cannot be matched.")


def extract_features(ids, make_dataset, model, cache, *, shard_size=512,
                     progress=None, overlap=None, part=None, chunk_size=None,
                     out=None):
    """Features for `ids` (in that order), computing only the missing ones.

    Holds `cache.lock()` throughout, so concurrent processes on one cache
    folder take turns and never compute the same shard twice.

    Args:
      ids: list of unique example ids (str), e.g. from `example_id`.
      make_dataset: `make_dataset(indices)` -> batched `tf.data.Dataset` of
        dicts {"image": uint8 [B, S, S, 3], ...} yielding exactly the
        examples `ids[i]` for i in `indices` (list of int), in that order;
        or, with an "index" entry (int [B], positions in `ids`), any subset
        of them in any order.
      model: Frozen backbone (a `keras.Model` or anything with
        `predict_on_batch`), mapping images [B, S, S, 3] to float [B, D].
      cache: A `tlfast.features.FeatureCache`.
      shard_size: New examples per shard; a killed run loses at most one.
      progress: Optional `progress(done, total, images_per_sec)`, called after
        each shard; `done` counts cached plus computed examples out of
        `total = len(ids)`; the rate is over this call's computed examples.
      overlap: Whether the input pipeline decodes while the model runs
        (True), or each chunk is decoded before the model sees it (False;
        then `make_dataset` is called once per chunk and a chunk's pixels
        are held in memory). None: overlap unless the model runs on the CPU,
        where the two compete for the same cores.
      chunk_size: Examples a chunk (default `shard_size`); more than a shard
        lets small images go through the model in bigger batches.
      out: Optional float array [len(ids), D] that receives the features
        (of the cache's dtype, it holds them without a float32 copy).
      part: (index, count): compute only the missing examples at positions
        `i` of `ids` with `i % count == index`, one worker's part of an
        extraction sharded over `count` workers sharing `cache` (see
        `FeatureCache.lock`). The others' rows are returned as found in the
        cache so far (zeros if not yet there); a later call without `part`,
        once every worker is done, gathers them all.

    Returns:
      (features [len(ids), D]: `out`, or float32; `ExtractStats`). Computed
      features are rounded through the storage dtype, so a later cache hit
      is identical.
    """
    start = time.perf_counter()
    ids, scope = _checked(ids, shard_size, out, part)
    with cache.lock(scope):
        cache.remove_temporary_files()
        features, found, served = cache.lookup_shards(ids, out)
        missing = np.flatnonzero(~found).tolist()
        if part is not None:
            # By position in `ids`, not in `missing`: every worker then draws
            # the same partition, whatever the others have cached already.
            missing = [i for i in missing if i % part[1] == part[0]]
        fill = _Fill(ids, missing, cache, features, shard_size, progress)
        if overlap is None:
            overlap = not _model_on_cpu()
        for batch in _batches(make_dataset, missing, chunk_size or shard_size,
                              overlap):
            fill.add(batch, model)
        fill.finish()
        # The shards that served rows and those written now: indexing every
        # shard again left ~20 MB of Python strings' heap behind (160k ids;
        # +15-29 MiB RSS at the end of each view at 200k images).
        shards = cache.shard_files(
            served | {os.path.basename(path) for path in fill.written})
    features = fill.features
    if features is None:  # Only for ids == [] before anything was cached.
        features = np.zeros((0, 0), np.float32)
    # With `part`, "cached" counts what this call did not have to compute.
    stats = ExtractStats(len(ids), len(ids) - len(missing), fill.done,
                         time.perf_counter() - start, shards)
    return features, stats
