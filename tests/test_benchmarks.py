"""benchmarks/run.py and benchmarks/make_seed_folder.py, run as scripts.

The scripts define absl flags whose names clash with tlfast.train's, so they
always run in their own process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import make_folder

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
COMMON_FIELDS = ("backbone", "mode", "precision", "images_per_sec", "device",
                 "backend", "tensorflow", "keras", "jax", "batch_size", "xla",
                 "git_commit", "cpu_count", "load_avg_1m")


def script_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                      env.get("PYTHONPATH")]))
    return env


def run_script(args, env=None, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO,
                          env=env or script_env(), capture_output=True,
                          text=True, timeout=timeout)


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def tiny_folder(tmp_path):
    return make_folder(tmp_path / "data", {"ants": 10, "bees": 10})


def test_model_modes_rows_table_and_plots(tiny_folder, tmp_path):
    out, table, plots = tmp_path / "rows.jsonl", tmp_path / "t.txt", tmp_path / "p"
    result = run_script([
        RUN, f"--data_dir={tiny_folder}", "--backbones=mobilenet_025",
        "--weights=none", "--image_size=32", "--max_images=64",
        "--modes=forward,extract,head,finetune", "--head_examples=2000",
        f"--output={out}", f"--table={table}", f"--plot={plots}"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(out)
    assert [r["mode"] for r in rows] == ["forward", "extract", "head", "finetune"]
    for row in rows:
        assert "error" not in row, row
        for field in COMMON_FIELDS:
            assert field in row, (field, row["mode"])
        assert row["backbone"] == "mobilenet_025"
        assert row["precision"] == "float32"
        assert row["images_per_sec"] > 0
        assert row["compile_seconds"] >= 0
        assert row["median_step_ms"] > 0
        assert row["p90_step_ms"] >= row["median_step_ms"]
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["forward"]["images"] == 64
    assert by_mode["extract"]["images"] == 64  # 20 files cycled to 64.
    assert by_mode["head"]["images"] == 2000 * 10
    assert by_mode["head"]["feature_dim"] == 256
    assert by_mode["head"]["batch_size"] == 256
    assert by_mode["finetune"]["augment"] == "standard"
    printed = table.read_text()
    assert "extract / forward" in printed and "mobilenet_025" in printed
    assert printed.strip() in result.stdout
    for mode in ("forward", "extract", "head", "finetune"):
        assert (plots / f"{mode}.png").stat().st_size > 1000


def test_out_of_memory_becomes_an_error_row(tmp_path):
    """OOM from TF, JAX/XLA or Python is a row; any other failure raises."""
    out = tmp_path / "rows.jsonl"
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("bench_run", {str(RUN)!r})
        run = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
        import tensorflow as tf
        from absl import app

        def tf_oom(job):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating")
        def host_oom(job):
            raise MemoryError("Unable to allocate 12.0 GiB")
        def xla_oom(job):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GB")
        def bug(job):
            raise ValueError("not memory")

        run.MODES.update(forward=tf_oom, head=host_oom, finetune=xla_oom,
                         extract=bug)
        try:
            app.run(run.main, argv=["run.py", "--backbones=mobilenet_025",
                                    "--modes=forward,head,finetune",
                                    "--output={out}"])
        except SystemExit as e:
            assert not e.code, e.code
        job = run.Job(run.Settings(), {str(tmp_path)!r}, "mobilenet_025", "float32")
        try:
            run.run_job("extract", job, {{}})
        except ValueError:
            print("BUG RAISED")
        import keras
        print("POLICY", keras.mixed_precision.global_policy().name)
    """)
    result = run_script(["-c", code])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BUG RAISED" in result.stdout
    assert "POLICY float32" in result.stdout  # Restored after each row.
    rows = {r["mode"]: r for r in read_rows(out)}
    assert set(rows) == {"forward", "head", "finetune"}
    assert rows["forward"]["error"].startswith("ResourceExhaustedError")
    assert rows["head"]["error"].startswith("MemoryError")
    assert "RESOURCE_EXHAUSTED" in rows["finetune"]["error"]
    for row in rows.values():
        assert row["images_per_sec"] == 0.0 and row["backbone"] == "mobilenet_025"
    assert "ERROR" in result.stdout  # The table still prints.


