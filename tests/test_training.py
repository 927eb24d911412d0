import csv
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import assets_path
from conftest import make_folder
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import backbones
from tlfast import extraction
from tlfast import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config):
    # weights=None backbones are keyed by their initial weights: the same
    # seed before each run gives the same random backbone (a cache hit).
    keras.utils.set_random_seed(0)
    return training.run_training(config)


@pytest.fixture
def tiny_config(tmp_path, flat_folder):
    register_tiny_backbone()
    keras.utils.set_random_seed(0)
    return tiny_train_config(tmp_path, flat_folder, validation_split=0.25)


def test_outputs_and_metrics(tiny_config):
    metrics = _run(tiny_config)
    out = tiny_config.output_dir
    for name in ("model.keras", "labels.txt", "history.csv", "run.json",
                 "metrics.json", "split.csv", "training_curves.png",
                 "evaluation.json", "confusion_matrix.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))  # TensorBoard events.
    saved = json.load(open(os.path.join(out, "metrics.json")))
    assert saved == json.loads(json.dumps(metrics))
    for key in ("val_accuracy", "num_train", "num_val", "num_classes",
                "class_names", "skipped", "timings_s", "feature_cache",
                "backbone_images_forwarded"):
        assert key in metrics, key
    assert metrics["num_train"] + metrics["num_val"] == 24
    # The end-of-run evaluation agrees with the head's validation accuracy.
    assert metrics["evaluation"]["accuracy"] == pytest.approx(
        metrics["val_accuracy"], abs=1e-6)
    assert metrics["feature_cache"] == "miss"
    assert metrics["backbone_images_forwarded"] == 24
    assert {"prepare", "extract", "head", "save", "total"} <= set(metrics["timings_s"])
    assert open(os.path.join(out, "labels.txt")).read().split() == ["cats", "dogs"]
    rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert [r["stage"] for r in rows] == ["head"] * len(rows) and rows
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["config"]["backbone"] == "tiny_test" and run["cache_keys"]


def test_saved_model_takes_uint8_and_matches_head(tiny_config):
    metrics = _run(tiny_config)
    model = keras.models.load_model(
        os.path.join(tiny_config.output_dir, "model.keras"))
    assert model.input.dtype == "uint8"
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), "uint8")
    first, second = model.predict(images, verbose=0), model(images)
    # Augmentation is inactive at inference: deterministic outputs.
    np.testing.assert_allclose(first, np.asarray(second), atol=1e-6)
    assert first.shape == (3, 2)
    np.testing.assert_allclose(first.sum(1), 1.0, atol=1e-5)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def test_rerun_is_a_cache_hit_and_new_files_forward_only_themselves(tiny_config):
    _run(tiny_config)
    again = _run(tiny_config)
    assert again["feature_cache"] == "hit"
    assert again["backbone_images_forwarded"] == 0
    make_folder(tiny_config.data_dir + "/new", {}, size=(24, 32))
    from conftest import noise_image, write_image

    for i in range(3):
        write_image(os.path.join(tiny_config.data_dir, "cats", f"added_{i}.jpg"),
                    noise_image(tint=0, seed=500 + i))
    grown = _run(tiny_config)
    assert grown["feature_cache"] == "partial"
    assert grown["backbone_images_forwarded"] == 3


@pytest.mark.parametrize("change", [
    {"image_size": 40}, {"resize": "pad"}, {"backbone": "other"},
])
def test_key_changes_force_recomputation(tiny_config, change):
    _run(tiny_config)
    if change.get("backbone") == "other":
        spec = backbones.get_backbone_spec("tiny_test")
        from test_backbones import build_tiny

        backbones.register_backbone(dataclasses.replace(spec, name="other"),
                                    builder=build_tiny, overwrite=True)
    changed = _run(dataclasses.replace(tiny_config, **change))
    assert changed["feature_cache"] == "miss"
    assert changed["backbone_images_forwarded"] == 24


