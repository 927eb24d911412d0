"""Tests for tlfast.features: the disk cache of frozen-backbone features."""

import dataclasses
import errno
import json
import logging
import os
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import noise_image
from conftest import write_image
from tlfast import backbones as bb
from tlfast import features as ft
from tlfast.data import pipeline
from tlfast.data import sources

SIZE = 16
N = 20
BATCH = 3

TINY_SPEC = bb.BackboneSpec(
    name="tiny_features_test", constructor="TinyFeaturesTest", feature_dim=6,
    default_size=SIZE, preprocessing="tf", blocks=("conv",), min_size=SIZE)


def _build_tiny(input_shape, weights):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, strides=2, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def backbone():
    bb.register_backbone(TINY_SPEC, builder=_build_tiny, overwrite=True)
    yield bb.create_backbone(TINY_SPEC.name, None, SIZE)
    bb.unregister_backbone(TINY_SPEC.name)


class Counting:
    """Wraps a model, counting forwarded examples; can fail like a kill."""

    def __init__(self, model, fail_after_batches=None):
        self.model, self.fail_after = model, fail_after_batches
        self.batches = self.examples = 0

    def predict_on_batch(self, images):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches += 1
        self.examples += len(images)
        return self.model.predict_on_batch(images)


def _key(**changes):
    key = ft.FeatureKey(backbone=TINY_SPEC.name, weights="none", image_size=SIZE,
                        resize="resize", preprocessing="tf", precision="float32")
    return dataclasses.replace(key, **changes)


def _images(n=N, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def _array_dataset(images, batch=BATCH):
    def make_dataset(indices):
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[np.asarray(indices, int)]}).batch(batch)
    return make_dataset


def _ids(n=N):
    return [f"img_{i:03d}.jpg|100|{i}" for i in range(n)]


def _extract(tmp_path, model, key=None, ids=None, images=None, **kwargs):
    cache = ft.FeatureCache(tmp_path / "cache", key or _key())
    images = _images() if images is None else images
    return ft.extract_features(ids or _ids(len(images)), _array_dataset(images),
                               model, cache, **kwargs)


def _direct(model, images, batch=BATCH):
    return np.concatenate([np.asarray(model.predict_on_batch(images[i:i + batch]))
                           for i in range(0, len(images), batch)])


def _shards(tmp_path, key=None):
    folder = tmp_path / "cache" / "features" / (key or _key()).digest()
    return sorted(folder.glob("shard-*.npz"))


# --- Keys. ---

def test_digest_is_stable_and_covers_every_field():
    key = _key(view=1, augment="flip", seed=3)
    # The on-disk folder name: changing it orphans every existing cache.
    assert _key().digest() == "8582b06ff658f186c097"
    assert key.digest() == _key(view=1, augment="flip", seed=3).digest()
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
    assert _key(augment="flip", seed=7).digest() == _key().digest()
    assert _key(view=1, augment="flip").digest() != _key(view=1).digest()


def test_key_rejects_bad_values():
    with pytest.raises(ValueError, match="dtype"):
        _key(dtype="int8")
    with pytest.raises(ValueError, match="view"):
        _key(view=-1)


def test_stats_status():
    assert ft.ExtractStats(5, 5, 0, 0.0).status == "hit"
    assert ft.ExtractStats(5, 0, 5, 0.0).status == "miss"
    assert ft.ExtractStats(5, 2, 3, 0.0).status == "partial"


# --- Hits and misses. ---

def test_second_call_is_a_hit_without_a_backbone_pass(tmp_path, backbone):
    images, calls = _images(), []
    model = Counting(backbone)
    first, stats = _extract(tmp_path, model, shard_size=8,
                            progress=lambda *a: calls.append(a))
    assert (stats.status, stats.total, stats.cached, stats.forwarded) == (
        "miss", N, 0, N)
    assert model.examples == N and first.dtype == np.float32
    assert first.shape == (N, TINY_SPEC.feature_dim)
    assert len(_shards(tmp_path)) == 3  # 8 + 8 + 4.
    assert calls[-1][:2] == (N, N) and calls[-1][2] > 0

    def no_dataset(indices):
        raise AssertionError("make_dataset called on a full hit")
    cache = ft.FeatureCache(tmp_path / "cache", _key())
    model = Counting(backbone)
    second, stats = ft.extract_features(_ids(), no_dataset, model, cache)
    assert (stats.status, stats.cached, stats.forwarded) == ("hit", N, 0)
    assert model.batches == 0
    np.testing.assert_array_equal(first, second)
    # Requested order is honoured, not the stored order.
    order = np.random.default_rng(1).permutation(N)
    third, _ = ft.extract_features([_ids()[i] for i in order], no_dataset, model, cache)
    np.testing.assert_array_equal(third, first[order])
    np.testing.assert_allclose(first, _direct(backbone, images), atol=2e-3, rtol=2e-3)


