import json
import logging
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

from test_predict import CLASSES
from test_predict import REPO
from test_predict import cli
from test_predict import error_lines
from test_predict import train_run
from tlfast import backbones
from tlfast import evaluate
from tlfast import export
from tlfast import predict
from tlfast.data import pipeline
from tlfast.data.split import read_split
from tlfast.data.sources import FileEntry


def _split_entries(run, data_dir, split):
    return [FileEntry(os.path.join(data_dir, *rel.split("/")), rel, label)
            for rel, label in read_split(os.path.join(run.run_dir, "split.csv"))[split]]


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """A keras.applications MobileNet behind tlfast's custom layers
    (BackbonePreprocessing, and Augmentation, inactive at inference)."""
    run_dir, data_dir = train_run(tmp_path_factory.mktemp("export"),
                                  backbone="mobilenet_025", augment="standard")
    run = predict.load_model_run(run_dir)
    val = export.decode_entries(_split_entries(run, data_dir, "validation"), 32,
                                run.resize)
    train = export.decode_entries(_split_entries(run, data_dir, "train"), 32,
                                  run.resize)
    return run, data_dir, train, val


def _layer_classes(model):
    return {type(l).__name__ for l in backbones.layers_within(model)}


@pytest.fixture(scope="module")
def exported(mobilenet, tmp_path_factory):
    run, _, train, val = mobilenet
    out = tmp_path_factory.mktemp("exported")
    report = export.export_model(run.model, export.FORMATS, str(out),
                                 class_names=run.class_names,
                                 representative=train[0], validation=val)
    return out, report


def test_all_formats_match_the_keras_model(mobilenet, exported):
    run = mobilenet[0]
    assert {"BackbonePreprocessing", "Augmentation"} <= _layer_classes(run.model)
    out, report = exported
    assert set(report) == set(export.FORMATS)
    for fmt, info in report.items():
        assert "error" not in info, (fmt, info)
        assert os.path.exists(info["path"]) and info["size_bytes"] > 1000
        assert info["num_images"] == 9
        assert 0 <= info["accuracy"] <= 1 and 0 <= info["top1_agreement"] <= 1
    for fmt in ("keras", "saved_model", "tflite"):
        assert report[fmt]["parity_ok"], (fmt, report[fmt])
        assert report[fmt]["max_prob_diff"] <= 1e-3
        assert report[fmt]["accuracy"] == report[fmt]["reference_accuracy"]
    assert not report["tflite"]["select_tf_ops"]
    assert report["tflite_int8"]["max_prob_diff"] < 0.1
    # Smaller weights, same answers: float16 halves, int8 weights quarter.
    for fmt in ("tflite_fp16", "tflite_dynamic"):
        assert report[fmt]["parity_ok"] is not False, (fmt, report[fmt])
    assert (report["tflite_dynamic"]["size_bytes"]
            < report["tflite_fp16"]["size_bytes"]
            < report["tflite"]["size_bytes"])
    assert report["tflite_fp16"]["max_prob_diff"] <= 1e-2
    assert report["tflite_int8"]["size_bytes"] < report["tflite"]["size_bytes"] / 2
    assert json.loads((out / "export.json").read_text()) == json.loads(
        json.dumps(report))
    for labels in (out / "labels.txt", out / "saved_model" / "labels.txt"):
        assert labels.read_text().split() == list(CLASSES)


def test_every_tflite_carries_its_labels_as_metadata(exported):
    from tlfast import tflite_metadata

    out, report = exported
    labels = (out / "labels.txt").read_text().splitlines()
    for fmt in ("tflite", "tflite_fp16", "tflite_dynamic", "tflite_int8"):
        meta = tflite_metadata.read(open(report[fmt]["path"], "rb").read())
        assert meta["labels"] == labels, fmt
        assert meta["buffer_identifier"] == "M001"
        assert meta["output_files"] == [("labels.txt", 2)]  # TENSOR_AXIS_LABELS
        assert fmt in meta["name"] and report[fmt]["metadata"]


