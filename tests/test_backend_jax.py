"""The model side on Keras' JAX backend (KERAS_BACKEND=jax), tf.data feeding it.

Each check runs in a subprocess: the backend is fixed when Keras is first
imported. Skipped where jax is not installed (`pip install -e ".[jax]"`).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_folder

pytest.importorskip("jax")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def jax_env(tmp_path_factory):
    """Subprocess environment: JAX backend, with a compilation cache.

    JAX compiles each weight initializer once per shape (seconds for a
    whole backbone on CPU); the cache, shared by this module's processes,
    lets later processes skip what earlier ones compiled.
    """
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                      env.get("PYTHONPATH")]))
    return env


def run(args, env, timeout=600):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def train(tmp_path, env, *extra):
    data = make_folder(tmp_path / "data", {"ants": 10, "bees": 10})
    out = tmp_path / "out"
    result = run(["-m", "tlfast.train", f"--data_dir={data}", f"--output_dir={out}",
                  f"--cache_dir={tmp_path / 'cache'}", "--backbone=mobilenet_025",
                  "--weights=none", "--image_size=32", "--epochs=2", *extra], env)
    assert "val_accuracy=" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["versions"]["backend"] == "jax"
    return out, metrics


def check_model_loads(model_path, env):
    """model.keras loads under JAX and classifies uint8 images."""
    code = textwrap.dedent(f"""
        import keras, numpy as np
        import tlfast.model  # Registers the custom layers.
        assert keras.backend.backend() == "jax"
        model = keras.saving.load_model({str(model_path)!r})
        out = np.asarray(model.predict(np.zeros((3, 32, 32, 3), np.uint8), verbose=0))
        assert out.shape == (3, 2), out.shape
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        print("LOADED", model.input.dtype)
    """)
    result = run(["-c", code], env)
    assert "LOADED uint8" in result.stdout


def test_train_cli_and_saved_model(tmp_path, jax_env):
    out, metrics = train(tmp_path, jax_env)
    assert metrics["num_train"] + metrics["num_val"] == 20
    assert metrics["feature_cache"] == "miss"
    assert 0 <= metrics["val_accuracy"] <= 1
    check_model_loads(out / "model.keras", jax_env)


def test_benchmark_head_mode(tmp_path, jax_env):
    rows = tmp_path / "rows.jsonl"
    run([REPO / "benchmarks" / "run.py", "--backbones=mobilenet_025",
         "--modes=head", "--head_examples=1000", "--head_epochs=3",
         f"--output={rows}"], jax_env)
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["backend"] == "jax" and row["jax"] and row["xla"] == "always"
    assert row["images_per_sec"] > 0 and row["images"] == 3000


@pytest.mark.slow
def test_fine_tune_cli(tmp_path, jax_env):
    """fit() on the tf.data pipeline under JAX."""
    out, metrics = train(tmp_path, jax_env, "--fine_tune_epochs=1")
    assert "fine_tune" in metrics["timings_s"]
    history = (out / "history.csv").read_text()
    assert "fine_tune" in history
    check_model_loads(out / "model.keras", jax_env)


@pytest.mark.slow
def test_benchmark_model_modes(tmp_path, jax_env):
    data = make_folder(tmp_path / "data", {"ants": 10, "bees": 10})
    rows = tmp_path / "rows.jsonl"
    run([REPO / "benchmarks" / "run.py", f"--data_dir={data}",
         "--backbones=mobilenet_025", "--weights=none", "--image_size=32",
         "--max_images=64", "--modes=forward,extract,finetune",
         f"--output={rows}"], jax_env)
    rows = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["forward", "extract", "finetune"]
    assert all(r["backend"] == "jax" and r["images_per_sec"] > 0 for r in rows)


def test_int8_export_is_refused_before_training(tmp_path, jax_env):
    data = make_folder(tmp_path / "data", {"ants": 3, "bees": 3})
    result = subprocess.run(
        [sys.executable, "-m", "tlfast.train", f"--data_dir={data}",
         f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
         "--backbone=mobilenet_025", "--weights=none", "--image_size=32",
         "--export=tflite,tflite_int8"],
        cwd=REPO, env=jax_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "tflite_int8 needs Keras' TensorFlow backend" in result.stderr
    assert not (tmp_path / "out" / "model.keras").exists()
