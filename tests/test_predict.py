import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import make_folder
from conftest import noise_image
from conftest import tiny_train_config
from conftest import write_image
from test_backbones import register_tiny_backbone
from tlfast import predict
from tlfast import run_folder
from tlfast import training
from tlfast.data import pipeline
from tlfast.data.sources import FileEntry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ants", "bees", "wasps")


def train_run(root, backbone="tiny_test", augment="standard"):
    """Trains a tiny model on a pre-split 3-class folder with one junk file.

    Returns:
      (run_dir, data_dir) as strings.
    """
    register_tiny_backbone()
    data = root / "data"
    make_folder(data / "train", {c: 6 for c in CLASSES}, size=(36, 44))
    make_folder(data / "val", {c: 3 for c in CLASSES}, size=(44, 36))
    (data / "val" / "bees" / "junk.jpg").write_text("not an image")
    keras.utils.set_random_seed(0)
    config = tiny_train_config(root, data, output_dir=str(root / "run"),
                               backbone=backbone, epochs=2, augment=augment)
    training.run_training(config)
    return config.output_dir, str(data)


def cli(module, *args, timeout=180):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", module, *args],
                          capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def error_lines(result, prog):
    return [l for l in result.stderr.splitlines() if f"{prog}: error:" in l]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir, _ = train_run(tmp_path_factory.mktemp("predict"))
    return predict.load_model_run(os.path.join(run_dir, "model.keras"))


