import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import encode
from conftest import make_folder
from conftest import noise_image
from tlfast.data import pipeline
from tlfast.data import sources


def _entries(folder):
    return sources.list_image_folder(folder).splits["all"]


@pytest.mark.parametrize("mode", pipeline.RESIZE_MODES)
def test_decode_image_eager_and_in_tf_data(mode):
    data = encode(noise_image((30, 50)), "PNG")
    eager = pipeline.decode_image(tf.constant(data), 16, mode)
    assert eager.dtype == tf.uint8 and eager.shape == (16, 16, 3)
    ds = tf.data.Dataset.from_tensors(data).map(
        lambda d: pipeline.decode_image(d, 16, mode))
    graph = next(iter(ds))
    np.testing.assert_array_equal(eager.numpy(), graph.numpy())


@pytest.mark.parametrize("fmt, size", [("JPEG", (16, 16)), ("JPEG", (30, 50)),
                                       ("PNG", (16, 16)), ("BMP", (50, 30))])
@pytest.mark.parametrize("mode", pipeline.RESIZE_MODES)
def test_decode_shortcuts_give_the_general_paths_pixels(fmt, size, mode):
    # JPEGs skip decode_image's format dispatch and images already at the
    # target size skip resizing; neither may change a pixel (the feature
    # cache relies on that).
    data = encode(noise_image(size), fmt)
    general = pipeline.resize_image(tf.io.decode_image(
        data, channels=3, expand_animations=False), 16, mode)
    ds = tf.data.Dataset.from_tensors(data).map(
        lambda d: pipeline.decode_image(d, 16, mode))
    # A tf.function runs the graph differently from tf.data: a shape check
    # in the cond's untaken branch once failed every size but the target.
    in_function = tf.function(lambda d: pipeline.decode_image(d, 16, mode))
    for got in (pipeline.decode_image(tf.constant(data), 16, mode), next(iter(ds)),
                in_function(tf.constant(data))):
        assert got.dtype == tf.uint8 and got.shape == (16, 16, 3)
        np.testing.assert_array_equal(got.numpy(), general.numpy())


def test_resize_modes_differ_as_expected():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 200  # A bright centre square flanked by black.
    crop = pipeline.resize_image(image, 10, "crop").numpy()
    pad = pipeline.resize_image(image, 10, "pad").numpy()
    stretch = pipeline.resize_image(image, 10, "resize").numpy()
    assert crop.min() >= 190  # The centre crop is all bright.
    assert pad[0].max() == 0 and pad[-1].max() == 0  # Letterbox bars.
    assert stretch[:, 0].max() < 50 and stretch[:, 5].min() > 150


def test_files_dataset_elements(flat_folder):
    ds = pipeline.files_dataset(_entries(flat_folder), 16)
    assert ds.element_spec == {
        "image": tf.TensorSpec((16, 16, 3), tf.uint8),
        "label": tf.TensorSpec((), tf.int32)}
    labels = [int(e["label"]) for e in ds]
    assert labels == [0] * 12 + [1] * 12


def test_pipeline_batches_shapes_dtypes(flat_folder):
    config = pipeline.PipelineConfig(image_size=16, batch_size=5)
    ds = pipeline.image_folder_dataset(_entries(flat_folder), config,
                                       training=False)
    batches = list(ds)
    assert [int(b["image"].shape[0]) for b in batches] == [5, 5, 5, 5, 4]
    assert batches[0]["image"].dtype == tf.uint8
    assert batches[0]["label"].dtype == tf.int32


def _order(ds):
    return [tuple(b["label"].numpy()) + (int(b["image"].numpy().sum()),)
            for b in ds]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(flat_folder):
    entries = _entries(flat_folder)
    config = pipeline.PipelineConfig(image_size=8, batch_size=4, seed=7)
    a = pipeline.image_folder_dataset(entries, config, training=True)
    b = pipeline.image_folder_dataset(entries, config, training=True)
    first_a, second_a = _order(a), _order(a)
    assert first_a == _order(b)  # Same seed, same order.
    assert first_a != second_a  # A new order every epoch.
    evaluation = pipeline.image_folder_dataset(entries, config, training=False)
    assert _order(evaluation) == _order(evaluation)


def test_cache_choice_follows_the_ram_budget(tmp_path):
    small = pipeline.PipelineConfig(image_size=224, ram_budget_mb=1)
    assert pipeline.choose_cache(6, small) == "memory"  # 6 * 147 KiB < 1 MiB
    assert pipeline.choose_cache(8, small) == "none"  # No cache_dir.
    disk = pipeline.PipelineConfig(image_size=224, ram_budget_mb=1,
                                   cache_dir=str(tmp_path))
    assert pipeline.choose_cache(8, disk) == "disk"


def test_disk_cache_spills_and_serves_second_epoch(flat_folder, tmp_path):
    entries = _entries(flat_folder)
    config = pipeline.PipelineConfig(image_size=16, batch_size=4, ram_budget_mb=0,
                                     cache_dir=str(tmp_path / "cache"))
    ds = pipeline.image_folder_dataset(entries, config, training=False)
    first = _order(ds)
    index = glob.glob(str(tmp_path / "cache" / "pixels" / "*" / "cache.index"))
    assert len(index) == 1
    # The second epoch comes from the cache: deleting the images changes nothing.
    for entry in entries:
        os.rename(entry.path, entry.path + ".moved")
    assert _order(ds) == first


