"""A disk cache of frozen-backbone pooled features.

A frozen backbone's output never changes, so each image goes through it once
and the head trains on the stored vectors in seconds. Everything besides the
image content that determines a vector is a `FeatureKey`, with its own folder:

    <cache_dir>/features/<key.digest()>/
        manifest.json           # key fields, feature_dim, format version
        shard-<16 hex>.npz      # "ids" [n] str, "features" [n, D], "checksum"
        .lock                   # flock held by `feature_pass.extract_features`

A changed or added image has a new `example_id`, so only it is recomputed; an
unchanged run does no backbone pass. Shards are renamed into place, so no
reader sees half of one and a killed run loses at most the shard it was
filling; a shard that fails to load or to match its checksum is deleted and
its examples recomputed.
"""

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os

import numpy as np

from tlfast import atomic
from tlfast import locks
from tlfast.data.sources import example_id  # noqa: F401  (ids of files)

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")
_MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class FeatureKey:
    """Everything besides the image content that determines a feature vector.

    Attributes:
      backbone: Registry name of the backbone.
      weights: `backbones.weights_identity(...)`, e.g. "imagenet", "none",
        "sha256:...".
      image_size: Side of the square input images.
      resize: Pipeline resize mode.
      preprocessing: The backbone spec's preprocessing mode.
      precision: Compute precision, e.g. "float32", "mixed_float16".
      view: 0 for the clean image; k >= 1 for the k-th augmented view.
      augment: Canonical augmentation spec (only used when view >= 1).
      seed: Augmentation seed (only used when view >= 1).
      dtype: Storage dtype, "float16" or "float32".
      decode: `tlfast.data.pipeline.DECODE_VERSION` of the pixels (0: not
        given; left out of the digest, as `source`).
      source: Where the examples come from (the data folder's real path, or
        "tfds:<name>"): example ids are relative to it, so two copies of a
        folder (same layout, sizes and times) do not share features.
    """

    backbone: str
    weights: str
    image_size: int
    resize: str
    preprocessing: str
    precision: str
    view: int = 0
    augment: str = ""
    seed: int = 0
    dtype: str = "float16"
    source: str = ""
    decode: int = 0

    def __post_init__(self):
        ints = (self.image_size, self.view, self.seed)
        if self.dtype not in STORAGE_DTYPES or not all(
                type(v) is int for v in ints) or self.image_size < 1 or self.view < 0:
            raise ValueError(
                f"Expected dtype in {STORAGE_DTYPES}, image_size >= 1, view >= 0 "
                f"and an int seed. Received: dtype={self.dtype!r}, image_size="
                f"{self.image_size!r}, view={self.view!r}, seed={self.seed!r}")

    def fields(self):
        """The key as a JSON-able dict; augment/seed are blanked for view 0.

        The clean view does not depend on the augmentation, so it is shared
        between runs that differ only in augmentation settings.
        """
        fields = dataclasses.asdict(self)
        if self.view == 0:
            fields.update(augment="", seed=0)
        # Keys made without them (before they existed, or by a library
        # caller) keep their digests, so their caches stay found.
        if not self.source:
            del fields["source"]
        if not self.decode:
            del fields["decode"]
        return fields

    def digest(self):
        """Stable hex id: first 20 hex digits of sha256(sorted JSON of fields)."""
        text = json.dumps(self.fields(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _drop_files(paths):
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


# Failures of the moment, not of the file: a shard is never deleted for them.
_TRANSIENT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR,
                     errno.EAGAIN}


def _raise_if_transient(error):
    if isinstance(error, MemoryError) or (
            isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS):
        raise error


def _stat_key(path):
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def feature_folder(cache_dir, digest):
    """Where the shards of the `FeatureKey` with this digest live."""
    return os.path.join(os.fspath(cache_dir), "features", digest)


class FeatureCache:
    """The shards of one `FeatureKey`, under `<cache_dir>/features/<digest>/`.

    A folder whose manifest does not match the key (or is unreadable) is
    never used: its files are removed, with a warning, and it starts empty.

    Args:
      cache_dir: Root cache folder (shared with the other tlfast caches).
      key: A `FeatureKey`.
      lock_timeout: Seconds to wait for another process's lock (None: no
        limit; see `tlfast.locks.lock`).
    """

    def __init__(self, cache_dir, key, lock_timeout=None):
        if not isinstance(key, FeatureKey):
            raise TypeError(f"Expected a FeatureKey. Received: key={key!r}")
        self.key, self.lock_timeout = key, lock_timeout
        self.path = feature_folder(cache_dir, key.digest())
        os.makedirs(self.path, exist_ok=True)
        self._locked, self._scope = False, None
        self._shard_ids = {}  # name -> (stat key, ids array), read once.
        manifest, problem = self._read_manifest()
        if problem:
            with self.lock():  # Never clear a folder another process fills.
                manifest, problem = self._read_manifest()
                if problem:
                    logging.warning("Not using the feature cache '%s': %s. "
                                    "Recomputing its features.", self.path, problem)
                    self._clear()
                    manifest = None
        self.feature_dim = manifest["feature_dim"] if manifest else None

    def _known_dim(self):
        """feature_dim, re-read in case another process wrote the manifest."""
        if self.feature_dim is None:
            manifest, _ = self._read_manifest()
            self.feature_dim = manifest["feature_dim"] if manifest else None
        return self.feature_dim

    def _expected_manifest(self, feature_dim):
        return {"format_version": FORMAT_VERSION, "key": self.key.fields(),
                "feature_dim": feature_dim}

    def _read_manifest(self):
        """Returns (manifest or None, why the folder must not be used or None)."""
        path = os.path.join(self.path, _MANIFEST)
        if not os.path.exists(path):
            return None, ("shards without a manifest" if self._shard_names()
                          else None)
        # Only a manifest that parses and does not match is a reason to
        # delete: a failure of the moment (EMFILE, EIO on NFS) or a file that
        # is not JSON raises instead, and every shard stays.
        try:
            with open(path) as f:
                manifest = json.load(f)
        except OSError as e:
            raise OSError(
                f"Cannot read the feature cache manifest '{path}': "
                f"{e.strerror or e}. Nothing was deleted; run again once the "
                "storage answers.") from e
        except ValueError as e:
            raise ValueError(
                f"The feature cache manifest '{path}' is not JSON ({e}): not "
                "written by tlfast. Delete the folder "
                f"'{self.path}' to recompute its features.") from e
        try:
            dim = manifest["feature_dim"]
            expected = self._expected_manifest(dim)
        except (KeyError, TypeError) as e:
            return None, f"manifest without a feature_dim ({e!r})"
        if manifest != expected or not isinstance(dim, int) or dim < 1:
            return None, (f"manifest {manifest} does not match the expected "
                          f"{expected}")
        return manifest, None

    def _shard_names(self):
        return sorted(n for n in os.listdir(self.path)
                      if n.startswith("shard-") and n.endswith(".npz"))

    def _clear(self):
        for name in os.listdir(self.path):
            if name != ".lock":
                os.remove(os.path.join(self.path, name))
        self._shard_ids.clear()

    @contextlib.contextmanager
    def lock(self, scope=None):
        """Holds `tlfast.locks` flocks on the folder's lock files.

        `extract_features` holds it for its whole run, so a second process on
        the same folder waits, then finds the first one's shards and forwards
        nothing. With a `scope` (one worker's part of a sharded extraction)
        `<folder>/.lock` is held shared and `<folder>/.lock-<scope>`
        exclusively: the workers of one job run side by side, while a whole
        (unscoped) extraction still excludes them all. Re-entrant within one
        `FeatureCache`. Call `write_shard` directly only while holding it:
        the lock holder deletes temporary files that killed runs of its scope
        left.
        """
        if self._locked:
            yield
            return
        os.makedirs(self.path, exist_ok=True)  # In case it was deleted since.
        waiting = f"Waiting for another process using the feature cache '{self.path}'."
        with contextlib.ExitStack() as stack:
            stack.enter_context(locks.lock(
                os.path.join(self.path, ".lock"), shared=bool(scope),
                waiting_message=waiting, timeout=self.lock_timeout))
            if scope:
                stack.enter_context(locks.lock(
                    os.path.join(self.path, f".lock-{scope}"),
                    waiting_message=waiting, timeout=self.lock_timeout))
            self._locked, self._scope = True, scope
            try:
                yield
            finally:
                self._locked, self._scope = False, None

    def _tmp_prefix(self):
        return f".tmp-{self._scope}-" if self._scope else ".tmp-"

    def _drop_shard(self, name, stat_key, error):
        """Deletes a bad shard, unless it was replaced since it was read."""
        logging.warning("Deleting the unreadable feature shard '%s' (%s); its "
                        "examples will be recomputed.", name, error)
        path = os.path.join(self.path, name)
        with contextlib.suppress(OSError):
            if _stat_key(path) == stat_key:
                os.remove(path)
        self._shard_ids.pop(name, None)

    def _index(self, exclude=()):
        """id -> shard name over the shards on disk; the newest shard wins."""
        entries = []
        for name in set(self._shard_names()) - set(exclude):
            path = os.path.join(self.path, name)
            try:
                stat_key = _stat_key(path)
            except OSError:  # Deleted by another process since the listing.
                continue
            cached = self._shard_ids.get(name)
            if cached is None or cached[0] != stat_key:
                try:
                    with np.load(path) as data:
                        ids = data["ids"]
                except Exception as e:  # Any failure means: recompute it.
                    _raise_if_transient(e)
                    self._drop_shard(name, stat_key, e)
                    continue
                self._shard_ids[name] = cached = (stat_key, ids)
            entries.append((stat_key[2], name, cached[1]))
        index = {}
        for _, name, ids in sorted(entries):
            index.update(dict.fromkeys(ids.tolist(), name))
        return index

    def _load_features(self, name):
        """Returns (ids [n], features [n, D] key.dtype), or None if it is bad."""
        path = os.path.join(self.path, name)
        stat_key = self._shard_ids[name][0]
        try:
            with np.load(path) as data:
                ids, features = data["ids"], data["features"]
                checksum = str(data["checksum"])
            if features.dtype != self.key.dtype or features.shape != (
                    len(ids), self.feature_dim):
                raise ValueError(f"features {features.dtype} {features.shape}")
            if hashlib.sha256(features.tobytes()).hexdigest() != checksum:
                raise ValueError("checksum mismatch")
        except Exception as e:  # Any failure means: recompute it.
            _raise_if_transient(e)
            self._drop_shard(name, stat_key, e)
            return None
        return ids, features

    def lookup(self, ids, out=None):
        """Features of the cached examples among `ids`.

        Args:
          ids: Sequence of example ids (str).
          out: Optional float array [n, D] to fill (e.g. of the storage
            dtype: no float32 copy); rows not found are left as they are.

        Returns:
          (features, found): `out` or float32 [n, D] with zero rows where not
          found (None when nothing is found, D is not yet known and no `out`
          is given), and bool [n].
        """
        features, found, _ = self.lookup_shards(ids, out)
        return features, found

    def lookup_shards(self, ids, out=None):
        """`lookup`, and the set of names of the shards that served rows."""
        ids = list(ids)
        found, served = np.zeros(len(ids), bool), set()
        if self._known_dim() is None:
            return out, found, served
        if out is None:
            out = np.zeros((len(ids), self.feature_dim), np.float32)
        elif out.shape != (len(ids), self.feature_dim):
            raise ValueError(
                f"out must have the shape [{len(ids)}, {self.feature_dim}] of "
                f"the ids and the cached features. Received: out.shape="
                f"{out.shape}")
        bad = set()
        while True:  # Again without bad shards, which older ones may back up.
            num_bad, index, rows_by_shard = len(bad), self._index(bad), {}
            for i, example in enumerate(ids):
                if not found[i] and example in index:
                    rows_by_shard.setdefault(index[example], []).append(i)
            for name, rows in rows_by_shard.items():
                loaded = self._load_features(name)
                if loaded is None:
                    bad.add(name)
                    continue
                position = {x: j for j, x in enumerate(loaded[0].tolist())}
                rows = np.asarray(rows, np.intp)
                source = np.fromiter((position[ids[i]] for i in rows), np.intp,
                                     len(rows))
                out[rows] = loaded[1][source]
                found[rows] = True
                served.add(name)
            if len(bad) == num_bad:
                return out, found, served

    def shard_files(self, names):
        """(name, size, mtime_ns) of the shards `names`, sorted by name."""
        shards = []
        for name in sorted(names):
            with contextlib.suppress(OSError):  # Deleted since the listing.
                st = os.stat(os.path.join(self.path, name))
                shards.append((name, st.st_size, st.st_mtime_ns))
        return tuple(shards)

    def write_shard(self, ids, features):
        """Stores one shard atomically (temporary file, then `os.replace`).

        Args:
          ids: Sequence of n example ids (str).
          features: float [n, D]; stored as `key.dtype`.

        Returns:
          The shard's path.
        """
        ids = np.asarray([str(x) for x in ids], dtype=str)
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != len(ids) or not len(ids):
            raise ValueError(
                "Expected features of shape [len(ids), D] with len(ids) > 0. "
                f"Received: len(ids)={len(ids)}, features.shape={features.shape}")
        dim = int(features.shape[1])
        if self._known_dim() is None:
            atomic.write_json(os.path.join(self.path, _MANIFEST),
                              self._expected_manifest(dim))
            self.feature_dim = dim
        elif dim != self.feature_dim:
            raise ValueError(
                f"The feature cache '{self.path}' holds {self.feature_dim}-dim "
                f"features, so the model does not match the key {self.key}. "
                f"Received: features.shape={features.shape}")
        stored = np.ascontiguousarray(features, dtype=self.key.dtype)
        checksum = hashlib.sha256(stored.tobytes()).hexdigest()
        name = "shard-" + hashlib.sha256(
            "\n".join(ids.tolist()).encode("utf-8")).hexdigest()[:16] + ".npz"
        path = os.path.join(self.path, name)
        with atomic.open_atomic(path, "wb", prefix=self._tmp_prefix()) as f:
            np.savez(f, ids=ids, features=stored, checksum=np.array(checksum))
        return path

    def discard(self, paths):
        """Deletes shards that `write_shard` returned and that must not stay
        (their ids and features may be mismatched)."""
        _drop_files(paths)

    def remove_temporary_files(self):
        """Deletes what killed writers left; only call while holding `lock`.

        An unscoped holder excludes every writer, so it deletes all temporary
        files; a scoped one only those of its own scope (the other workers
        may be writing theirs).
        """
        prefix = self._tmp_prefix()
        _drop_files(os.path.join(self.path, name) for name in os.listdir(self.path)
                    if name.startswith(prefix))