@pytest.fixture
def images_dir(tmp_path):
    root = tmp_path / "new"
    for i in range(3):
        write_image(root / f"img_{i}.jpg", noise_image((40, 30), tint=i, seed=i))
    write_image(root / "sub" / "deep.png", noise_image(seed=9), fmt="PNG")
    (root / "notes.txt").write_text("hello")
    (root / "fake.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 20)
    (root / ".hidden.jpg").write_text("ignored")
    return root


def test_load_model_run_reads_labels_size_and_resize(run):
    assert run.class_names == CLASSES
    assert run.image_size == 32
    assert run.resize == "crop"  # The run's config; also the default.
    assert run.run.config["backbone"] == "tiny_test"
    assert run.run.schema == run_folder.SCHEMA_VERSION
    assert run.model.input.dtype == "uint8"


def test_load_model_run_accepts_the_run_folder(run):
    again = predict.load_model_run(run.run_dir)
    assert again.class_names == run.class_names


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model file not found.*model.keras"):
        predict.load_model_run(tmp_path / "nope" / "model.keras")


def test_labels_that_do_not_match_the_outputs_are_refused(run, tmp_path):
    shutil.copy(os.path.join(run.run_dir, "model.keras"), tmp_path)
    (tmp_path / "labels.txt").write_text("only\ntwo\n")
    with pytest.raises(ValueError, match="3 outputs but 2 class names"):
        predict.load_model_run(tmp_path / "model.keras")
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        predict.load_model_run(tmp_path / "model.keras")


def test_a_corrupt_model_file_is_a_clear_error(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="Cannot load .*model.keras.* as a Keras"):
        predict.load_model_run(tmp_path)


def test_list_image_files(images_dir):
    listed = predict.list_image_files(images_dir)
    names = [os.path.relpath(p, images_dir) for p in listed]
    assert names == sorted(["fake.jpg", "img_0.jpg", "img_1.jpg", "img_2.jpg",
                            "notes.txt", os.path.join("sub", "deep.png")])
    assert predict.list_image_files(str(images_dir / "img_*.jpg")) == [
        str(images_dir / f"img_{i}.jpg") for i in range(3)]
    assert len(predict.list_image_files(str(images_dir / "**" / "*.png"))) == 1
    with pytest.raises(FileNotFoundError, match="No files match"):
        predict.list_image_files(str(images_dir / "*.gif"))
    (images_dir / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        predict.list_image_files(images_dir / "empty")


def test_predict_images_reports_junk_and_predicts_the_rest(run, images_dir):
    paths = predict.list_image_files(images_dir)
    rows, skipped = predict.predict_images(run.model, paths, run.class_names,
                                           top_k=5, batch_size=2)
    assert sorted(os.path.basename(s.path) for s in skipped) == [
        "fake.jpg", "notes.txt"]
    assert all(s.reason for s in skipped)
    good = [p for p in paths if not p.endswith(("fake.jpg", "notes.txt"))]
    assert [r["path"] for r in rows] == good
    # top_k is capped at the 3 classes; each row names every class once.
    assert all(sorted(r[f"label_{i}"] for i in (1, 2, 3)) == list(CLASSES)
               for r in rows)
    assert all("label_4" not in r for r in rows)
    # Same numbers as the model on the training decode path.
    entries = [FileEntry(p, p, 0) for p in good]
    images = np.concatenate([b["image"] for b in pipeline.files_dataset(
        entries, 32, "crop").batch(8).as_numpy_iterator()])
    expected = run.model.predict(images, verbose=0)
    for row, probs in zip(rows, expected):
        assert row["label_1"] == CLASSES[int(np.argmax(probs))]
        assert row["prob_1"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert row["prob_1"] >= row["prob_2"] >= row["prob_3"]
        assert row["prob_1"] + row["prob_2"] + row["prob_3"] == pytest.approx(1, abs=1e-4)


def test_a_file_that_fails_decoding_after_the_scan_is_reported(run, images_dir):
    entries = [FileEntry(str(images_dir / n), n, 0)
               for n in ("img_0.jpg", "notes.txt", "img_1.jpg")]
    probs, positions = predict.predict_entries(run.model, entries, batch_size=2)
    assert positions.tolist() == [0, 2] and probs.shape == (2, 3)
    lost = predict.lost_in_decoding(entries, positions)
    assert [s.path for s in lost] == [entries[1].path]


@pytest.mark.parametrize("kwargs,match", [
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"resize": "stretch"}, "resize must be one of"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_bad_arguments(run, images_dir, kwargs, match):
    paths = [str(images_dir / "img_0.jpg")]
    with pytest.raises(ValueError, match=match):
        predict.predict_images(run.model, paths, run.class_names, **kwargs)
    with pytest.raises(ValueError, match="3 outputs but 2 class names"):
        predict.predict_images(run.model, paths, ("a", "b"))


def test_write_predictions_csv(tmp_path):
    rows = [{"path": "a.jpg", "label_1": "x", "prob_1": 0.75, "label_2": "y",
             "prob_2": 0.25}]
    path = tmp_path / "out" / "p.csv"
    predict.write_predictions_csv(path, rows, 2)
    assert path.read_text().splitlines() == [
        "path,label_1,prob_1,label_2,prob_2", "a.jpg,x,0.750000,y,0.250000"]

    class Interrupted(Exception):
        pass

    def rows_then_interrupt():
        yield rows[0]
        raise Interrupted()

    # An interrupted write keeps the previous file whole and leaves no
    # temporary file behind.
    with pytest.raises(Interrupted):
        predict.write_predictions_csv(path, rows_then_interrupt(), 2)
    assert path.read_text().splitlines()[1] == "a.jpg,x,0.750000,y,0.250000"
    assert os.listdir(path.parent) == ["p.csv"]


def test_cli_predicts_a_folder_and_reports_junk(run, images_dir, tmp_path):
    output = tmp_path / "preds.csv"
    result = cli("tlfast.predict_main", f"--model={run.run_dir}/model.keras",
                 f"--images={images_dir}", f"--output={output}", "--top_k=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader(open(output)))
    assert len(rows) == 4
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    assert all(r["label_1"] in CLASSES and 0 <= float(r["prob_1"]) <= 1
               for r in rows)
    skipped_lines = [l for l in result.stderr.splitlines() if l.startswith("skipped:")]
    assert len(skipped_lines) == 2 and any("notes.txt" in l for l in skipped_lines)
    skipped = list(csv.DictReader(open(str(output) + ".skipped.csv")))
    assert sorted(os.path.basename(r["path"]) for r in skipped) == [
        "fake.jpg", "notes.txt"]
    assert "predicted=4 skipped=2" in result.stdout


def test_cli_missing_model_is_one_clear_line(tmp_path, images_dir):
    result = cli("tlfast.predict_main", f"--model={tmp_path}/none/model.keras",
                 f"--images={images_dir}", f"--output={tmp_path}/p.csv")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result, "tlfast-predict")
    assert len(errors) == 1 and "Model file not found" in errors[0], result.stderr


def test_cli_skips_placeholders_as_the_run_did(run, tmp_path):
    # A run trained with skip_placeholders=False predicts line drawings too,
    # unless --skip_placeholders says otherwise.
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["config"]["skip_placeholders"] = False
    (run_dir / "run.json").write_text(json.dumps(meta))
    drawing = np.full((40, 40, 3), 255, np.uint8)
    drawing[10:30, 19:21] = 0
    write_image(tmp_path / "images" / "sketch.png", drawing, fmt="PNG")
    write_image(tmp_path / "images" / "photo.jpg", noise_image())
    counts = {}
    for extra in ([], ["--skip_placeholders"]):
        output = tmp_path / f"p{len(extra)}.csv"
        result = cli("tlfast.predict_main", f"--model={run_dir}",
                     f"--images={tmp_path / 'images'}", f"--output={output}",
                     *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        counts[bool(extra)] = len(list(csv.DictReader(open(output))))
    assert counts == {False: 2, True: 1}


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(run, tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "fine.jpg", noise_image())
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as f:
        f.write((folder / "fine.jpg").read_bytes())
    rows, skipped = predict.predict_images(
        run.model, predict.list_image_files(folder), run.class_names)
    assert [os.path.basename(r["path"]) for r in rows] == ["fine.jpg"]
    assert len(skipped) == 1 and "not valid UTF-8" in skipped[0].reason
