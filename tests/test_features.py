"""Tests for tlfast/features.py: keys, the cache on disk, damage."""

import dataclasses
import errno
import json
import logging
import os
import time

import numpy as np
import pytest

from feature_helpers import N
from feature_helpers import Counting
from feature_helpers import backbone  # noqa: F401  (a fixture)
from feature_helpers import example_ids
from feature_helpers import extract
from feature_helpers import feature_key
from feature_helpers import random_images
from feature_helpers import shard_paths
from tlfast import features as ft
from tlfast.data import sources


def test_digest_is_stable_and_covers_every_field():
    key = feature_key(view=1, augment="flip", seed=3)
    # The on-disk folder name: changing it orphans every existing cache.
    assert feature_key().digest() == "8582b06ff658f186c097"
    assert key.digest() == feature_key(view=1, augment="flip", seed=3).digest()
    changes = dict(backbone="other", weights="sha256:0123", image_size=32,
                   resize="crop", preprocessing="caffe", precision="mixed_float16",
                   view=2, augment="rotate", seed=4, dtype="float32",
                   source="/data/photos", decode=2)
    assert set(changes) == {f.name for f in dataclasses.fields(ft.FeatureKey)}
    digests = {key.digest()}
    for name, value in changes.items():
        digests.add(dataclasses.replace(key, **{name: value}).digest())
    assert len(digests) == len(changes) + 1


def test_clean_view_digest_ignores_augmentation():
    assert feature_key(augment="flip", seed=7).digest() == feature_key().digest()
    assert feature_key(view=1, augment="flip").digest() != feature_key(view=1).digest()


def test_key_rejects_bad_values():
    with pytest.raises(ValueError, match="dtype"):
        feature_key(dtype="int8")
    with pytest.raises(ValueError, match="view"):
        feature_key(view=-1)


def test_example_id_changes_with_size_and_mtime(flat_folder):
    entry = sources.list_image_folder(flat_folder).splits["all"][0]
    before = ft.example_id(entry)
    assert before.startswith(entry.relpath + "|")
    st = os.stat(entry.path)
    os.utime(entry.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert ft.example_id(entry) != before


def _flip_feature_byte(path):
    with np.load(path) as data:
        stored = data["features"].tobytes()
    raw = bytearray(path.read_bytes())
    offset = raw.find(stored)
    assert offset > 0
    raw[offset + len(stored) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _wrong_checksum(path):
    # A valid archive whose features do not match their checksum: only the
    # checksum can notice.
    with np.load(path) as data:
        ids, feats, checksum = data["ids"], data["features"], data["checksum"]
    with open(path, "wb") as f:
        np.savez(f, ids=ids, features=feats + 1, checksum=checksum)


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


@pytest.mark.parametrize("damage", [_flip_feature_byte, _wrong_checksum, _truncate])
def test_damaged_shard_is_deleted_and_recomputed(tmp_path, backbone, caplog, damage):
    first, _ = extract(tmp_path, backbone, shard_size=8)
    bad = shard_paths(tmp_path)[0]
    with np.load(bad) as data:
        bad_count = len(data["ids"])
    damage(bad)
    with caplog.at_level(logging.WARNING):
        _, found = ft.FeatureCache(tmp_path / "cache", feature_key()).lookup(example_ids())
    assert "unreadable feature shard" in caplog.text
    assert not bad.exists() and found.sum() == N - bad_count
    model = Counting(backbone)
    again, stats = extract(tmp_path, model, shard_size=8)
    assert stats.status == "partial" and stats.forwarded == bad_count
    np.testing.assert_array_equal(again, first)
    _, stats = extract(tmp_path, Counting(backbone))
    assert stats.status == "hit"


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"),
                                   MemoryError()])