def test_weights_file_change_forces_recomputation(tiny_config, tmp_path):
    first = _run(tiny_config)
    model = backbones.create_backbone("tiny_test", weights=None, image_size=32)
    path = str(tmp_path / "tiny.weights.h5")
    backbones.get_inner_model(model).save_weights(path)
    with_file = dataclasses.replace(tiny_config, weights=path)
    assert _run(with_file)["feature_cache"] == "miss"
    assert _run(with_file)["feature_cache"] == "hit"
    assert first["feature_cache"] == "miss"


def test_precision_is_part_of_the_key(tiny_config):
    _run(tiny_config)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        metrics = _run(tiny_config)
        model = keras.models.load_model(
            os.path.join(tiny_config.output_dir, "model.keras"))
        out = model(np.zeros((1, 32, 32, 3), "uint8"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert metrics["feature_cache"] == "miss"


def test_augmented_views_are_cached_separately(tiny_config, monkeypatch):
    from tlfast import head as head_lib
    from tlfast import host_arrays

    served = []
    real = head_lib.train_head
    monkeypatch.setattr(head_lib, "train_head", lambda head, train, *a, **k: (
        served.append((train, k["rows"])) or real(head, train, *a, **k)))
    config = dataclasses.replace(tiny_config, augment_views=2, augment="strong")
    metrics = _run(config)
    n_train = metrics["num_train"]
    assert metrics["backbone_images_forwarded"] == 3 * n_train + metrics["num_val"]
    assert _run(config)["feature_cache"] == "hit"
    # The head reads the three views as stored: float16, once, in place.
    for (features, labels), rows in served:
        assert features.dtype == np.float16 and features.shape[0] == 3 * n_train
        assert host_arrays.is_aligned(features)
        assert sorted(rows) == list(range(3 * n_train)) == sorted(
            range(len(labels)))


def _inner_weights(model):
    inner = backbones.get_inner_model(model)
    return {w.path: np.array(w) for w in inner.weights}


def test_fine_tuning_changes_only_the_top_block_and_keeps_bn_stats(tiny_config):
    config = dataclasses.replace(tiny_config, fine_tune_epochs=2,
                                 fine_tune_blocks=1,
                                 fine_tune_learning_rate=0.05, augment="none")
    # Same seed and weights=None: the backbone starts from the same init.
    keras.utils.set_random_seed(0)
    initial = backbones.create_backbone("tiny_test", None, 32)
    before = _inner_weights(initial)
    keras.utils.set_random_seed(0)
    metrics = _run(config)
    # run.json names the weights the features were cached under: the
    # initial ones, not those fine-tuning left.
    run = json.load(open(os.path.join(config.output_dir, "run.json")))
    assert run["resolved"]["weights_identity"] == extraction.weights_fingerprint(
        None, initial)
    model = keras.models.load_model(os.path.join(config.output_dir, "model.keras"))
    inner = [l for l in model.layers if l.name == "tiny_test_inner"][0]
    after = {w.path: np.array(w) for w in inner.weights}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed and all("block2_conv" in p for p in changed), changed
    assert not any("bn" in p for p in changed)
    rows = list(csv.DictReader(open(os.path.join(config.output_dir, "history.csv"))))
    assert {r["stage"] for r in rows} == {"head", "fine_tune"}
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def test_discriminative_rates_save_and_load(tiny_config):
    config = dataclasses.replace(tiny_config, fine_tune_epochs=1,
                                 fine_tune_blocks=2, fine_tune_lr_decay=0.5,
                                 augment="none")
    _run(config)
    model = keras.models.load_model(os.path.join(config.output_dir, "model.keras"))
    assert type(model.optimizer).__name__ == "LayerwiseAdam"
    assert set(model.optimizer.multipliers.values()) == {1.0, 0.5}


@pytest.mark.parametrize("change,match", [
    ({"backbone": "mobilenetv2"}, "Did you mean 'mobilenet_v2'"),
    ({"image_size": 8}, "image_size must be at least"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"fine_tune_lr_decay": 0.0}, "fine_tune_lr_decay must be in"),
    ({"augment": "flip,twirl"}, "Unknown augmentation op 'twirl'"),
    ({"tfds_name": "tf_flowers"}, "either data_dir or tfds_name"),
    ({"weights": "/nope.h5"}, "Weights file not found"),
    ({"fine_tune_epochs": 1, "fine_tune_blocks": 99}, "fine_tune_blocks"),
    ({"ram_budget_mb": -1}, "ram_budget_mb must be an integer >= 0"),
    ({"feature_shard_size": 0}, "feature_shard_size must be an integer >= 1"),
    ({"max_pixels": 0}, "max_pixels must be an integer >= 1"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\)"),
    ({"data_dir": "/no/such/folder"}, "Dataset folder not found"),
    ({"data_dir": None, "tfds_name": "tf_flowers", "export": "tflite_int8"},
     "tflite_int8 needs an image folder"),
    ({"data_dir": None, "tfds_name": "tf_flowers",
      "data_service_address": "grpc://localhost:1"}, "not tfds_name"),
])
def test_bad_settings_fail_before_heavy_work(tiny_config, change, match):
    with pytest.raises((ValueError, OSError), match=match):
        _run(dataclasses.replace(tiny_config, **change))
    assert not os.path.exists(os.path.join(tiny_config.output_dir, "metrics.json"))


def _cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "tlfast.train", *args],
                          capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args,match", [
    (["--data_dir=/no/such/folder"], "Dataset folder not found"),
    (["--data_dir=.", "--batch_size=0"], "batch_size must be an integer >= 1"),
    (["--data_dir=.", "--backbone=resnet5"], "Did you mean"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, args, match):
    result = _cli(*args, f"--output_dir={tmp_path / 'o'}",
                  f"--cache_dir={tmp_path / 'c'}", "--weights=none")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if "tlfast-train: error:" in l]
    assert len(errors) == 1 and match in errors[0], result.stderr[-2000:]


