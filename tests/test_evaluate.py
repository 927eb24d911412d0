import csv
import json
import os

import keras
import numpy as np
import pytest

from conftest import assets_path
from conftest import make_folder
from test_predict import CLASSES
from test_predict import cli
from test_predict import error_lines
from test_predict import train_run
from tlfast import evaluate
from tlfast import predict
from tlfast.data import prepare
from tlfast import training
from tlfast.data import pipeline


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    run_dir, data_dir = train_run(tmp_path_factory.mktemp("evaluate"))
    return predict.load_model_run(run_dir), data_dir


def test_classification_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1],   # true 0, predicted 0
                      [0.5, 0.4, 0.1],   # true 1, predicted 0; 1 is 2nd
                      [0.1, 0.1, 0.8],   # true 2, predicted 2
                      [0.2, 0.1, 0.7],   # true 1, predicted 2; 1 is 3rd
                      [0.1, 0.6, 0.3]])  # true 1, predicted 1
    labels = np.array([0, 1, 2, 1, 1])
    m = evaluate.classification_metrics(probs, labels, ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["top_k"] == 2 and m["top_k_accuracy"] == pytest.approx(4 / 5)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["macro_avg"]["recall"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert evaluate.classification_metrics(probs, labels, "abc", top_k=9)[
        "top_k"] == 3
    never = evaluate.classification_metrics(probs[:1], labels[:1], "abc")
    assert never["per_class"]["b"] == {"precision": 0.0, "recall": 0.0,
                                       "f1": 0.0, "support": 0}
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        evaluate.classification_metrics(probs, labels + 1, "abc")
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate.classification_metrics(probs[:0], labels[:0], "abc")


def test_macro_average_leaves_out_classes_absent_from_the_split():
    # Perfect on a and b; c neither occurs nor is predicted (as sklearn).
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    m = evaluate.classification_metrics(probs, np.array([0, 1]), "abc")
    assert m["macro_avg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_confident_errors_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([1, 0, 0, 0])
    errors = evaluate.confident_errors(probs, labels, list("pqrs"), ["x", "y"],
                                       worst=2)
    assert [e["path"] for e in errors] == ["p", "r"]
    assert errors[0] == {"path": "p", "true": "y", "predicted": "x",
                         "probability": 0.9, "true_probability": 0.1}


def test_evaluate_on_the_validation_split(setup, tmp_path):
    run, data_dir = setup
    entries, skipped, split = evaluate.load_eval_entries(data_dir, run.class_names)
    assert split == "validation" and len(entries) == 9
    assert [os.path.basename(s.path) for s in skipped] == ["junk.jpg"]
    out = tmp_path / "eval"
    report = evaluate.evaluate_model(
        run.model, entries, run.class_names, str(out), top_k=2, skipped=skipped,
        metrics_file="metrics.json")
    for name in ("metrics.json", "confusion_matrix.png", "predictions.csv"):
        assert (out / name).is_file(), name
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert report["num_examples"] == 9
    assert np.sum(report["confusion_matrix"]) == 9
    assert [report["per_class"][c]["support"] for c in CLASSES] == [3, 3, 3]
    assert report["skipped"][0]["reason"].startswith("not an image")
    # The accuracy is the model's on the same pixels.
    images = np.concatenate([b["image"] for b in pipeline.files_dataset(
        entries, 32, "crop").batch(4).as_numpy_iterator()])
    predicted = run.model.predict(images, verbose=0).argmax(1)
    labels = np.array([e.label for e in entries])
    assert report["accuracy"] == pytest.approx(np.mean(predicted == labels))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["predicted"] for r in rows] == [CLASSES[p] for p in predicted]
    assert len(report["most_confident_errors"]) == int(np.sum(predicted != labels))


def test_splits(setup, tmp_path):
    run, data_dir = setup
    names = run.class_names
    assert len(evaluate.load_eval_entries(data_dir, names, split="all")[0]) == 27
    assert len(evaluate.load_eval_entries(data_dir, names, split="train")[0]) == 18
    with pytest.raises(ValueError, match=r"no 'test' split. Available: \['train', "
                       r"'validation'\]"):
        evaluate.load_eval_entries(data_dir, names, split="test")
    flat = make_folder(tmp_path / "flat", {c: 5 for c in CLASSES})
    entries, _, split = evaluate.load_eval_entries(flat, names)
    assert split == "all" and len(entries) == 15
    # On a flat folder, "validation" re-creates the training run's split.
    entries, _, _ = evaluate.load_eval_entries(flat, names, split="validation",
                                               validation_split=0.4, seed=3)
    prepared = prepare.prepare_folder(flat, validation_split=0.4, seed=3)
    assert [e.path for e in entries] == [e.path for e in prepared.validation]


def test_class_sets_that_differ_name_the_classes(setup, tmp_path):
    run, _ = setup
    other = make_folder(tmp_path / "other", {"ants": 2, "bees": 2, "flies": 2})
    with pytest.raises(ValueError, match=r"Missing .*\['wasps'\].*extra .*"
                       r"\['flies'\]"):
        evaluate.load_eval_entries(other, run.class_names)


def test_empty_and_missing_folders(setup, tmp_path):
    run, _ = setup
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least 2 class sub-folders"):
        evaluate.load_eval_entries(tmp_path / "empty", run.class_names)
    for c in CLASSES:
        (tmp_path / "no_images" / c).mkdir(parents=True)
    with pytest.raises(ValueError, match="No usable images to evaluate"):
        evaluate.load_eval_entries(tmp_path / "no_images", run.class_names)
    with pytest.raises(FileNotFoundError, match="Dataset folder not found"):
        evaluate.load_eval_entries(tmp_path / "nope", run.class_names)
    with pytest.raises(ValueError, match="entries is empty"):
        evaluate.evaluate_model(run.model, [], run.class_names, None)


def test_cli_writes_metrics_and_plot(setup, tmp_path):
    run, data_dir = setup
    out = tmp_path / "eval"
    result = cli("tlfast.evaluate_main", f"--model={run.run_dir}/model.keras",
                 f"--data_dir={data_dir}", f"--output_dir={out}", "--top_k=2")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "validation" and report["num_examples"] == 9
    assert report["top_k"] == 2 and "top_2_accuracy=" in result.stdout
    assert (out / "confusion_matrix.png").stat().st_size > 5000
    assert any("junk.jpg" in l for l in result.stderr.splitlines()
               if l.startswith("skipped:"))


def test_a_runs_own_reports_are_kept(setup, tmp_path):
    run, data_dir = setup
    assert evaluate.report_dir_for(run.run_dir, "validation") == os.path.join(
        run.run_dir, "eval_validation")
    assert evaluate.report_dir_for(str(tmp_path), "all") == str(tmp_path)
    own = {name: os.stat(os.path.join(run.run_dir, name)).st_mtime_ns
           for name in ("metrics.json", "evaluation.json", "predictions.csv")}
    result = cli("tlfast.evaluate_main", f"--model={run.run_dir}",
                 f"--data_dir={data_dir}", f"--output_dir={run.run_dir}",
                 "--split=all")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(open(os.path.join(run.run_dir, "eval_all",
                                          "metrics.json")).read())
    assert report["split"] == "all" and report["num_examples"] == 27
    assert own == {name: os.stat(os.path.join(run.run_dir, name)).st_mtime_ns
                   for name in own}


def test_hash_split_is_made_after_the_scan_as_in_training(setup, tmp_path):
    run, _ = setup
    flat = make_folder(tmp_path / "flat", {c: 3 for c in CLASSES})
    # A bad file decides how many of its class are usable: split after the
    # scan, as training does, or the sides differ.
    (flat / CLASSES[0] / "img_000.jpg").write_bytes(b"not an image")
    prepared = prepare.prepare_folder(flat, validation_split=0.34, seed=0)
    for side in ("train", "validation"):
        entries, skipped, _ = evaluate.load_eval_entries(
            flat, run.class_names, split=side, validation_split=0.34, seed=0)
        assert [e.path for e in entries] == [
            e.path for e in getattr(prepared, side)]
        assert [s.path for s in skipped] == [str(flat / CLASSES[0] / "img_000.jpg")]


def test_cli_wrong_classes_is_one_clear_line(setup, tmp_path):
    run, _ = setup
    data_dir = make_folder(tmp_path / "other", {"ants": 2, "flies": 2})
    result = cli("tlfast.evaluate_main", f"--model={run.run_dir}/model.keras",
                 f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'o'}")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result, "tlfast-evaluate")
    assert len(errors) == 1, result.stderr[-3000:]
    assert "['bees', 'wasps']" in errors[0] and "['flies']" in errors[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.assets
def test_hymenoptera_evaluate_and_predict_reproduce_the_run(tmp_path):
    data = assets_path("datasets", "hymenoptera")
    weights = assets_path("weights", "mobilenet_v1_0.25_224_no_top.weights.h5")
    keras.utils.set_random_seed(0)
    config = training.TrainConfig(
        data_dir=str(data), backbone="mobilenet_025", weights=str(weights),
        output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    metrics = training.run_training(config)
    run = predict.load_model_run(tmp_path / "run")
    entries, skipped, split = evaluate.load_eval_entries(
        data, run.class_names, cache_dir=str(tmp_path / "cache"))
    assert split == "validation" and len(entries) == 153 and not skipped
    report = evaluate.evaluate_model(run.model, entries, run.class_names,
                                     str(tmp_path / "eval"), resize=run.resize)
    # The run's number comes from float16-cached features; this from pixels.
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=0.01)
    rows, skipped = predict.predict_images(
        run.model, predict.list_image_files(data / "val"), run.class_names,
        resize=run.resize)
    assert len(rows) == 153 and not skipped
    evaluated = {r["path"]: r["predicted"] for r in csv.DictReader(
        open(tmp_path / "eval" / "predictions.csv"))}
    assert {os.path.abspath(r["path"]): r["label_1"] for r in rows} == evaluated


def test_auto_on_the_runs_own_flat_folder_means_its_validation_images(
        setup, tmp_path):
    import shutil

    run, _ = setup
    flat = make_folder(tmp_path / "flat", {c: 5 for c in CLASSES})
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["config"].update(data_dir=str(flat), validation_split=0.4, seed=3)
    (run_dir / "run.json").write_text(json.dumps(info))
    out = tmp_path / "eval"
    result = cli("tlfast.evaluate_main", f"--model={run_dir}",
                 f"--data_dir={flat}/", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    prepared = prepare.prepare_folder(flat, validation_split=0.4, seed=3)
    assert report["split"] == "validation"
    assert report["num_examples"] == len(prepared.validation) < 15


def test_model_class_order_and_subsets_are_mapped_by_name(setup, tmp_path):
    run, data_dir = setup
    # A model trained on a TFDS dataset keeps that dataset's class order;
    # a folder's is sorted.
    order = tuple(reversed(run.class_names))
    entries, _, _ = evaluate.load_eval_entries(data_dir, order, split="all")
    for entry in entries:
        assert order[entry.label] == entry.relpath.split("/")[1]
    # A folder without one of the model's classes is still evaluated.
    subset = make_folder(tmp_path / "subset", {c: 2 for c in CLASSES[1:]})
    entries, _, _ = evaluate.load_eval_entries(subset, run.class_names)
    assert sorted({run.class_names[e.label] for e in entries}) == list(CLASSES[1:])
    report = evaluate.evaluate_model(run.model, entries, run.class_names, None)
    assert report["num_examples"] == 4


def test_evaluating_after_the_training_folder_moved(setup, tmp_path):
    import shutil

    run, data_dir = setup
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["config"]["data_dir"] = str(tmp_path / "moved_away")
    (run_dir / "run.json").write_text(json.dumps(info))
    from tlfast import config

    report = evaluate.run_evaluation(config.EvaluateConfig(
        model=str(run_dir), data_dir=str(data_dir),
        output_dir=str(tmp_path / "eval")))
    assert report["num_examples"] > 0
