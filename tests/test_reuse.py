import dataclasses
import json
import os
import shutil

import keras
import pytest

from conftest import noise_image
from conftest import tiny_train_config
from conftest import write_image
from test_backbones import register_tiny_backbone
from tlfast import backbones
from tlfast import resolve
from tlfast import reuse
from tlfast import run_folder
from tlfast import training


def _run(config):
    keras.utils.set_random_seed(0)
    return training.run_training(config)


def _save_tiny_weights(path, seed):
    keras.utils.set_random_seed(seed)
    model = backbones.create_backbone("tiny_test", weights=None, image_size=32)
    backbones.get_inner_model(model).save_weights(str(path))


@pytest.fixture
def tiny_config(tmp_path, flat_folder):
    register_tiny_backbone()
    # Reuse needs weights with an identity of their own (not a random init).
    weights = tmp_path / "tiny.weights.h5"
    _save_tiny_weights(weights, seed=0)
    return tiny_train_config(tmp_path, flat_folder, validation_split=0.25,
                             weights=str(weights))


def _mtime(config, name):
    return os.stat(os.path.join(config.output_dir, name)).st_mtime_ns


def test_identical_rerun_keeps_the_outputs(tiny_config):
    first = _run(tiny_config)
    model_mtime = _mtime(tiny_config, "model.keras")
    again = _run(tiny_config)
    assert again["outputs_reused"] is True and first["outputs_reused"] is False
    assert again["feature_cache"] == "hit"
    assert again["backbone_images_forwarded"] == 0
    assert again["features_cached"] == first["num_train"] + first["num_val"]
    assert again["val_accuracy"] == first["val_accuracy"]
    assert again["skipped"] == first["skipped"]
    assert again["trained_timings_s"] == first["timings_s"]
    assert set(again["timings_s"]) == {"reuse_check", "total"}
    assert _mtime(tiny_config, "model.keras") == model_mtime
    saved = json.load(open(os.path.join(tiny_config.output_dir, "metrics.json")))
    assert saved == json.loads(json.dumps(again))
    # A reuse keeps run.json valid: the next identical run reuses again.
    third = _run(tiny_config)
    assert third["outputs_reused"] is True
    assert third["trained_timings_s"] == first["timings_s"]


def _touch_image(config):
    path = os.path.join(config.data_dir, "cats", "img_000.jpg")
    write_image(path, noise_image(tint=0, seed=777))


def _drop_labels(config):
    os.remove(os.path.join(config.output_dir, "labels.txt"))


def _edit_model(config):
    with open(os.path.join(config.output_dir, "model.keras"), "ab") as f:
        f.write(b"\0")


def _drop_features(config):
    shutil.rmtree(os.path.join(config.cache_dir, "features"))


@pytest.mark.parametrize("change, cache", [
    (lambda c: dataclasses.replace(c, dropout=0.5), "hit"),
    (lambda c: dataclasses.replace(c, reuse_outputs=False), "hit"),
    (lambda c: _touch_image(c) or c, "partial"),
    (lambda c: _drop_labels(c) or c, "hit"),
    (lambda c: _edit_model(c) or c, "hit"),
    (lambda c: _drop_features(c) or c, "miss"),
], ids=["setting", "no_reuse", "image", "deleted_output", "edited_output",
        "features_gone"])
def test_any_change_trains_again(tiny_config, change, cache):
    _run(tiny_config)
    config = change(tiny_config)
    metrics = _run(config)
    assert metrics["outputs_reused"] is False
    assert metrics["feature_cache"] == cache
    assert os.path.isfile(os.path.join(config.output_dir, "labels.txt"))
    # The fresh outputs are recorded: now an identical run reuses them.
    assert _run(config)["outputs_reused"] is config.reuse_outputs


def test_a_run_without_reuse_still_records_its_outputs(tiny_config):
    _run(dataclasses.replace(tiny_config, reuse_outputs=False))
    assert _run(tiny_config)["outputs_reused"] is True