def test_new_key_recomputes_everything(tmp_path, backbone):
    _extract(tmp_path, backbone)
    for key in (_key(weights="sha256:abcd"), _key(precision="mixed_float16")):
        model = Counting(backbone)
        _, stats = _extract(tmp_path, model, key=key)
        assert stats.status == "miss" and model.examples == N
    assert len(os.listdir(tmp_path / "cache" / "features")) == 3


def test_storage_dtypes(tmp_path, backbone):
    images = _images()
    reference = _direct(backbone, images)
    half, _ = _extract(tmp_path, backbone)
    exact, _ = _extract(tmp_path, backbone, key=_key(dtype="float32"))
    np.testing.assert_array_equal(exact, reference)
    np.testing.assert_allclose(half, reference, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(half, reference.astype(np.float16))
    with np.load(_shards(tmp_path)[0]) as data:
        assert data["features"].dtype == np.float16


# --- Real files: ids from example_id, pixels from the real pipeline. ---

def test_added_and_touched_files_are_the_only_ones_forwarded(
        tmp_path, flat_folder, backbone):
    def run():
        entries = sources.list_image_folder(flat_folder).splits["all"]
        ids = [ft.example_id(e) for e in entries]
        cache = ft.FeatureCache(tmp_path / "cache", _key())
        model = Counting(backbone)
        feats, stats = ft.extract_features(
            ids, lambda idx: pipeline.files_dataset(
                [entries[i] for i in idx], SIZE).batch(5), model, cache)
        return dict(zip([e.relpath for e in entries], feats)), stats, model

    first, stats, _ = run()
    assert stats.status == "miss" and stats.forwarded == 24
    write_image(flat_folder / "cats" / "new_a.jpg", noise_image(seed=50))
    write_image(flat_folder / "dogs" / "new_b.png", noise_image(seed=51), "PNG")
    second, stats, model = run()
    assert (stats.status, stats.cached, stats.forwarded) == ("partial", 24, 2)
    assert model.examples == 2
    for relpath, vector in first.items():
        np.testing.assert_array_equal(second[relpath], vector)

    path = flat_folder / "cats" / "img_003.jpg"
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third, stats, model = run()
    assert (stats.status, stats.forwarded, model.examples) == ("partial", 1, 1)
    np.testing.assert_allclose(third["cats/img_003.jpg"],
                               first["cats/img_003.jpg"], atol=1e-3)

    _, stats, model = run()
    assert stats.status == "hit" and model.batches == 0


def test_example_id_changes_with_size_and_mtime(flat_folder):
    entry = sources.list_image_folder(flat_folder).splits["all"][0]
    before = ft.example_id(entry)
    assert before.startswith(entry.relpath + "|")
    st = os.stat(entry.path)
    os.utime(entry.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert ft.example_id(entry) != before


# --- Interruption, corruption, mismatches. ---

def test_interrupted_run_resumes(tmp_path, backbone):
    reference, _ = _extract(tmp_path / "ref", backbone, key=_key(dtype="float32"))
    killed = Counting(backbone, fail_after_batches=4)  # 12 examples, 2 shards.
    with pytest.raises(KeyboardInterrupt):
        _extract(tmp_path, killed, key=_key(dtype="float32"), shard_size=5)
    assert len(_shards(tmp_path, _key(dtype="float32"))) == 2
    model = Counting(backbone)
    resumed, stats = _extract(tmp_path, model, key=_key(dtype="float32"),
                              shard_size=5)
    assert (stats.status, stats.cached, stats.forwarded) == ("partial", 10, N - 10)
    assert model.examples == N - 10
    np.testing.assert_allclose(resumed, reference, rtol=1e-6, atol=1e-6)


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
    first, _ = _extract(tmp_path, backbone, shard_size=8)
    bad = _shards(tmp_path)[0]
    with np.load(bad) as data:
        bad_count = len(data["ids"])
    damage(bad)
    with caplog.at_level(logging.WARNING):
        _, found = ft.FeatureCache(tmp_path / "cache", _key()).lookup(_ids())
    assert "unreadable feature shard" in caplog.text
    assert not bad.exists() and found.sum() == N - bad_count
    model = Counting(backbone)
    again, stats = _extract(tmp_path, model, shard_size=8)
    assert stats.status == "partial" and stats.forwarded == bad_count
    np.testing.assert_array_equal(again, first)
    _, stats = _extract(tmp_path, Counting(backbone))
    assert stats.status == "hit"


@pytest.mark.parametrize("error", [OSError(errno.EMFILE, "Too many open files"),
                                   MemoryError()])
def test_a_failure_of_the_moment_keeps_the_shard(tmp_path, backbone,
                                                 monkeypatch, error):
    _extract(tmp_path, backbone, shard_size=8)
    shards = _shards(tmp_path)

    def failing_load(*args, **kwargs):
        raise error
    monkeypatch.setattr(ft.np, "load", failing_load)
    with pytest.raises(type(error)):
        ft.FeatureCache(tmp_path / "cache", _key()).lookup(_ids())
    assert _shards(tmp_path) == shards  # Nothing deleted.


@pytest.mark.parametrize("manifest", [
    lambda m: {**m, "key": {**m["key"], "precision": "float64"}},
    lambda m: {**m, "format_version": m["format_version"] + 1},
    lambda m: {"key": m["key"]},
])
def test_mismatched_manifest_is_never_used(tmp_path, backbone, caplog, manifest):
    _extract(tmp_path, backbone)
    path = tmp_path / "cache" / "features" / _key().digest() / "manifest.json"
    path.write_text(json.dumps(manifest(json.loads(path.read_text()))))
    with caplog.at_level(logging.WARNING):
        cache = ft.FeatureCache(tmp_path / "cache", _key())
    assert "Not using the feature cache" in caplog.text
    assert _shards(tmp_path) == [] and cache.lookup(_ids())[0] is None
    model = Counting(backbone)
    _, stats = _extract(tmp_path, model)
    assert stats.status == "miss" and model.examples == N
    assert json.loads(path.read_text())["key"] == _key().fields()


def test_dataset_yielding_too_few_examples_leaves_no_shards(tmp_path, backbone):
    images, ids = _images(), _ids()
    cache = ft.FeatureCache(tmp_path / "cache", _key())

    def short(indices):  # Like a file dropped by `ignore_errors`.
        return _array_dataset(images)(indices[:-1])
    with pytest.raises(ValueError, match="cannot be matched"):
        ft.extract_features(ids, short, backbone, cache, shard_size=4)
    assert _shards(tmp_path) == []
    with pytest.raises(ValueError, match="unique"):
        ft.extract_features(ids + ids[:1], short, backbone, cache)


def test_indexed_dataset_missing_an_example_keeps_the_others(tmp_path, backbone):
    # With "index", every row is matched even when the pipeline drops a file
    # (changed since the scan): the others' features stay cached, the error
    # names the missing one, and a rerun forwards only it.
    images, ids = _images(), _ids()
    cache = ft.FeatureCache(tmp_path / "cache", _key())
    lost = 5

    def dropping(indices):
        kept = [i for i in indices if i != lost]
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[kept], "index": np.asarray(kept, np.int32)}).batch(BATCH)
    with pytest.raises(ValueError, match=f"1 of {N} examples could not be read"
                       f".*{ids[lost]}.*kept in the cache"):
        ft.extract_features(ids, dropping, backbone, cache, shard_size=4)
    features, found = cache.lookup(ids)
    assert found.sum() == N - 1 and not found[lost]
    _, stats = ft.extract_features(ids, _array_dataset(images), backbone, cache)
    assert stats.forwarded == 1


