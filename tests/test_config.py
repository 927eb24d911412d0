"""tlfast.config: one definition of every setting, checked when made, TF-free."""

import dataclasses
import os
import subprocess
import sys

import pytest

from tlfast import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OK = dict(data_dir="/d", output_dir="/o")


def test_importing_config_imports_no_tensorflow():
    code = ("import sys, tlfast.config; print([m for m in sys.modules if "
            "m.startswith(('tensorflow', 'keras'))])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=REPO, timeout=60,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


def test_library_constants_are_the_config_ones():
    from tlfast import distribute
    from tlfast import export
    from tlfast import evaluate
    from tlfast import precision
    from tlfast.data import pipeline
    from tlfast.data import scan

    assert pipeline.RESIZE_MODES is config.RESIZE_MODES
    assert export.FORMATS is config.EXPORT_FORMATS
    assert evaluate.SPLITS is config.EVAL_SPLITS
    assert distribute.DISTRIBUTIONS is config.DISTRIBUTIONS
    assert precision.PRECISIONS is config.PRECISIONS
    assert scan.DEFAULT_MAX_PIXELS == config.DEFAULT_MAX_PIXELS
    # The README's library example feeds the pixels tlfast-train trains on.
    assert (pipeline.PipelineConfig().resize == config.TrainConfig.resize
            == config.DEFAULT_RESIZE)


@pytest.mark.parametrize("change,match", [
    ({"output_dir": None}, "output_dir is required"),
    ({"data_dir": None}, "Received neither"),
    ({"tfds_name": "x"}, "either data_dir or tfds_name"),
    ({"validation_split": 1.0}, r"validation_split must be in \(0, 1\)"),
    ({"image_size": 0}, "image_size must be None"),
    ({"resize": "squash"}, r"resize must be one of \('resize', 'crop', 'pad'\)"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"batch_size": True}, "batch_size must be an integer >= 1"),
    ({"batch_size": "8"}, "batch_size must be an integer >= 1"),
    ({"head_batch_size": 0}, "head_batch_size must be"),
    ({"epochs": 0}, "epochs must be"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"label_smoothing": -0.1}, "label_smoothing must be"),
    ({"feature_dtype": "bfloat16"}, "feature_dtype must be one of"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"distribution": "horovod"}, "distribution must be one of"),
    ({"augment": "flip,twirl"}, "Unknown augmentation op 'twirl'"),
    ({"augment": "none", "augment_views": 2}, "augment_views > 0 needs"),
    ({"export": "keras,onnx"}, "Unknown export format 'onnx'"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32\)"),
    ({"data_dir": None, "tfds_name": "tf_flowers", "export": "tflite_int8"},
     "tflite_int8 needs an image folder"),
    ({"data_dir": None, "tfds_name": "tf_flowers",
      "data_service_address": "grpc://h:1"}, "not tfds_name"),
])
def test_bad_values_fail_when_the_config_is_made(change, match):
    with pytest.raises(ValueError, match=match) as info:
        config.TrainConfig(**{**_OK, **change})
    assert "Received" in str(info.value)


def test_good_config_resolves_its_head_and_formats():
    made = config.TrainConfig(**_OK, head_batch_size=64, export="tflite, keras,tflite")
    assert made.export_formats == ("tflite", "keras")
    assert made.head() == config.HeadConfig(batch_size=64)
    assert config.TrainConfig.head_batch_size == config.HeadConfig.batch_size


@pytest.mark.parametrize("cls,kwargs,match", [
    (config.EvaluateConfig, {"split": "dev"}, "split must be one of"),
    (config.EvaluateConfig, {"worst": -1}, "worst must be"),
    (config.PredictConfig, {"resize": "squash"}, "resize must be one of"),
    (config.PredictConfig, {"top_k": 0}, "top_k must be"),
    (config.ExportConfig, {"formats": ""}, "formats must name at least one"),
    (config.ExportConfig, {"parity_images": -1}, "parity_images must be"),
    (config.ServiceConfig, {"role": "worker"}, "dispatcher=host:port is required"),
    (config.ServiceConfig, {"port": 70000}, "port must be"),
    (config.HeadConfig, {"patience": -1}, "patience must be"),
])
def test_other_commands_check_their_values(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_every_setting_has_help_and_a_default():
    for cls in (config.TrainConfig, config.EvaluateConfig,
                config.PredictConfig, config.ExportConfig,
                config.ServiceConfig):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), (cls.__name__, field.name)
            assert field.default is not dataclasses.MISSING