def test_the_official_metadata_reader_reads_it(exported):
    """tflite-support's MetadataDisplayer (it pins protobuf < 4, so it lives
    in another environment: TLFAST_TFLITE_SUPPORT_PYTHON, set by .ci/run)."""
    import subprocess

    python = os.environ.get("TLFAST_TFLITE_SUPPORT_PYTHON")
    if not python or not os.path.exists(python):
        pytest.skip("TLFAST_TFLITE_SUPPORT_PYTHON (a Python with "
                    "tflite-support installed) is not set")
    out, report = exported
    script = (
        "import json, sys\n"
        "from tflite_support import metadata\n"
        "d = metadata.MetadataDisplayer.with_model_file(sys.argv[1])\n"
        "m = json.loads(d.get_metadata_json())\n"
        "print(json.dumps({'labels': d.get_associated_file_buffer("
        "'labels.txt').decode().splitlines(), 'input': m["
        "'subgraph_metadata'][0]['input_tensor_metadata'][0]}))\n")
    found = json.loads(subprocess.run(
        [python, "-c", script, report["tflite"]["path"]], check=True,
        capture_output=True, text=True).stdout.splitlines()[-1])
    assert found["labels"] == (out / "labels.txt").read_text().splitlines()
    assert found["input"]["content"]["content_properties"]["default_size"] == {
        "width": 32, "height": 32}
    assert found["input"]["process_units"][0]["options"] == {
        "mean": [0.0], "std": [1.0]}


def test_saved_model_serves_uint8_batches(mobilenet, exported):
    run, _, _, (images, _) = mobilenet
    serve = tf.saved_model.load(str(exported[0] / "saved_model")).signatures[
        "serving_default"]
    spec = serve.structured_input_signature[1]["image"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    probs = next(iter(serve(image=tf.constant(images[:5])).values())).numpy()
    np.testing.assert_allclose(probs, run.model.predict(images[:5], verbose=0),
                               atol=1e-5)


def test_tflite_runs_uint8_batches_like_keras(mobilenet, exported):
    run, _, _, (images, _) = mobilenet
    probs = export.run_tflite(exported[1]["tflite"]["path"], images[:5],
                              batch_size=2)
    np.testing.assert_allclose(probs, run.model.predict(images[:5], verbose=0),
                               atol=1e-5)


def test_int8_model_is_integer_inside_with_uint8_in_float_out(exported):
    interpreter = export._interpreter(exported[1]["tflite_int8"]["path"])
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details()
             if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(tensors[op["inputs"][0]]["dtype"] == np.int8
                         for op in convs)


def test_serving_model_drops_inference_no_ops_and_shares_weights(mobilenet):
    run, _, _, (images, _) = mobilenet
    serving = export.serving_model(run.model)
    kinds = _layer_classes(serving)
    assert not {"Augmentation", "Dropout"} & kinds and "Identity" in kinds
    assert "BackbonePreprocessing" in kinds
    np.testing.assert_array_equal(serving.predict(images, verbose=0),
                                  run.model.predict(images, verbose=0))
    shared = {id(v) for v in run.model.weights}
    assert all(id(v) in shared for v in serving.weights)


def test_failed_parity_is_reported_not_raised(mobilenet, tmp_path, monkeypatch,
                                             caplog):
    run, _, _, val = mobilenet

    def wrong(fmt, model, path, *args):
        probs = model.predict(val[0], verbose=0)
        return {"path": path}, np.eye(3)[(probs.argmax(1) + 1) % 3]

    monkeypatch.setattr(export, "_export_one", wrong)
    with caplog.at_level(logging.WARNING, logger="tlfast"):
        report = export.export_model(run.model, ["keras"], str(tmp_path),
                                     class_names=run.class_names, validation=val)
    assert report["keras"]["parity_ok"] is False
    assert report["keras"]["top1_agreement"] == 0.0
    assert "differs from the Keras model" in caplog.text


def test_a_failed_format_does_not_stop_the_others(mobilenet, tmp_path,
                                                 monkeypatch):
    run = mobilenet[0]

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "serving_model",
                        lambda model: types.SimpleNamespace(export=broken))
    report = export.export_model(run.model, ["keras", "saved_model", "tflite"],
                                 str(tmp_path), class_names=run.class_names)
    for fmt in ("saved_model", "tflite"):
        assert report[fmt]["error"] == (
            "SavedModel export failed: RuntimeError: disk full")
    assert "error" not in report["keras"]
    assert report["keras"]["parity_ok"] is None  # No validation images.
    assert os.path.isfile(report["keras"]["path"])


def test_ops_without_a_tflite_builtin_fall_back_to_select_tf_ops(tmp_path):
    class Determinant(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2, 2], tf.float32)])
        def serve(self, x):
            return {"det": tf.linalg.det(x)}

    module = Determinant()
    tf.saved_model.save(module, str(tmp_path),
                        signatures={"serving_default": module.serve})
    flatbuffer, select_ops = export._convert(str(tmp_path))
    assert select_ops and len(flatbuffer) > 100


