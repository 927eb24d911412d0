"""Up-to-date outputs: re-running an identical job keeps what it already wrote.

A finished run records in run.json a *run key* (a hash of everything its
outputs depend on: the settings, the image folder's content, the weights,
the precision policy, and the tlfast, TensorFlow and Keras versions), the
size and modification time of every file it left in `--output_dir`, and the
feature-cache shards that held its features. A later run with the same key
whose files are all unchanged, and whose features are all still cached, has
nothing to recompute: like `make`, it keeps the outputs and only rewrites
metrics.json (its own timings, `"outputs_reused": true`). Anything else, and
`reuse_outputs=False`, runs the whole job (with the feature cache as usual)
and records its own outputs.

The key cannot see what lies outside tlfast's settings: the device (CPU or
GPU at the same precision policy), TF determinism or XLA flags, or code a
custom backbone builder calls; pass `--noreuse_outputs` when those change.
Random backbone weights, TFDS datasets and distributed runs always train.
"""

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import platform
import stat
import time

import keras
import numpy as np
import tensorflow as tf

import tlfast
from tlfast import backbones
from tlfast import features as features_lib
from tlfast import run_data
from tlfast import run_folder
from tlfast.data import prepare
from tlfast.data import sources

log = logging.getLogger("tlfast")

# Bump when what a run writes changes in a way the key does not show.
RUN_KEY_VERSION = 1
# Fields that change where or how a run works, never what it writes. (Not
# ram_budget_mb: it sizes fine-tuning's shuffle buffer.)
# precision: the policy it resolved to is in the key.
_NOT_IN_KEY = frozenset({"output_dir", "cache_dir", "feature_shard_size",
                         "data_service_address", "reuse_outputs", "precision"})
# Rewritten by every run (metrics.json) or by the one that trains (run.json).
_UNCHECKED = frozenset({run_folder.METRICS, run_folder.RUN_INFO,
                        run_folder.LOG})
_code_digest = None


def _source_digest():
    """Hash of tlfast's own Python sources (an edited checkout is a new version)."""
    global _code_digest
    if _code_digest is None:
        root = os.path.dirname(os.path.abspath(tlfast.__file__))
        digest = hashlib.sha256()
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode() + b"\0")
                    with open(path, "rb") as f:
                        digest.update(f.read())
        _code_digest = digest.hexdigest()[:16]
    return _code_digest


def _builder_identity(name):
    """A registered builder's name and source: editing it changes the key."""
    builder = backbones.get_backbone_builder(name)
    if builder is None:
        return None
    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError):
        source = ""
    return (f"{getattr(builder, '__module__', '')}."
            f"{getattr(builder, '__qualname__', repr(builder))}:"
            f"{hashlib.sha256(source.encode()).hexdigest()[:16]}")