class _Scaled:
    def __init__(self, model, scale):
        self.model, self.scale = model, scale

    def predict_on_batch(self, x):
        return np.asarray(self.model.predict_on_batch(x)) * self.scale


@pytest.mark.parametrize("scale,match", [(1e9, "overflow the cache's float16"),
                                         (np.nan, "non-finite features")])
def test_features_that_do_not_fit_the_storage_dtype_are_refused(
        tmp_path, backbone, scale, match):
    with pytest.raises(ValueError, match=match):
        _extract(tmp_path, _Scaled(backbone, scale))
    assert _shards(tmp_path) == []  # Nothing non-finite is cached.


def test_feature_dim_mismatch_is_an_error(tmp_path, backbone):
    cache = ft.FeatureCache(tmp_path / "cache", _key())
    cache.write_shard(["a", "b"], np.ones((2, 6)))
    with pytest.raises(ValueError, match="does not match the key"):
        cache.write_shard(["c"], np.ones((1, 7)))
    feats, found = ft.FeatureCache(tmp_path / "cache", _key()).lookup(["b", "x"])
    np.testing.assert_array_equal(found, [True, False])
    np.testing.assert_array_equal(feats, [[1] * 6, [0] * 6])


def test_last_shard_wins_for_repeated_ids(tmp_path):
    cache = ft.FeatureCache(tmp_path / "cache", _key(dtype="float32"))
    assert cache.lookup(["a"])[0] is None
    cache.write_shard(["a", "b"], np.zeros((2, 3)))
    time.sleep(0.01)  # Distinct mtimes.
    cache.write_shard(["b", "c"], np.ones((2, 3)))
    feats, found = cache.lookup(["a", "b", "c"])
    assert found.all()
    np.testing.assert_array_equal(feats[:, 0], [0, 1, 1])