def test_unknown_mode_fails_with_a_usage_message():
    result = run_script([RUN, "--modes=forward,nope"])
    assert result.returncode != 0 and "Unknown --modes ['nope']" in result.stderr


@pytest.mark.slow
def test_more_bad_flags():
    result = run_script([RUN, "--modes=extract"])
    assert result.returncode != 0 and "--data_dir is required" in result.stderr
    result = run_script([RUN, "--backbones=mobilenetv2", "--modes=head"])
    assert result.returncode != 0 and "mobilenet_v2" in result.stderr


def test_make_seed_folder(tmp_path):
    source = tmp_path / "src"
    make_folder(source / "train", {"a": 4, "b": 5, "c": 1})
    make_folder(source / "val", {"a": 2, "b": 2, "c": 2})
    out = tmp_path / "seed"
    script = REPO / "benchmarks" / "make_seed_folder.py"
    args = [script, f"--source={source}", f"--output_dir={out}",
            "--per_class_train=3", "--per_class_val=2"]
    result = run_script([*args, "--classes=a,b"])
    assert result.returncode == 0, result.stderr
    for split, n in (("train", 3), ("val", 2)):
        for name in ("a", "b"):
            files = sorted((out / split / name).iterdir())
            assert len(files) == n and all(f.is_symlink() for f in files)
            # The first files by name, from the same split of the source.
            assert [f.resolve() for f in files] == sorted(
                (source / split / name).iterdir())[:n]
    result = run_script([*args, "--classes=a,c"])
    assert result.returncode == 2 and "has 1 photos; 3 are needed" in result.stderr


@pytest.mark.slow
def test_recipe_and_input_modes(tmp_path):
    data = tmp_path / "split"
    make_folder(data / "train", {"ants": 12, "bees": 12})
    make_folder(data / "val", {"ants": 4, "bees": 4})
    out = tmp_path / "rows.jsonl"
    result = run_script([
        RUN, f"--data_dir={data}", "--backbones=mobilenet_025", "--weights=none",
        "--image_size=32", "--epochs=2", "--repeats=1", f"--output={out}",
        "--modes=tlfast_recipe,seed_recipe,bare_decode,pipeline,pipeline_cached,idg"],
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_rows(out)
    # seed_recipe runs first whatever the order of --modes.
    assert [(r["mode"], r.get("cache")) for r in rows] == [
        ("seed_recipe", None), ("tlfast_recipe", "cold"), ("tlfast_recipe", "warm"),
        ("bare_decode", None), ("pipeline", None), ("pipeline_cached", None),
        ("idg", None)]
    seed, cold, warm = rows[:3]
    assert seed["num_train"] == cold["num_train"] == 24
    assert seed["num_val"] == cold["num_val"] == 8
    assert 0 <= seed["val_accuracy"] <= 1
    assert cold["feature_cache"] == "miss" and warm["feature_cache"] == "hit"
    for row in (cold, warm):
        assert row["speedup_vs_seed"] == pytest.approx(seed["seconds"] / row["seconds"])
    assert all(r["images_per_sec"] > 0 for r in rows)
    assert "tlfast_recipe speed-up over seed_recipe" in result.stdout


def test_gpu_check_smoke_runs_every_step(tmp_path):
    # The device run's rehearsal: every step at CPU size (issue: GPU check).
    out = tmp_path / "rows.jsonl"
    result = run_script([REPO / "benchmarks" / "gpu_check.py", "--smoke",
                         f"--out={out}", f"--work_dir={tmp_path / 'work'}"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rows = read_rows(out)
    modes = [r["mode"] for r in rows]
    assert modes[0] == "make_folder" and modes[-2:] == [
        "tlfast_train_cold", "tlfast_train_warm"]
    assert {"forward", "extract", "finetune", "bare_decode", "idg"} <= set(modes)
    model_rows = [r for r in rows if r["mode"] in ("forward", "extract")]
    # --precision=auto resolves to a policy on every model row (float32 here).
    assert all(r["precision"] == "float32" for r in model_rows)
    warm = rows[-1]
    assert warm["feature_cache"] == "hit" and rows[-2]["feature_cache"] == "miss"