def test_parity_thresholds():
    reference = np.array([[0.9, 0.1]] * 200 + [[0.6, 0.4]])
    close = reference + 5e-4
    assert export.parity(reference, close)["parity_ok"]
    assert not export.parity(reference, reference + 2e-3)["parity_ok"]
    flipped = reference.copy()
    flipped[-1] = [0.4, 0.6]
    result = export.parity(reference, flipped, np.zeros(201, int))
    assert result["top1_agreement"] == pytest.approx(200 / 201)
    assert result["accuracy"] == pytest.approx(200 / 201)
    assert result["reference_accuracy"] == 1.0
    assert not result["parity_ok"]  # 0.995 top-1 but 0.2 off.
    assert export.parity(reference, flipped, quantized=True)["parity_ok"]
    # Near-ties (a barely trained model) may swap: only the size of the
    # change counts for float, and int8 has nothing decisive to check.
    ties = np.array([[0.5004, 0.4996], [0.4996, 0.5004]] * 50)
    swapped = ties[:, ::-1]
    result = export.parity(ties, swapped)
    assert result["top1_agreement"] == 0.0 and result["parity_ok"]
    assert result["decisive_images"] == 0
    assert export.parity(ties, swapped, quantized=True)["parity_ok"] is None
    assert not export.parity(ties, np.array([[1.0, 0.0]] * 100))["parity_ok"]


def test_as_arrays_accepts_datasets_and_pairs(mobilenet):
    run, data_dir, _, (images, labels) = mobilenet
    entries = _split_entries(run, data_dir, "validation")
    ds = pipeline.files_dataset(entries, 32, run.resize)
    for data in (ds, ds.batch(4), ds.map(lambda e: (e["image"], e["label"]))):
        got_images, got_labels = export.as_arrays(data, "validation")
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
    got, none = export.as_arrays(images, "validation")
    assert got is images and none is None
    with pytest.raises(ValueError, match="uint8 images.*float32"):
        export.as_arrays(images.astype("float32"), "validation")
    with pytest.raises(ValueError, match="9 images but 2 labels"):
        export.as_arrays((images, labels[:2]), "validation")


def test_bad_arguments(mobilenet, tmp_path):
    run = mobilenet[0]
    with pytest.raises(ValueError, match="Unknown export format 'tflight'.*"
                       "Did you mean 'tflite'"):
        export.export_model(run.model, "keras,tflight", str(tmp_path),
                            class_names=run.class_names)
    with pytest.raises(ValueError, match="tflite_int8 needs representative"):
        export.export_model(run.model, "tflite_int8", str(tmp_path),
                            class_names=run.class_names)
    with pytest.raises(ValueError, match="3 outputs but 2 class names"):
        export.export_model(run.model, "keras", str(tmp_path),
                            class_names=("a", "b"))
    assert not os.listdir(tmp_path)


def test_cli_exports_with_the_runs_data(mobilenet, tmp_path):
    run = mobilenet[0]
    out = tmp_path / "exp"
    result = cli("tlfast.export_main", f"--model={run.run_dir}/model.keras",
                 "--formats=tflite_int8", f"--output_dir={out}",
                 "--num_representative=7")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    # Calibrated on, and checked against, the run's own images (split.csv).
    assert report["tflite_int8"]["num_images"] == 9
    assert report["tflite_int8"]["representative_images"] == 7
    assert report["tflite_int8"]["max_prob_diff"] < 0.1
    assert sorted(os.listdir(out)) == ["export.json", "labels.txt",
                                       "model_int8.tflite"]


def test_cli_errors_are_one_clear_line(mobilenet, tmp_path):
    run = mobilenet[0]
    result = cli("tlfast.export_main", f"--model={tmp_path}/none/model.keras",
                 f"--output_dir={tmp_path / 'o'}")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result, "tlfast-export")
    assert len(errors) == 1 and "Model file not found" in errors[0], result.stderr
    result = cli("tlfast.export_main", f"--model={run.run_dir}/model.keras",
                 f"--output_dir={tmp_path / 'o'}", "--num_representative=0")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result, "tlfast-export")
    assert len(errors) == 1 and "num_representative must be an integer >= 1" in errors[0]