def test_second_process_waits_then_forwards_nothing(tmp_path, backbone):
    holder = ft.FeatureCache(tmp_path / "cache", _key())
    waiter = ft.FeatureCache(tmp_path / "cache", _key())  # Own lock descriptor.
    result = {}

    def wait_and_extract():
        result["value"] = ft.extract_features(
            _ids(), _array_dataset(_images()), Counting(backbone), waiter)
    thread = threading.Thread(target=wait_and_extract)
    with holder.lock():
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()  # Blocked on the lock.
        _, stats = ft.extract_features(_ids(), _array_dataset(_images()),
                                       backbone, holder)
        assert stats.status == "miss"
    thread.join(timeout=30)
    assert result["value"][1].status == "hit"


def _shard_ids(cache):
    ids = []
    for name in os.listdir(cache.path):
        if name.startswith("shard-"):
            with np.load(os.path.join(cache.path, name)) as data:
                ids.extend(data["ids"].tolist())
    return ids


def test_parts_run_side_by_side_and_cover_every_example_once(tmp_path, backbone):
    images, ids = _images(), _ids()
    whole, _ = ft.extract_features(ids, _array_dataset(images), backbone,
                                   ft.FeatureCache(tmp_path / "ref", _key()))
    caches = [ft.FeatureCache(tmp_path / "cache", _key()) for _ in range(3)]
    counters = [Counting(backbone) for _ in range(2)]
    # Worker 1 holds its part's lock while worker 0 extracts: no waiting.
    with caches[1].lock("part1of2"):
        _, stats0 = ft.extract_features(ids, _array_dataset(images), counters[0],
                                        caches[0], part=(0, 2))
    _, stats1 = ft.extract_features(ids, _array_dataset(images), counters[1],
                                    caches[1], part=(1, 2))
    assert (counters[0].examples, counters[1].examples) == (N // 2, N // 2)
    assert (stats0.forwarded, stats1.forwarded) == (N // 2, N // 2)
    # The gathering call forwards nothing and matches a single extraction.
    gathered, stats = ft.extract_features(ids, _array_dataset(images),
                                          Counting(backbone), caches[2])
    assert stats.status == "hit"
    np.testing.assert_array_equal(gathered, whole)
    assert sorted(_shard_ids(caches[2])) == sorted(ids)  # Each one once.


def test_a_whole_extraction_excludes_the_parts(tmp_path, backbone):
    holder = ft.FeatureCache(tmp_path / "cache", _key())
    worker = ft.FeatureCache(tmp_path / "cache", _key())
    done = threading.Event()

    def run_part():
        ft.extract_features(_ids(), _array_dataset(_images()), backbone, worker,
                            part=(0, 2))
        done.set()
    with holder.lock():
        thread = threading.Thread(target=run_part)
        thread.start()
        assert not done.wait(0.3)  # Blocked on the shared lock.
    thread.join(timeout=30)
    assert done.is_set()


def test_a_part_keeps_other_parts_temporary_files(tmp_path, backbone):
    cache = ft.FeatureCache(tmp_path / "cache", _key())
    others = os.path.join(cache.path, ".tmp-part1of2-abc.npz")
    mine = os.path.join(cache.path, ".tmp-part0of2-abc.npz")
    for path in (others, mine):
        open(path, "wb").close()
    ft.extract_features(_ids(), _array_dataset(_images()), backbone, cache,
                        part=(0, 2))
    assert os.path.exists(others) and not os.path.exists(mine)
    ft.extract_features(_ids(), _array_dataset(_images()), backbone, cache)
    assert not os.path.exists(others)  # An unscoped holder cleans them all.


@pytest.mark.parametrize("part", [(2, 2), (-1, 2), (0, 0), ("0", 2)])
def test_bad_part_is_refused(tmp_path, backbone, part):
    with pytest.raises(ValueError, match="Received: part="):
        ft.extract_features(_ids(), _array_dataset(_images()), backbone,
                            ft.FeatureCache(tmp_path / "c", _key()), part=part)


def test_a_complete_cache_is_read_from_read_only_storage(tmp_path, backbone,
                                                         request):
    images = _images()
    expected, _ = _extract(tmp_path, backbone, images=images)
    # Even without a lock file to open read-only.
    for path in (tmp_path / "cache").rglob(".lock"):
        path.unlink()
    request.getfixturevalue("read_only_storage")
    features, stats = _extract(tmp_path, backbone, images=images)
    assert stats.forwarded == 0
    np.testing.assert_array_equal(features, expected)


@pytest.mark.parametrize("error,text", [
    (OSError(errno.EMFILE, "Too many open files"), None),
    (OSError(errno.EIO, "Input/output error"), None),
    (None, "{not json"),
])
def test_an_unreadable_manifest_deletes_nothing(tmp_path, backbone, monkeypatch,
                                                error, text):
    _extract(tmp_path, backbone)
    shards = _shards(tmp_path)
    path = tmp_path / "cache" / "features" / _key().digest() / "manifest.json"
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
        ft.FeatureCache(tmp_path / "cache", _key())
    monkeypatch.undo()
    assert _shards(tmp_path) == shards


class _Mean:
    """A backbone whose feature of image i (all pixels i) is [i, i, i]."""

    def predict_on_batch(self, x):
        return np.asarray(x, np.float32).mean(axis=(1, 2))


def _numbered(n, calls=None, offset=0):
    """make_dataset over n 4-px images, image i all pixels i; logs calls."""
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 4, 4, 3), np.uint8)

    def make_dataset(indices):
        if calls is not None:
            calls.append(list(indices))
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[[i + offset for i in indices]]}).batch(4)

    return make_dataset


