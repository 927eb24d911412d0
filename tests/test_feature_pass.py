"""Tests for tlfast/feature_pass.py: hits, misses, resumption, parts, chunks."""

import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import noise_image
from conftest import write_image
from feature_helpers import BATCH
from feature_helpers import N
from feature_helpers import SIZE
from feature_helpers import TINY_SPEC
from feature_helpers import Counting
from feature_helpers import array_dataset
from feature_helpers import backbone  # noqa: F401  (a fixture)
from feature_helpers import direct
from feature_helpers import example_ids
from feature_helpers import extract
from feature_helpers import feature_key
from feature_helpers import Mean
from feature_helpers import numbered
from feature_helpers import random_images
from feature_helpers import shard_paths
from tlfast import feature_pass as fp
from tlfast import features as ft
from tlfast.data import pipeline
from tlfast.data import sources


def test_stats_status():
    assert fp.ExtractStats(5, 5, 0, 0.0).status == "hit"
    assert fp.ExtractStats(5, 0, 5, 0.0).status == "miss"
    assert fp.ExtractStats(5, 2, 3, 0.0).status == "partial"


def test_second_call_is_a_hit_without_a_backbone_pass(tmp_path, backbone):
    images, calls = random_images(), []
    model = Counting(backbone)
    first, stats = extract(tmp_path, model, shard_size=8,
                           progress=lambda *a: calls.append(a))
    assert (stats.status, stats.total, stats.cached, stats.forwarded) == (
        "miss", N, 0, N)
    assert model.examples == N and first.dtype == np.float32
    assert first.shape == (N, TINY_SPEC.feature_dim)
    assert len(shard_paths(tmp_path)) == 3  # 8 + 8 + 4.
    assert calls[-1][:2] == (N, N) and calls[-1][2] > 0

    def no_dataset(indices):
        raise AssertionError("make_dataset called on a full hit")
    cache = ft.FeatureCache(tmp_path / "cache", feature_key())
    model = Counting(backbone)
    second, stats = fp.extract_features(example_ids(), no_dataset, model, cache)
    assert (stats.status, stats.cached, stats.forwarded) == ("hit", N, 0)
    assert model.batches == 0
    np.testing.assert_array_equal(first, second)
    # Requested order is honoured, not the stored order.
    order = np.random.default_rng(1).permutation(N)
    third, _ = fp.extract_features([example_ids()[i] for i in order], no_dataset, model, cache)
    np.testing.assert_array_equal(third, first[order])
    np.testing.assert_allclose(first, direct(backbone, images), atol=2e-3, rtol=2e-3)


def test_new_key_recomputes_everything(tmp_path, backbone):
    extract(tmp_path, backbone)
    for key in (feature_key(weights="sha256:abcd"), feature_key(precision="mixed_float16")):
        model = Counting(backbone)
        _, stats = extract(tmp_path, model, key=key)
        assert stats.status == "miss" and model.examples == N
    assert len(os.listdir(tmp_path / "cache" / "features")) == 3


def test_storage_dtypes(tmp_path, backbone):
    images = random_images()
    reference = direct(backbone, images)
    half, _ = extract(tmp_path, backbone)
    exact, _ = extract(tmp_path, backbone, key=feature_key(dtype="float32"))
    np.testing.assert_array_equal(exact, reference)
    np.testing.assert_allclose(half, reference, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(half, reference.astype(np.float16))
    with np.load(shard_paths(tmp_path)[0]) as data:
        assert data["features"].dtype == np.float16


def test_added_and_touched_files_are_the_only_ones_forwarded(
        tmp_path, flat_folder, backbone):
    def run():
        entries = sources.list_image_folder(flat_folder).splits["all"]
        ids = [ft.example_id(e) for e in entries]
        cache = ft.FeatureCache(tmp_path / "cache", feature_key())
        model = Counting(backbone)
        feats, stats = fp.extract_features(
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


def test_interrupted_run_resumes(tmp_path, backbone):
    reference, _ = extract(tmp_path / "ref", backbone, key=feature_key(dtype="float32"))
    killed = Counting(backbone, fail_after_batches=4)  # 12 examples, 2 shards.
    with pytest.raises(KeyboardInterrupt):
        extract(tmp_path, killed, key=feature_key(dtype="float32"), shard_size=5)
    assert len(shard_paths(tmp_path, feature_key(dtype="float32"))) == 2
    model = Counting(backbone)
    resumed, stats = extract(tmp_path, model, key=feature_key(dtype="float32"),
                             shard_size=5)
    assert (stats.status, stats.cached, stats.forwarded) == ("partial", 10, N - 10)
    assert model.examples == N - 10
    np.testing.assert_allclose(resumed, reference, rtol=1e-6, atol=1e-6)


def test_dataset_yielding_too_few_examples_leaves_no_shards(tmp_path, backbone):
    images, ids = random_images(), example_ids()
    cache = ft.FeatureCache(tmp_path / "cache", feature_key())

    def short(indices):  # Like a file dropped by `ignore_errors`.
        return array_dataset(images)(indices[:-1])
    with pytest.raises(ValueError, match="cannot be matched"):
        fp.extract_features(ids, short, backbone, cache, shard_size=4)
    assert shard_paths(tmp_path) == []
    with pytest.raises(ValueError, match="unique"):
        fp.extract_features(ids + ids[:1], short, backbone, cache)


def test_indexed_dataset_missing_an_example_keeps_the_others(tmp_path, backbone):
    # With "index", every row is matched even when the pipeline drops a file
    # (changed since the scan): the others' features stay cached, the error
    # names the missing one, and a rerun forwards only it.
    images, ids = random_images(), example_ids()
    cache = ft.FeatureCache(tmp_path / "cache", feature_key())
    lost = 5

    def dropping(indices):
        kept = [i for i in indices if i != lost]
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[kept], "index": np.asarray(kept, np.int32)}).batch(BATCH)
    with pytest.raises(ValueError, match=f"1 of {N} examples could not be read"
                       f".*{ids[lost]}.*kept in the cache"):
        fp.extract_features(ids, dropping, backbone, cache, shard_size=4)
    features, found = cache.lookup(ids)
    assert found.sum() == N - 1 and not found[lost]
    _, stats = fp.extract_features(ids, array_dataset(images), backbone, cache)
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
        extract(tmp_path, _Scaled(backbone, scale))
    assert shard_paths(tmp_path) == []  # Nothing non-finite is cached.