def test_other_files_in_the_output_folder_do_not_count(tiny_config):
    notes = os.path.join(tiny_config.output_dir, "notes.txt")
    os.makedirs(tiny_config.output_dir)
    open(notes, "w").write("before")
    os.utime(notes, ns=(0, 0))  # Older than the run.
    _run(tiny_config)
    open(notes, "w").write("edited afterwards")
    os.symlink("nowhere", os.path.join(tiny_config.output_dir, "dangling"))
    assert _run(tiny_config)["outputs_reused"] is True


@pytest.mark.parametrize("run_json, metrics_json", [
    ([], None), ("x", None), (None, []), (None, {"run_key": "?"}),
    ({"outputs": None}, None), ({"feature_shards": {"d": [["a", 1]]}}, None),
    (None, {"exports": {"tflite": None}}), (None, {"num_train": "many"}),
], ids=["run_list", "run_str", "metrics_list", "metrics_key", "outputs_none",
        "short_shard", "export_none", "bad_count"])
def test_malformed_records_mean_train_not_crash(tiny_config, run_json,
                                                metrics_json):
    _run(tiny_config)
    for name, content in (("run.json", run_json),
                          ("metrics.json", metrics_json)):
        if content is None:
            continue
        path = os.path.join(tiny_config.output_dir, name)
        if isinstance(content, dict):
            content = {**json.load(open(path)), **content}
        json.dump(content, open(path, "w"))
    metrics = _run(tiny_config)
    assert metrics["outputs_reused"] is False
    assert _run(tiny_config)["outputs_reused"] is True


def test_a_failed_export_is_retried(tiny_config):
    _run(tiny_config)
    path = os.path.join(tiny_config.output_dir, "metrics.json")
    metrics = json.load(open(path))
    metrics["exports"] = {"tflite": {"error": "converter crashed"}}
    json.dump(metrics, open(path, "w"))
    assert _run(tiny_config)["outputs_reused"] is False


def _key(config):
    return reuse.run_key(resolve.resolve(config))


def test_run_key_covers_results_not_locations(tiny_config, tmp_path,
                                              monkeypatch):
    key = _key(tiny_config)
    assert key == _key(tiny_config)
    # Where caches live and how they are sharded change no result.
    assert key == _key(dataclasses.replace(
        tiny_config, cache_dir=str(tmp_path / "elsewhere"),
        feature_shard_size=3, reuse_outputs=False))
    # The RAM budget sizes fine-tuning's shuffle buffer.
    assert key != _key(dataclasses.replace(tiny_config, ram_budget_mb=1))
    assert key != _key(dataclasses.replace(tiny_config, seed=1))
    assert key != _key(dataclasses.replace(tiny_config, image_size=40))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert key != _key(tiny_config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    monkeypatch.setattr(reuse, "_code_digest", "another-checkout")
    assert key != _key(tiny_config)


def test_run_key_follows_the_weights_file(tiny_config):
    key = _key(tiny_config)
    _save_tiny_weights(tiny_config.weights, seed=1)
    assert _key(tiny_config) != key


@pytest.mark.parametrize("change", [
    {"tfds_name": "tf_flowers", "data_dir": None}, {"weights": None},
    {"distribution": "mirrored"},
])
def test_no_key_where_reuse_does_not_apply(tiny_config, change):
    config = dataclasses.replace(tiny_config, **change)
    assert reuse.run_key(resolve.resolve(config)) is None


def test_a_second_run_into_the_folder_waits_for_the_first(tiny_config, caplog):
    import fcntl
    import threading
    import time

    os.makedirs(tiny_config.output_dir)
    fd = os.open(os.path.join(tiny_config.output_dir, run_folder.LOCK),
                 os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # As a run in another process would.
    results = []
    second = threading.Thread(target=lambda: results.append(_run(tiny_config)))
    with caplog.at_level("INFO", logger="tlfast"):
        second.start()
        time.sleep(1.0)
        waiting = second.is_alive()
        os.close(fd)
        second.join(120)
    assert waiting and "Waiting for the other run writing to" in caplog.text
    assert results and results[0]["outputs_reused"] is False
