"""tlfast.run_folder: the run folder's files, written and read back."""

import json
import os
import shutil

import numpy as np
import pytest

from tlfast import run_folder
from tlfast.run_folder import RunFolder

# A run folder written by tlfast 0.1 at ca7df94 (run.json schema 1: no
# "schema", the resize mode only under "config"): tiny_test backbone, 32-px
# images, resize="pad", classes ants and bees.
SCHEMA_1 = os.path.join(os.path.dirname(__file__), "data", "run_schema1")


def test_a_schema_1_run_folder_still_loads_and_predicts(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(SCHEMA_1, folder)
    run = run_folder.load_model_run(folder)
    assert run.run.schema == 1
    assert run.class_names == ("ants", "bees")
    assert run.image_size == 32
    assert run.resize == "pad"  # From "config": schema 1 had no resolved.resize.
    assert run.run.setting("validation_split") == 0.2
    probs = np.asarray(run.model.predict(np.zeros((2, 32, 32, 3), np.uint8),
                                         verbose=0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert set(RunFolder(folder).read_split()) == {"train", "validation"}
    assert RunFolder(folder).read_metrics()["class_names"] == ["ants", "bees"]


def test_run_info_is_written_with_its_schema_and_read_back(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_run_info({"config": {"resize": "pad"},
                           "resolved": {"resize": "crop"}})
    record = folder.read_run_info()
    assert record.schema == run_folder.SCHEMA_VERSION
    assert record.resize == "crop"  # resolved wins over config.
    assert RunFolder(tmp_path / "none").read_run_info().raw == {}


def test_malformed_json_is_an_error_or_nothing(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    (tmp_path / "metrics.json").write_text("[1, 2]")
    folder = RunFolder(tmp_path)
    with pytest.raises(ValueError, match="run.json' is not valid JSON"):
        folder.read_run_info()
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        folder.read_metrics()
    assert folder.read_run_info(strict=False).raw == {}
    assert folder.read_metrics(strict=False) is None


def test_labels_with_a_byte_order_mark_or_from_metrics(tmp_path):
    folder = RunFolder(tmp_path)
    # Windows editors save UTF-8 with a BOM; it is not part of a class name.
    (tmp_path / "labels.txt").write_bytes("\ufeffants\nbees\n\n".encode("utf-8"))
    assert folder.read_class_names() == ("ants", "bees")
    os.remove(tmp_path / "labels.txt")
    folder.write_metrics({"class_names": ["a", "b", "c"]})
    assert folder.read_class_names() == ("a", "b", "c")
    os.remove(tmp_path / "metrics.json")
    with pytest.raises(FileNotFoundError, match="No labels.txt"):
        folder.read_class_names()


def test_history_rows_of_both_stages(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_history([("head", {"loss": [1.0, 0.5]}),
                          ("fine_tune", {"loss": [0.4], "val_loss": [0.6]})])
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines == ["stage,epoch,loss,val_loss", "head,1,1.0,", "head,2,0.5,",
                     "fine_tune,1,0.4,0.6"]


def test_split_entries_of_a_moved_data_folder(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(SCHEMA_1, folder)
    data = tmp_path / "moved"
    (data / "ants").mkdir(parents=True)
    (data / "ants" / "img_000.jpg").write_bytes(b"x")
    # run.json names a folder that is gone: a clear error, or --data_dir.
    info = json.loads((folder / "run.json").read_text())
    info["config"]["data_dir"] = str(tmp_path / "gone")
    (folder / "run.json").write_text(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="Pass --data_dir"):
        run_folder.split_entries(RunFolder(folder))
    entries = run_folder.split_entries(RunFolder(folder), str(data))
    assert [e.relpath for split in entries.values() for e in split] == [
        "ants/img_000.jpg"]


def test_only_keras_archives_of_a_safe_keras_load(tmp_path):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match="Only .keras model files are loaded"):
        run_folder.load_model_run(h5)
    with pytest.raises(ValueError, match="Keras 3.10.0 can run code"):
        run_folder.check_loadable("m.keras", "3.10.0")
    run_folder.check_loadable("m.keras", "3.11.3")


def test_a_keras_file_with_a_lambda_layer_is_refused(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32") / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="Cannot load .* as a Keras model.*"
                       "(?s:.*)(unsafe|safe_mode)"):
        run_folder.load_model_run(tmp_path)