def test_chunks_of_several_shards_cache_every_shard(tmp_path):
    ids = [f"x{i}" for i in range(10)]
    calls = []
    make_dataset = _numbered(10, calls)

    cache = ft.FeatureCache(str(tmp_path), _key())
    got, stats = ft.extract_features(
        ids, make_dataset, _Mean(), cache, shard_size=3, chunk_size=6,
        overlap=False)
    assert calls == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    np.testing.assert_allclose(got[:, 0], np.arange(10))
    assert len(stats.shards) == 4  # Shards of 3, 3, 3, 1.
    again, stats = ft.extract_features(
        ids, make_dataset, _Mean(), cache, shard_size=3, overlap=False)
    assert stats.cached == 10 and len(calls) == 2
    np.testing.assert_array_equal(again, got)


def test_stats_name_the_shards_that_hold_the_ids(tmp_path):
    # The shards that served rows plus those written now; not a shard of
    # other ids in the same folder.
    ids = [f"x{i}" for i in range(8)]
    cache = ft.FeatureCache(str(tmp_path), _key())
    _, first = ft.extract_features(ids[:6], _numbered(8), _Mean(), cache,
                                   shard_size=3, overlap=False)
    old = {name for name, _, _ in first.shards}
    assert len(old) == 2
    got, stats = ft.extract_features(ids[3:], _numbered(8, offset=3), _Mean(),
                                     cache, shard_size=3, overlap=False)
    np.testing.assert_allclose(got[:, 0], np.arange(3, 8))
    names = [name for name, _, _ in stats.shards]
    on_disk = set(os.listdir(cache.path))
    new = {n for n in on_disk if n.startswith("shard-")} - old
    holding_x3 = [n for n in old
                  if "x3" in np.load(os.path.join(cache.path, n))["ids"]]
    assert stats.cached == 3 and stats.forwarded == 2
    assert names == sorted(set(holding_x3) | new) and len(names) == 2
    for name, size, mtime_ns in stats.shards:
        st = os.stat(os.path.join(cache.path, name))
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns)