@pytest.mark.slow
def test_jax_backend_predicts_evaluates_and_exports_float_formats(mobilenet,
                                                                  tmp_path):
    pytest.importorskip("jax")
    run, data_dir, _, (images, labels) = mobilenet
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    code = textwrap.dedent(f"""
        import json, keras, numpy as np
        from tlfast import evaluate, export, predict
        assert keras.backend.backend() == "jax"
        run = predict.load_model_run({run.run_dir!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        labels = np.load({str(tmp_path / "labels.npy")!r})
        entries, skipped, _ = evaluate.load_eval_entries(
            {data_dir!r}, run.class_names)
        report = evaluate.evaluate_model(run.model, entries, run.class_names,
                                         None, resize=run.resize)
        exported = export.export_model(
            run.model, "saved_model,tflite", {str(tmp_path / "out")!r},
            class_names=run.class_names, validation=(images, labels))
        try:
            export.export_model(run.model, "tflite_int8", {str(tmp_path)!r},
                                class_names=run.class_names)
        except ValueError as e:
            int8_error = str(e)
        print("RESULT", json.dumps({{
            "probs": run.model.predict(images, verbose=0).tolist(),
            "accuracy": report["accuracy"], "export": exported,
            "int8_error": int8_error}}))
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    np.testing.assert_allclose(out["probs"], run.model.predict(images, verbose=0),
                               atol=1e-5)
    for fmt in ("saved_model", "tflite"):
        assert out["export"][fmt]["parity_ok"], out["export"][fmt]
    assert "KERAS_BACKEND=tensorflow" in out["int8_error"]
    entries = evaluate.load_eval_entries(data_dir, run.class_names)[0]
    tf_report = evaluate.evaluate_model(run.model, entries, run.class_names, None)
    assert out["accuracy"] == tf_report["accuracy"]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_exports_to_tflite(tmp_path, policy):
    import keras

    from test_backbones import register_tiny_backbone
    from tlfast import backbones
    from tlfast import head as head_lib
    from tlfast import model as model_lib

    register_tiny_backbone()
    keras.mixed_precision.set_global_policy(policy)
    try:
        backbone = backbones.create_backbone("tiny_test", None, 32)
        head = head_lib.build_head(backbones.get_backbone_spec("tiny_test")
                                   .feature_dim, 3)
        model = model_lib.build_classifier(backbone, head, None)
        serving = export.serving_model(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {l.dtype_policy.name for l in backbones.layers_within(serving)
            if not isinstance(l, (keras.Model, keras.layers.InputLayer))
            } == {"float32"}
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    report = export.export_model(model, ["tflite", "tflite_int8"], str(tmp_path),
                                 class_names=CLASSES, representative=images,
                                 validation=(images, np.zeros(8, int)))
    assert report["tflite_int8"]["representative_images"] == 8
    for fmt in ("tflite", "tflite_int8"):
        assert "error" not in report[fmt], report[fmt]
        assert not report[fmt]["select_tf_ops"]
        # A random tiny model's outputs may all be near-ties: nothing
        # decisive for int8 (None), but never a failure.
        assert report[fmt]["parity_ok"] is not False
        # Measured against the float32 copy it was converted from, not the
        # 16-bit model's rounding.
        assert report[fmt]["reference"] == "float32 copy of the model"
    assert report["tflite"]["max_prob_diff"] < 1e-4


def test_problems_name_failed_exports_and_failed_parity():
    report = {
        "keras": {"path": "m.keras", "parity_ok": True, "top1_agreement": 1.0,
                  "max_prob_diff": 0.0, "num_images": 4},
        "saved_model": {"path": "sm", "parity_ok": None},
        "tflite": {"path": "m.tflite", "parity_ok": False,
                   "top1_agreement": 0.5, "max_prob_diff": 0.4,
                   "num_images": 4},
        "tflite_int8": {"path": "q.tflite", "error": "converter crashed"},
    }
    lines = export.problems(report)
    assert len(lines) == 2
    assert "tflite differs" in lines[0] and "0.5000" in lines[0]
    assert "m.tflite" in lines[0]
    assert lines[1] == "export tflite_int8 failed: converter crashed"
    assert export.problems({"keras": report["keras"]}) == []


def test_representative_images_are_capped_where_asked(mobilenet, tmp_path):
    run, _, (train, _), _ = mobilenet
    assert len(train) > 12
    report = export.export_model(run.model, ["tflite_int8"], str(tmp_path),
                                 class_names=run.class_names,
                                 representative=train, max_representative=12)
    assert report["tflite_int8"]["representative_images"] == 12
