"""Fault injection: bad files, kill -9 at each phase, damaged caches, resources, bad flags.

Every fault has its own test; each fails if its handling regresses.
"""

import dataclasses
import glob
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import encode
from conftest import make_folder
from conftest import noise_image
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import resolve
from tlfast import training
from tlfast.data import scan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pil(image, mode):
    from PIL import Image

    return Image.fromarray(image).convert(mode)


def _save(path, pil, fmt, **kwargs):
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **kwargs)
    path.write_bytes(buffer.getvalue())


def add_every_bad_kind(class_dir):
    """Writes one file of every awkward kind; returns {name: reason or None}.

    None means "must be used"; a string is a fragment of the skip reason.
    """
    from PIL import Image

    image = noise_image((40, 40), seed=77)
    jpeg = encode(image)
    (class_dir / "zero.jpg").write_bytes(b"")
    (class_dir / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (class_dir / "random.jpg").write_bytes(np.random.default_rng(1).bytes(900))
    (class_dir / "text.jpg").write_text("not an image\n" * 20)
    (class_dir / "png_named.jpg").write_bytes(encode(image, "PNG"))
    (class_dir / "bmp_named.jpg").write_bytes(encode(image, "BMP"))
    frames = [Image.fromarray(noise_image((40, 40), seed=i)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    (class_dir / "animated.gif").write_bytes(buffer.getvalue())
    (class_dir / "photo.webp").write_bytes(encode(image, "WEBP"))
    _save(class_dir / "cmyk.jpg", _pil(image, "CMYK"), "JPEG")
    _save(class_dir / "deep16.png",
          Image.fromarray(image[..., 0].astype(np.uint16) * 257), "PNG")
    _save(class_dir / "gray.png", _pil(image, "L"), "PNG")
    _save(class_dir / "rgba.png", _pil(image, "RGBA"), "PNG")
    (class_dir / "one_pixel.png").write_bytes(encode(noise_image((1, 1)), "PNG"))
    (class_dir / "bomb.png").write_bytes(encode(noise_image((120, 120)), "PNG"))
    (class_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (class_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    unreadable = class_dir / "unreadable.jpg"
    unreadable.write_bytes(jpeg)
    os.symlink("loop.jpg", class_dir / "loop.jpg")  # Points at itself.
    return {
        "zero.jpg": "empty file", "truncated.jpg": "corrupt or truncated jpeg",
        "random.jpg": "not an image", "text.jpg": "not an image",
        "png_named.jpg": None, "bmp_named.jpg": None, "animated.gif": None,
        "photo.webp": None, "cmyk.jpg": None, "deep16.png": None,
        "gray.png": None, "rgba.png": None, "one_pixel.png": "too small",
        "bomb.png": "too large", ".DS_Store": "operating-system metadata",
        "Thumbs.db": "operating-system metadata",
        "unreadable.jpg": "cannot read file",
        "loop.jpg": "broken symbolic link",
    }


@pytest.fixture
def deny_unreadable(monkeypatch):
    """Makes 'unreadable.jpg' unreadable, even for root (who ignores chmod)."""
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("unreadable.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.fixture
def tiny(tmp_path):
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"ants": 10, "bees": 10})
    return tiny_train_config(tmp_path, root, epochs=2, validation_split=0.3,
                             max_pixels=100 * 100)


def test_random_init_is_part_of_the_cache_key(tiny):
    keras.utils.set_random_seed(0)
    training.run_training(tiny)
    keras.utils.set_random_seed(1)  # Another random backbone: other features.
    assert training.run_training(tiny)["feature_cache"] == "miss"
    keras.utils.set_random_seed(0)
    assert training.run_training(tiny)["feature_cache"] == "hit"


def test_every_bad_kind_is_used_or_skipped_with_its_reason(tiny, deny_unreadable):
    expected = add_every_bad_kind(__import__("pathlib").Path(tiny.data_dir) / "ants")
    metrics = training.run_training(tiny)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in metrics["skipped"]}
    assert set(reasons) == {n for n, r in expected.items() if r}
    for name, fragment in expected.items():
        if fragment:
            assert fragment in reasons[name], (name, reasons[name])
    used = [n for n, r in expected.items() if r is None]
    assert metrics["num_train"] + metrics["num_val"] == 20 + len(used)


def test_empty_class_folder_warns_and_training_finishes(tiny, caplog):
    os.makedirs(os.path.join(tiny.data_dir, "wasps"))
    with caplog.at_level("WARNING", logger="tlfast"):
        metrics = training.run_training(tiny)
    assert "Class 'wasps' has no usable training images" in caplog.text
    assert metrics["num_classes"] == 3


def test_class_of_only_bad_files_is_named(tiny, caplog):
    os.makedirs(os.path.join(tiny.data_dir, "wasps"))
    for i in range(3):
        open(os.path.join(tiny.data_dir, "wasps", f"{i}.jpg"), "wb").close()
    with caplog.at_level("WARNING", logger="tlfast"):
        training.run_training(tiny)
    assert "Class 'wasps' has no usable training images (3 file(s) skipped)" in caplog.text


def test_single_usable_class_is_a_clear_error(tiny):
    for path in glob.glob(os.path.join(tiny.data_dir, "bees", "*")):
        open(path, "wb").close()
    with pytest.raises(ValueError, match="1 class\\(es\\) with usable training"):
        training.run_training(tiny)


# --- kill -9 at each phase, then the same command again. ---

_DRIVER = textwrap.dedent("""
    import os, signal, sys, json
    sys.path[:0] = [{repo!r}, {tests!r}]
    import keras
    from test_backbones import register_tiny_backbone
    from tlfast import training, features, head
    from tlfast.data import scan
    register_tiny_backbone()
    config = training.TrainConfig(**json.loads({config!r}))
    point = {point!r}
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "scan":
        # Checkpoint after every file; die right after the 12th checkpoint.
        scan.CHECKPOINT_SECONDS = 0.0
        real = scan.scan_cache.ScanCache.append
        calls = []
        def write(self, *a, **k):
            real(self, *a, **k)
            calls.append(1)
            if len(calls) == 12:
                die()
        scan.scan_cache.ScanCache.append = write
    elif point == "extract":
        real_write = features.FeatureCache.write_shard
        def write(self, *a, **k):
            path = real_write(self, *a, **k)
            if len(os.listdir(os.path.dirname(path))) > 3:
                die()
            return path
        features.FeatureCache.write_shard = write
    elif point == "head":
        real_train = head.train_head
        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                die()
        def train(h, tr, va, cfg, callbacks=(), **kwargs):
            return real_train(h, tr, va, cfg, callbacks=[*callbacks, Kill()],
                              **kwargs)
        training.head_lib.train_head = train
    keras.utils.set_random_seed(0)
    metrics = training.run_training(config)
    print(json.dumps(metrics))
""")


def _run_driver(config, point):
    code = _DRIVER.format(repo=REPO, tests=os.path.join(REPO, "tests"),
                          config=json.dumps(dataclasses.asdict(config)),
                          point=point)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env, timeout=300)


def _all_features(cache_dir):
    out = {}
    for path in sorted(glob.glob(os.path.join(cache_dir, "features", "*", "*.npz"))):
        with np.load(path) as shard:
            for i, f in zip(shard["ids"], shard["features"]):
                out[(os.path.basename(os.path.dirname(path)), str(i))] = f
    return out


@pytest.fixture
def kill_config(tmp_path):
    root = make_folder(tmp_path / "data", {"ants": 40, "bees": 40})
    return tiny_train_config(tmp_path, root, feature_shard_size=8)


@pytest.mark.parametrize("point", ["scan", "extract", "head"])
def test_kill_minus_9_then_rerun_reuses_finished_work(kill_config, tmp_path, point):
    killed = _run_driver(kill_config, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not os.path.exists(os.path.join(kill_config.output_dir, "metrics.json"))
    resumed = _run_driver(kill_config, "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads(resumed.stdout.strip().splitlines()[-1])
    if point == "scan":
        assert metrics["scan_cached"] >= 12
    elif point == "extract":
        assert 0 < metrics["features_cached"] < 80
        assert metrics["feature_cache"] == "partial"
    else:
        assert metrics["feature_cache"] == "hit"
    # The resumed cache holds exactly what an uninterrupted run computes.
    clean = dataclasses.replace(kill_config, cache_dir=str(tmp_path / "clean"),
                                output_dir=str(tmp_path / "clean_out"))
    reference = _run_driver(clean, "none")
    assert reference.returncode == 0, reference.stderr[-2000:]
    a, b = _all_features(kill_config.cache_dir), _all_features(clean.cache_dir)
    assert a.keys() == b.keys() and len(a) == 80
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    ref_metrics = json.loads(reference.stdout.strip().splitlines()[-1])
    assert metrics["val_accuracy"] == ref_metrics["val_accuracy"]


# --- caches ---

def test_corrupted_shard_is_detected_and_recomputed(tiny):
    keras.utils.set_random_seed(0)
    first = training.run_training(tiny)
    shard = glob.glob(os.path.join(tiny.cache_dir, "features", "*", "*.npz"))[0]
    data = bytearray(open(shard, "rb").read())
    data[-200] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    keras.utils.set_random_seed(0)  # The same random backbone as the first run.
    again = training.run_training(tiny)
    assert again["feature_cache"] in ("miss", "partial")
    assert again["backbone_images_forwarded"] > 0
    assert again["val_accuracy"] == pytest.approx(first["val_accuracy"])


def test_cache_with_mismatched_manifest_is_never_used(tiny):
    keras.utils.set_random_seed(0)
    training.run_training(tiny)
    for manifest in glob.glob(os.path.join(tiny.cache_dir, "features", "*",
                                           "manifest.json")):
        data = json.load(open(manifest))
        data["key"]["image_size"] = 999
        json.dump(data, open(manifest, "w"))
    keras.utils.set_random_seed(0)
    again = training.run_training(tiny)
    assert again["feature_cache"] == "miss"
    assert again["backbone_images_forwarded"] == 20


def test_two_concurrent_runs_share_one_cache_without_duplicates(kill_config, tmp_path):
    configs = [dataclasses.replace(kill_config, output_dir=str(tmp_path / f"o{i}"))
               for i in range(2)]
    codes = [_DRIVER.format(repo=REPO, tests=os.path.join(REPO, "tests"),
                            config=json.dumps(dataclasses.asdict(c)), point="none")
             for c in configs]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for code in codes]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    metrics = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sum(m["backbone_images_forwarded"] for m in metrics) == 80
    ids = []
    for path in glob.glob(os.path.join(kill_config.cache_dir, "features", "*", "*.npz")):
        with np.load(path) as shard:
            ids += list(shard["ids"])
    assert len(ids) == len(set(ids)) == 80


# --- resources ---

def test_ram_budget_spills_the_pixel_cache_to_disk(tiny):
    config = dataclasses.replace(tiny, fine_tune_epochs=1, ram_budget_mb=0)
    training.run_training(config)
    assert glob.glob(os.path.join(tiny.cache_dir, "pixels", "*", "cache.index"))


def test_full_disk_is_reported_up_front(tiny, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tiny.cache_dir if os.path.exists(tiny.cache_dir)
                              else "/")
    monkeypatch.setattr(training.shutil, "disk_usage",
                        lambda path: usage._replace(free=10))
    with pytest.raises(OSError, match="Not enough free disk space in"):
        training.run_training(tiny)
    assert not glob.glob(os.path.join(tiny.cache_dir, "features", "*"))


@pytest.mark.parametrize("which", ["output_dir", "cache_dir"])
def test_unwritable_folder_is_reported_up_front(tiny, monkeypatch, which):
    target = getattr(tiny, which)
    real = training.tempfile.NamedTemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir and os.path.abspath(dir) == os.path.abspath(target):
            raise OSError(30, "Read-only file system", dir)
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(training.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(OSError, match=f"Folder '{target}' is not writable"):
        training.run_training(tiny)


# --- bad flags: one line each, within seconds (the CLI form is in test_training) ---

@pytest.mark.parametrize("change,match", [
    ({"backbone": "resnet_50"}, "Did you mean 'resnet50'"),
    ({"image_size": 4}, "image_size must be at least"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": -1.0}, "learning_rate must be > 0"),
    ({"augment": "flip,blurr"}, "Unknown augmentation op 'blurr'"),
    ({"tfds_name": "cats_vs_dogs"}, "either data_dir or tfds_name"),
])
def test_bad_flag_values(tiny, change, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve.resolve(dataclasses.replace(tiny, **change))
    assert "\n" not in str(info.value).strip()


# --- A folder assembled by someone hostile (scripts/hostile_folder.py). ---

def test_hostile_files_are_skipped_and_uncommon_photos_used(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import hostile_folder
    finally:
        sys.path.pop(0)
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"ants": 8, "bees": 8}, size=(40, 40))
    # A bomb made small for the test: 5 frames of 200x200 against a limit
    # of 4 frames' pixels (the default limit stands in scripts/).
    hostile = hostile_folder.add_hostile_files(
        str(root / "ants"), str(tmp_path / "outside"), bomb_frames=5,
        bomb_side=200)
    uncommon = hostile_folder.add_uncommon_photos(str(root / "ants"))
    config = tiny_train_config(tmp_path, root, max_pixels=4 * 200 * 200)
    keras.utils.set_random_seed(0)
    metrics = training.run_training(config)
    skipped = {os.path.basename(s["path"]): s["reason"]
               for s in metrics["skipped"]}
    for name, fragment in hostile.items():
        assert fragment in skipped.get(name, ""), (name, skipped.get(name))
    assert metrics["num_train"] + metrics["num_val"] == 16 + len(uncommon)