def test_cli_without_data_says_what_to_pass_and_downloads_nothing(tmp_path):
    result = _cli(f"--output_dir={tmp_path / 'o'}", f"--cache_dir={tmp_path / 'c'}",
                  f"--tfds_data_dir={tmp_path / 'tfds'}", "--weights=none")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data_dir" in result.stderr and "tfds_name" in result.stderr
    assert not (tmp_path / "tfds").exists()


def test_cli_trains_end_to_end(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(40, 40))
    result = _cli(f"--data_dir={root}", f"--output_dir={tmp_path / 'o'}",
                  f"--cache_dir={tmp_path / 'c'}", "--backbone=mobilenet_025",
                  "--weights=none", "--image_size=32", "--epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_accuracy=" in result.stdout
    metrics = json.load(open(tmp_path / "o" / "metrics.json"))
    assert metrics["num_train"] + metrics["num_val"] == 16


@pytest.mark.assets
def test_hymenoptera_with_real_weights_beats_the_linear_probe(tmp_path):
    data = assets_path("datasets", "hymenoptera")
    weights = assets_path("weights", "mobilenet_v1_0.25_224_no_top.weights.h5")
    keras.utils.set_random_seed(0)
    config = training.TrainConfig(
        data_dir=str(data), backbone="mobilenet_025", weights=str(weights),
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    metrics = _run(config)
    assert metrics["val_accuracy"] >= 0.86  # Acceptance run: >= 0.88.
    assert [s["path"].rsplit("/", 1)[-1] for s in metrics["skipped"]] == [
        "imageNotFound.gif"]
    assert metrics["num_train"] == 244 and metrics["num_val"] == 153
    again = _run(config)
    assert again["feature_cache"] == "hit"
    assert again["backbone_images_forwarded"] == 0
    assert again["val_accuracy"] == pytest.approx(metrics["val_accuracy"], abs=0.02)


def test_tfds_source_trains_through_the_same_pipeline(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from tlfast.data import sources

    # mock_data stands in for the download; the offline probe would refuse it.
    monkeypatch.setattr(sources, "_probe_network", lambda: None)

    register_tiny_backbone()
    config = training.TrainConfig(
        tfds_name="tf_flowers", output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"), backbone="tiny_test", weights=None,
        image_size=32, epochs=2, batch_size=8, fine_tune_epochs=1)
    with tfds.testing.mock_data(num_examples=24):
        metrics = _run(config)
        again = _run(config)
    assert metrics["num_classes"] == 5
    assert metrics["num_train"] > 0 and metrics["num_val"] > 0
    assert metrics["feature_cache"] == "miss"
    assert again["feature_cache"] == "hit"
    run = json.load(open(tmp_path / "out" / "run.json"))
    # 24 mock examples, validation_split 0.2: 5 held out, by count.
    assert run["split"]["tfds_splits"] == ["train[:19]", "train[19:]"]


def test_export_flag_writes_checked_exports(tiny_config):
    metrics = _run(dataclasses.replace(tiny_config, export="saved_model,tflite"))
    exports = metrics["exports"]
    assert set(exports) >= {"saved_model", "tflite"}
    for fmt in ("saved_model", "tflite"):
        assert exports[fmt]["parity_ok"] is True, exports[fmt]
    assert os.path.isfile(os.path.join(tiny_config.output_dir, "export",
                                       "model.tflite"))


def test_unknown_export_format_fails_fast(tiny_config):
    with pytest.raises(ValueError, match="Unknown export format 'onnx'"):
        _run(dataclasses.replace(tiny_config, export="tflite,onnx"))


def test_data_dir_is_read_through_the_builder_by_default(tiny_config):
    config = tiny_config
    assert config.prepare_tfds
    first = _run(config)
    again = _run(config)
    assert first["prepared_tfds"]["reused"] is False
    assert again["prepared_tfds"]["reused"] is True
    assert again["feature_cache"] == "hit"
    # Same ids as the loose-file path: the feature cache is shared with it,
    # and the head, trained in content-id order, learns the same thing.
    loose = _run(dataclasses.replace(tiny_config, prepare_tfds=False))
    assert loose["prepared_tfds"] is None
    assert loose["feature_cache"] == "hit"
    assert loose["val_accuracy"] == again["val_accuracy"]
    touched = os.path.join(tiny_config.data_dir, "cats", "img_000.jpg")
    os.utime(touched, ns=(10**9, 10**9))
    changed = _run(config)
    assert changed["prepared_tfds"]["reused"] is False
    assert changed["backbone_images_forwarded"] == 1


def test_run_json_describes_the_saved_model_even_if_the_end_fails(
        tiny_config, monkeypatch):
    from tlfast import run_outputs

    def fail(*args, **kwargs):
        raise RuntimeError("exports crashed")

    monkeypatch.setattr(run_outputs, "finish_run", fail)
    with pytest.raises(RuntimeError, match="exports crashed"):
        _run(dataclasses.replace(tiny_config, resize="pad"))
    out = tiny_config.output_dir
    assert os.path.isfile(os.path.join(out, "model.keras"))
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["config"]["resize"] == "pad"  # What predict reads.
    assert "run_key" not in run  # Not complete: never reused.
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def test_fine_tuning_pixel_caches_share_one_ram_budget(tmp_path):
    from tlfast.data import pipeline

    config = pipeline.PipelineConfig(image_size=100, batch_size=8,
                                     ram_budget_mb=10, cache_dir=str(tmp_path))
    # 30,000 bytes an image: 300 training images take 8.6 of the 10 MiB.
    train, val = training.split_ram_budget(config, 300, 100)
    assert pipeline.choose_cache(300, train) == "memory"
    assert pipeline.choose_cache(100, val) == "disk"  # 2.9 MiB, 1 left.
    assert pipeline.choose_cache(100, config) == "memory"  # Alone it fits.
    # Training images spilled to disk leave the whole budget to validation.
    train, val = training.split_ram_budget(config, 1000, 100)
    assert pipeline.choose_cache(1000, train) == "disk"
    assert pipeline.choose_cache(100, val) == "memory"


@pytest.mark.parametrize("prepare_tfds", [True, False])
def test_a_copy_of_the_folder_elsewhere_shares_no_cache(tiny_config, tmp_path,
                                                        prepare_tfds):
    import shutil

    config = dataclasses.replace(tiny_config, prepare_tfds=prepare_tfds)
    first = _run(config)
    assert first["feature_cache"] == "miss"
    copy = tmp_path / "copy"
    shutil.copytree(config.data_dir, copy)  # Same layout, sizes and mtimes.
    for path in copy.rglob("*.jpg"):  # Other pixels, same size.
        data = bytearray(path.read_bytes())
        st = os.stat(path)
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _run(dataclasses.replace(config, data_dir=str(copy),
                                      output_dir=str(tmp_path / "out2")))
    assert second["feature_cache"] == "miss"
    assert second["backbone_images_forwarded"] == first["backbone_images_forwarded"]


def test_a_new_cache_folder_is_the_users_alone(tiny_config):
    import stat

    _run(tiny_config)
    mode = stat.S_IMODE(os.stat(tiny_config.cache_dir).st_mode)
    assert mode & 0o077 == 0, oct(mode)


def test_small_sets_train_the_head_on_augmented_views_by_default(
        tiny_config, caplog):
    config = dataclasses.replace(tiny_config, augment_views=None)
    with caplog.at_level("INFO", logger="tlfast"):
        metrics = _run(config)
    assert metrics["augment_views"] == 2
    assert metrics["backbone_images_forwarded"] == (
        3 * metrics["num_train"] + metrics["num_val"])
    assert "extract_views" in metrics["timings_s"]
    assert "[augment] flip,rotation" in caplog.text and "2 augmented" in caplog.text
    none = dataclasses.replace(config, augment="none",
                               output_dir=config.output_dir + "_none")
    assert _run(none)["augment_views"] == 0


def test_fine_tuning_warms_up_decays_and_keeps_its_best_epoch(tiny_config):
    schedule = training.fine_tune_schedule(1e-3, num_train=100, batch_size=10,
                                           epochs=5)
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 49)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(5e-4)
    assert rates[2] == pytest.approx(1e-3) and rates[2] > rates[3] > rates[4]
    config = dataclasses.replace(tiny_config, fine_tune_epochs=3, patience=1)
    metrics = _run(config)
    stages = metrics["stages"]
    assert set(stages) == {"head", "fine_tune"}
    assert 1 <= stages["fine_tune"]["best_epoch"] <= 3
    kept = "fine_tune" if stages["fine_tune"]["kept"] else "head"
    assert metrics["val_accuracy"] == stages[kept]["val_accuracy"]
    assert training.kept_epoch({"loss": [1, 1, 1], "val_loss": [3, 1, 2]}, 2) == 2
    assert training.kept_epoch({"loss": [1, 1, 1], "val_loss": [3, 1, 2]}, 0) == 3


def test_library_use_shows_progress_without_logging_set_up(tmp_path):
    # A notebook or a plain `python -c`: no logging configured anywhere.
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{REPO!r}, {os.path.join(REPO, 'tests')!r}]
        import keras
        from conftest import make_folder, tiny_train_config
        from test_backbones import register_tiny_backbone
        from tlfast import training
        register_tiny_backbone()
        root = make_folder({str(tmp_path / 'data')!r}, {{"a": 6, "b": 6}})
        training.run_training(tiny_train_config(
            __import__("pathlib").Path({str(tmp_path)!r}), root))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[extract] done" in result.stderr and "val_accuracy=" in result.stderr


def test_lr_find_writes_its_plot_and_logs_a_suggestion(tiny_config, caplog):
    with caplog.at_level("INFO", logger="tlfast"):
        metrics = _run(dataclasses.replace(tiny_config, lr_find=True))
    assert os.path.exists(os.path.join(tiny_config.output_dir, "lr_find.png"))
    assert "[lr_find] suggested --learning_rate=" in caplog.text
    assert "lr_find" in metrics["timings_s"]