def test_a_failure_of_the_moment_keeps_the_shard(tmp_path, backbone,
                                                 monkeypatch, error):
    extract(tmp_path, backbone, shard_size=8)
    shards = shard_paths(tmp_path)

    def failing_load(*args, **kwargs):
        raise error
    monkeypatch.setattr(ft.np, "load", failing_load)
    with pytest.raises(type(error)):
        ft.FeatureCache(tmp_path / "cache", feature_key()).lookup(example_ids())
    assert shard_paths(tmp_path) == shards  # Nothing deleted.


@pytest.mark.parametrize("manifest", [
    lambda m: {**m, "key": {**m["key"], "precision": "float64"}},
    lambda m: {**m, "format_version": m["format_version"] + 1},
    lambda m: {"key": m["key"]},
])
def test_mismatched_manifest_is_never_used(tmp_path, backbone, caplog, manifest):
    extract(tmp_path, backbone)
    path = tmp_path / "cache" / "features" / feature_key().digest() / "manifest.json"
    path.write_text(json.dumps(manifest(json.loads(path.read_text()))))
    with caplog.at_level(logging.WARNING):
        cache = ft.FeatureCache(tmp_path / "cache", feature_key())
    assert "Not using the feature cache" in caplog.text
    assert shard_paths(tmp_path) == [] and cache.lookup(example_ids())[0] is None
    model = Counting(backbone)
    _, stats = extract(tmp_path, model)
    assert stats.status == "miss" and model.examples == N
    assert json.loads(path.read_text())["key"] == feature_key().fields()


def test_feature_dim_mismatch_is_an_error(tmp_path, backbone):
    cache = ft.FeatureCache(tmp_path / "cache", feature_key())
    cache.write_shard(["a", "b"], np.ones((2, 6)))
    with pytest.raises(ValueError, match="does not match the key"):
        cache.write_shard(["c"], np.ones((1, 7)))
    feats, found = ft.FeatureCache(tmp_path / "cache", feature_key()).lookup(["b", "x"])
    np.testing.assert_array_equal(found, [True, False])
    np.testing.assert_array_equal(feats, [[1] * 6, [0] * 6])


def test_last_shard_wins_for_repeated_ids(tmp_path):
    cache = ft.FeatureCache(tmp_path / "cache", feature_key(dtype="float32"))
    assert cache.lookup(["a"])[0] is None
    cache.write_shard(["a", "b"], np.zeros((2, 3)))
    time.sleep(0.01)  # Distinct mtimes.
    cache.write_shard(["b", "c"], np.ones((2, 3)))
    feats, found = cache.lookup(["a", "b", "c"])
    assert found.all()
    np.testing.assert_array_equal(feats[:, 0], [0, 1, 1])


def test_a_complete_cache_is_read_from_read_only_storage(tmp_path, backbone,
                                                         request):
    images = random_images()
    expected, _ = extract(tmp_path, backbone, images=images)
    # Even without a lock file to open read-only.
    for path in (tmp_path / "cache").rglob(".lock"):
        path.unlink()
    request.getfixturevalue("read_only_storage")
    features, stats = extract(tmp_path, backbone, images=images)
    assert stats.forwarded == 0
    np.testing.assert_array_equal(features, expected)


@pytest.mark.parametrize("error,text", [
    (OSError(errno.EMFILE, "Too many open files"), None),
    (OSError(errno.EIO, "Input/output error"), None),
    (None, "{not json"),
])
def test_an_unreadable_manifest_deletes_nothing(tmp_path, backbone, monkeypatch,
                                                error, text):
    extract(tmp_path, backbone)
    shards = shard_paths(tmp_path)
    path = tmp_path / "cache" / "features" / feature_key().digest() / "manifest.json"
    if text:
        path.write_text(text)
    else:
        real_open = open

        def failing_open(name, *args, **kwargs):
            if str(name).endswith("manifest.json"):
                raise error
            return real_open(name, *args, **kwargs)
        monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises((OSError, ValueError), match="manifest"):
        ft.FeatureCache(tmp_path / "cache", feature_key())
    monkeypatch.undo()
    assert shard_paths(tmp_path) == shards