def test_stale_lockfile_from_a_killed_run_is_cleaned(flat_folder, tmp_path):
    entries = _entries(flat_folder)
    config = pipeline.PipelineConfig(image_size=16, batch_size=4, cache="disk",
                                     cache_dir=str(tmp_path))
    key = pipeline.content_key(entries, 16, config.resize)
    prefix = pipeline.disk_cache_prefix(str(tmp_path), key)
    # What tf.data leaves when the process dies mid-epoch.
    for suffix in (".lockfile", "_0.lockfile", "_0.data-00000-of-00001"):
        with open(prefix + suffix, "w") as f:
            f.write("x")
    ds = pipeline.image_folder_dataset(entries, config, training=False)
    assert sum(int(b["image"].shape[0]) for b in ds) == 24
    assert os.path.exists(prefix + ".index")
    assert not glob.glob(prefix + "*.lockfile")


def test_content_key_changes_with_files(flat_folder):
    entries = _entries(flat_folder)
    key = pipeline.content_key(entries, 16)
    assert key == pipeline.content_key(entries, 16)
    assert key != pipeline.content_key(entries, 32)
    assert key != pipeline.content_key(entries[:-1], 16)
    os.utime(entries[0].path, ns=(1, 1))
    assert key != pipeline.content_key(entries, 16)


def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="pixel cache folder"):
        pipeline.disk_cache_prefix(str(blocker), "k")


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 0}, "image_size"), ({"batch_size": 0}, "batch_size"),
    ({"resize": "squash"}, "resize"), ({"cache": "gpu"}, "cache"),
    ({"ram_budget_mb": -1}, "ram_budget_mb")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=f"Received: {match}="):
        pipeline.PipelineConfig(**kwargs)


def test_to_supervised(flat_folder):
    config = pipeline.PipelineConfig(image_size=8, batch_size=3)
    ds = pipeline.to_supervised(pipeline.image_folder_dataset(
        _entries(flat_folder), config, training=False))
    image, label = next(iter(ds))
    assert image.shape == (3, 8, 8, 3) and label.shape == (3,)


def test_content_key_of_a_file_gone_since_the_scan(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    entries = sources.list_image_folder(root).splits["all"]
    before = pipeline.content_key(entries, 32)
    os.remove(entries[0].path)
    after = pipeline.content_key(entries, 32)  # No FileNotFoundError.
    assert after != before


def test_a_complete_disk_cache_is_read_while_another_process_holds_it(
        flat_folder, tmp_path, monkeypatch):
    entries = _entries(flat_folder)
    config = pipeline.PipelineConfig(image_size=16, batch_size=4, cache="disk",
                                     cache_dir=str(tmp_path / "cache"))
    first = _order(pipeline.image_folder_dataset(entries, config, training=False))
    # As a second process sees it: the filler's lock is taken.
    monkeypatch.setattr(pipeline.locks, "hold", lambda *args, **kwargs: False)
    # Decoding now would give black images: only the cache has the pixels.
    monkeypatch.setattr(pipeline, "decode_image", lambda data, size, mode:
                        tf.zeros((size, size, 3), tf.uint8))
    ds = pipeline.image_folder_dataset(entries, config, training=False)
    assert _order(ds) == first


def test_a_file_changed_since_the_scan_is_dropped_not_decoded(flat_folder):
    from tlfast.data import scan

    usable = scan.scan_files(_entries(flat_folder)).usable
    assert all(e.size == os.path.getsize(e.path) for e in usable)
    with open(usable[0].path, "ab") as f:  # Edited after the scan.
        f.write(b"\0" * 10)
    for ds in (pipeline.files_dataset(usable, 16),
               tf.data.Dataset.range(1).flat_map(
                   lambda _: pipeline.files_dataset(usable, 16))):
        assert sum(1 for _ in ds) == len(usable) - 1


def test_a_disk_cache_is_trusted_only_complete_and_counted(flat_folder, tmp_path):
    entries = _entries(flat_folder)
    config = pipeline.PipelineConfig(image_size=16, batch_size=4, cache="disk",
                                     cache_dir=str(tmp_path))
    key = pipeline.content_key(entries, 16, config.resize)
    prefix = pipeline.disk_cache_prefix(str(tmp_path), key)
    first = _order(pipeline.image_folder_dataset(entries, config, training=False))
    marker = json.load(open(prefix + ".tlfast-complete"))
    assert marker["count"] == len(entries) == 24
    # Power lost while the cache's data was still in the page cache: the
    # index survived, the data did not. Refilled, never served torn.
    data = [p for p in glob.glob(prefix + ".data*")][0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    again = pipeline.image_folder_dataset(entries, config, training=False)
    assert _order(again) == first
    assert json.load(open(prefix + ".tlfast-complete")) == marker