def test_second_process_waits_then_forwards_nothing(tmp_path, backbone):
    holder = ft.FeatureCache(tmp_path / "cache", feature_key())
    waiter = ft.FeatureCache(tmp_path / "cache", feature_key())  # Own lock descriptor.
    result = {}

    def wait_and_extract():
        result["value"] = fp.extract_features(
            example_ids(), array_dataset(random_images()), Counting(backbone), waiter)
    thread = threading.Thread(target=wait_and_extract)
    with holder.lock():
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()  # Blocked on the lock.
        _, stats = fp.extract_features(example_ids(), array_dataset(random_images()),
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
    images, ids = random_images(), example_ids()
    whole, _ = fp.extract_features(ids, array_dataset(images), backbone,
                                   ft.FeatureCache(tmp_path / "ref", feature_key()))
    caches = [ft.FeatureCache(tmp_path / "cache", feature_key()) for _ in range(3)]
    counters = [Counting(backbone) for _ in range(2)]
    # Worker 1 holds its part's lock while worker 0 extracts: no waiting.
    with caches[1].lock("part1of2"):
        _, stats0 = fp.extract_features(ids, array_dataset(images), counters[0],
                                        caches[0], part=(0, 2))
    _, stats1 = fp.extract_features(ids, array_dataset(images), counters[1],
                                    caches[1], part=(1, 2))
    assert (counters[0].examples, counters[1].examples) == (N // 2, N // 2)
    assert (stats0.forwarded, stats1.forwarded) == (N // 2, N // 2)
    # The gathering call forwards nothing and matches a single extraction.
    gathered, stats = fp.extract_features(ids, array_dataset(images),
                                          Counting(backbone), caches[2])
    assert stats.status == "hit"
    np.testing.assert_array_equal(gathered, whole)
    assert sorted(_shard_ids(caches[2])) == sorted(ids)  # Each one once.


def test_a_whole_extraction_excludes_the_parts(tmp_path, backbone):
    holder = ft.FeatureCache(tmp_path / "cache", feature_key())
    worker = ft.FeatureCache(tmp_path / "cache", feature_key())
    done = threading.Event()

    def run_part():
        fp.extract_features(example_ids(), array_dataset(random_images()), backbone, worker,
                            part=(0, 2))
        done.set()
    with holder.lock():
        thread = threading.Thread(target=run_part)
        thread.start()
        assert not done.wait(0.3)  # Blocked on the shared lock.
    thread.join(timeout=30)
    assert done.is_set()


def test_a_part_keeps_other_parts_temporary_files(tmp_path, backbone):
    cache = ft.FeatureCache(tmp_path / "cache", feature_key())
    others = os.path.join(cache.path, ".tmp-part1of2-abc.npz")
    mine = os.path.join(cache.path, ".tmp-part0of2-abc.npz")
    for path in (others, mine):
        open(path, "wb").close()
    fp.extract_features(example_ids(), array_dataset(random_images()), backbone, cache,
                        part=(0, 2))
    assert os.path.exists(others) and not os.path.exists(mine)
    fp.extract_features(example_ids(), array_dataset(random_images()), backbone, cache)
    assert not os.path.exists(others)  # An unscoped holder cleans them all.


@pytest.mark.parametrize("part", [(2, 2), (-1, 2), (0, 0), ("0", 2)])
def test_bad_part_is_refused(tmp_path, backbone, part):
    with pytest.raises(ValueError, match="Received: part="):
        fp.extract_features(example_ids(), array_dataset(random_images()), backbone,
                            ft.FeatureCache(tmp_path / "c", feature_key()), part=part)


def test_chunks_of_several_shards_cache_every_shard(tmp_path):
    ids = [f"x{i}" for i in range(10)]
    calls = []
    make_dataset = numbered(10, calls)

    cache = ft.FeatureCache(str(tmp_path), feature_key())
    got, stats = fp.extract_features(
        ids, make_dataset, Mean(), cache, shard_size=3, chunk_size=6,
        overlap=False)
    assert calls == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
    np.testing.assert_allclose(got[:, 0], np.arange(10))
    assert len(stats.shards) == 4  # Shards of 3, 3, 3, 1.
    again, stats = fp.extract_features(
        ids, make_dataset, Mean(), cache, shard_size=3, overlap=False)
    assert stats.cached == 10 and len(calls) == 2
    np.testing.assert_array_equal(again, got)


def test_stats_name_the_shards_that_hold_the_ids(tmp_path):
    # The shards that served rows plus those written now; not a shard of
    # other ids in the same folder.
    ids = [f"x{i}" for i in range(8)]
    cache = ft.FeatureCache(str(tmp_path), feature_key())
    _, first = fp.extract_features(ids[:6], numbered(8), Mean(), cache,
                                   shard_size=3, overlap=False)
    old = {name for name, _, _ in first.shards}
    assert len(old) == 2
    got, stats = fp.extract_features(ids[3:], numbered(8, offset=3), Mean(),
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