def run_key(run, listing=None):
    """The hash of everything a run's outputs depend on, or None.

    None where reuse does not apply: random backbone
    weights (`weights=None`: they come from whatever global seed the caller
    set, which the key cannot see), a TFDS dataset (no content listing to
    compare), or a distributed run (every worker must take part in it).

    Args:
      run: The `tlfast.resolve.ResolvedRun`.
      listing: The folder's `run_data.list_folder`, if listed already.

    Returns:
      A hex string, or None.
    """
    config, spec = run.config, run.spec
    weights = backbones.weights_identity(config.weights, spec.name)
    if (weights == "none" or config.tfds_name
            or not config.data_dir or config.distribution != "none"):
        return None
    # Imported here: TFDS takes a moment to import, and only folders need it.
    from tlfast.data import folder_builder

    # The folder's listing (every file's relative path, size and mtime), the
    # split and scan settings: the identity of its prepared data.
    folder = folder_builder.folder_config(
        config.data_dir, validation_split=config.validation_split,
        seed=config.seed, max_pixels=config.max_pixels,
        skip_placeholders=config.skip_placeholders,
        follow_links=config.follow_links,
        labels=run_data.labels_of(config), listing=listing).name
    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in _NOT_IN_KEY}
    blob = json.dumps({
        "version": RUN_KEY_VERSION,
        "config": settings,
        "folder": folder,
        "backbone": [dataclasses.astuple(spec), _builder_identity(spec.name)],
        "image_size": run.image_size,
        "augment": run.augment,
        "weights": weights,
        "policy": run.policy,
        "backend": keras.backend.backend(),
        "versions": [tlfast.__version__, _source_digest(), tf.__version__,
                     keras.__version__, np.__version__,
                     platform.python_version()],
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def output_files(output_dir, since_ns=0):
    """relpath -> [size, mtime_ns] of the files written into `output_dir`.

    Regular files modified at or after `since_ns` (the run's start), but
    metrics.json, run.json and hidden files (temporary, probe and lock
    files): what other tools or users keep there does not count.
    """
    files = {}
    for folder, dirs, names in os.walk(output_dir):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            relpath = os.path.relpath(path, output_dir).replace(os.sep, "/")
            if relpath in _UNCHECKED or name.startswith("."):
                continue
            try:
                st = os.lstat(path)
            except OSError:  # Gone since the listing: not this run's.
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mtime_ns >= since_ns:
                files[relpath] = [st.st_size, st.st_mtime_ns]
    return files


def record(key, output_dir, extracted, since_ns):
    """The run.json entries that let a later identical run reuse the outputs.

    Call after every output but run.json is written.

    Args:
      key: The run's `run_key`.
      output_dir: The run's output folder.
      extracted: The run's `tlfast.extraction.Extracted`.
      since_ns: `time.time_ns()` at the start of the run (less a margin for
        file systems with coarse modification times).
    """
    return {"run_key": key,
            "outputs": output_files(output_dir, since_ns),
            "feature_shards": {digest: [list(s) for s in stats.shards]
                               for digest, stats in zip(extracted.digests,
                                                        extracted.stats)}}


def _stale(key, config, run, metrics):
    """Why the outputs in `config.output_dir` cannot be kept, or None.

    Args:
      key: This run's key.
      config: This run's `TrainConfig`.
      run: The folder's run.json, a dict.
      metrics: Its metrics.json, a dict or None.
    """
    if not run or not isinstance(metrics, dict):
        return "no finished run there"
    if run.get("run_key") != key:
        return ("the data, settings, weights or versions differ from its "
                "last run")
    if metrics.get("run_key") != key:
        return "metrics.json is not that run's"
    outputs = run.get("outputs")
    if not isinstance(outputs, dict) or "model.keras" not in outputs:
        return "model.keras was not recorded"
    for relpath, recorded in outputs.items():
        try:
            st = os.stat(os.path.join(config.output_dir, relpath))
        except OSError:
            return f"{relpath} is missing"
        if [st.st_size, st.st_mtime_ns] != recorded:
            return f"{relpath} changed since it was written"
    exports = metrics.get("exports") or {}
    if any(not isinstance(r, dict) or "error" in r for r in exports.values()):
        return "an export failed in its last run"
    feature_shards = run.get("feature_shards")
    if not isinstance(feature_shards, dict) or not feature_shards:
        return "its cached features were not recorded"
    cache_dir = os.path.expanduser(config.cache_dir)
    for digest, shards in feature_shards.items():
        folder = features_lib.feature_folder(cache_dir, digest)
        for name, size, mtime_ns in shards:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                return f"its cached features are gone from {folder}"
            if [st.st_size, st.st_mtime_ns] != [size, mtime_ns]:
                return f"its cached features in {folder} changed"
    return None


def _reused_metrics(metrics, config):
    """The earlier run's metrics, as this run that trained nothing reports them."""
    views = metrics.get("augment_views", config.augment_views or 0)
    features = (int(metrics["num_train"]) * (views + 1)
                + int(metrics["num_val"]))
    return {
        **metrics,
        "trained_timings_s": metrics.get("trained_timings_s",
                                         metrics.get("timings_s")),
        "feature_cache": "hit",
        "backbone_images_forwarded": 0,
        "features_cached": features,
        "scan_cached": 0,
        "outputs_reused": True,
    }


def reuse_outputs(key, run, folder, start):
    """Keeps the outputs of an identical earlier run, if they are intact.

    Args:
      key: This run's `run_key` (not None).
      run: The `tlfast.resolve.ResolvedRun`.
      folder: Its `tlfast.run_folder.RunFolder`.
      start: `time.perf_counter()` at the start of the run.

    Returns:
      The metrics dict written to metrics.json, or None when the job must
      run (the reason is logged).
    """
    config, out = run.config, folder.path
    # Malformed files are not a reason to fail, only to train.
    recorded = folder.read_run_info(strict=False).raw
    metrics = folder.read_metrics(strict=False)
    try:
        why = _stale(key, config, recorded, metrics)
        if not why:
            updated = _reused_metrics(metrics, config)
            skipped = [sources.Skipped(s["path"], s["reason"])
                       for s in metrics.get("skipped", [])]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        # Edited or foreign files: never a reason to fail, only to train.
        why = f"its run.json or metrics.json is not as tlfast wrote it ({e!r})"
    if why:
        if recorded:
            log.info("Training anew in %s: %s.", out, why)
        return None
    log.info("%s holds the outputs of an identical run (same data, settings, "
             "weights and versions; every file unchanged, every feature "
             "cached): kept. Pass --noreuse_outputs to train again.", out)
    prepare.log_skipped(skipped)
    metrics = updated
    seconds = round(time.perf_counter() - start, 3)
    metrics["timings_s"] = {"reuse_check": seconds, "total": seconds}
    folder.write_metrics(metrics)
    log.info("val_accuracy=%.4f  feature_cache=hit  forwarded=0  total=%.1fs "
             "(outputs reused)", metrics["val_accuracy"], seconds)
    return metrics
