import csv
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import make_folder
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import distribute
from tlfast import training


def test_strategy_names():
    assert distribute.make_strategy("none") is None
    strategy = distribute.make_strategy("mirrored")
    assert distribute.num_replicas(strategy) >= 1
    assert distribute.workers_of(strategy) == distribute.Workers(0, 1)
    assert distribute.all_sum(strategy, 3) == 3
    assert distribute.all_sum(None, 3) == 3
    with pytest.raises(ValueError, match="Received: distribution='ring'"):
        distribute.check_distribution("ring")


@pytest.mark.parametrize("tf_config, problem", [
    (None, "Received: TF_CONFIG unset"),
    ("{not json", "must be JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", '
     '"index": 3}}', "must be JSON"),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "must be JSON"),
    # Malformed shapes: a list for the cluster, a string for the addresses.
    ('{"cluster": ["h:1"], "task": {"type": "worker", "index": 0}}',
     "must be JSON"),
    ('{"cluster": {"worker": "host1:1"}, "task": {"type": "worker", '
     '"index": 3}}', "must be JSON"),
])
def test_multi_worker_needs_a_usable_tf_config(monkeypatch, tf_config, problem):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=problem):
        distribute.check_distribution("multi_worker")


def test_local_cluster_names_every_worker_once(monkeypatch):
    configs = distribute.local_cluster(3)
    workers = json.loads(configs[0])["cluster"]["worker"]
    assert len(set(workers)) == 3
    for index, tf_config in enumerate(configs):
        assert json.loads(tf_config) == {"cluster": {"worker": workers},
                                         "task": {"type": "worker",
                                                  "index": index}}
        monkeypatch.setenv("TF_CONFIG", tf_config)
        assert distribute.check_distribution("multi_worker") == "multi_worker"


def test_tpu_without_a_tpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RuntimeError, match="found no TPU"):
        distribute.make_strategy("tpu")


def test_workers_of_a_cluster_with_a_chief(monkeypatch):
    import tensorflow as tf

    class FakeMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def __init__(self):  # No cluster is started.
            pass
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
        "task": {"type": "worker", "index": 1}}))
    workers = distribute.workers_of(FakeMultiWorker())
    assert workers == distribute.Workers(2, 3) and not workers.is_chief


def test_mirrored_training_on_one_cpu_device(tmp_path):
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    config = tiny_train_config(tmp_path, root, batch_size=4, fine_tune_epochs=1,
                               distribution="mirrored")
    keras.utils.set_random_seed(0)
    metrics = training.run_training(config)
    assert metrics["num_train"] + metrics["num_val"] == 20
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert model.output_shape == (None, 2)


_WORKER = textwrap.dedent("""
    import json, logging, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    logging.basicConfig(level=logging.INFO)
    import keras
    from test_backbones import register_tiny_backbone
    from tlfast import training
    register_tiny_backbone()
    keras.utils.set_random_seed(0)
    config = training.TrainConfig(**json.loads({config!r}))
    print("METRICS " + json.dumps(training.run_training(config)))
""")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shard_ids(cache_dir):
    ids = []
    for path in glob.glob(os.path.join(cache_dir, "features", "*", "shard-*.npz")):
        with np.load(path) as shard:
            ids.extend((os.path.basename(os.path.dirname(path)), i)
                       for i in shard["ids"].tolist())
    return ids


def _two_workers(config):
    """Runs `config` as two local multi_worker processes: (metrics, logs)."""
    code = _WORKER.format(repo=REPO, tests=os.path.join(REPO, "tests"),
                          config=json.dumps(dataclasses.asdict(config)))
    procs = []
    for tf_config in distribute.local_cluster(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=tf_config)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", code], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs, logs = [], []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.split("METRICS ", 1)[1]))
            logs.append(err)
    finally:
        for proc in procs:
            proc.kill()
    return outputs, logs


def test_multi_worker_two_local_processes(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 12, "b": 12})
    config = tiny_train_config(tmp_path, root, batch_size=4, feature_shard_size=4,
                               distribution="multi_worker")
    (chief, worker), logs = _two_workers(config)
    # The chief wrote the model and the metrics; the other worker nothing.
    assert os.path.isfile(tmp_path / "out" / "model.keras")
    saved = json.load(open(tmp_path / "out" / "metrics.json"))
    assert saved["val_accuracy"] == chief["val_accuracy"]
    run = json.load(open(tmp_path / "out" / "run.json"))
    assert run["resolved"]["workers"] == 2
    assert chief["num_train"] + chief["num_val"] == 24
    # Both trained the same synchronised model.
    assert worker["val_accuracy"] == chief["val_accuracy"]
    # Every example was forwarded once, by one worker, into one cache.
    assert chief["backbone_images_forwarded"] == 24
    for index, log in enumerate(logs):  # Each did its half of each split.
        counts = re.findall(rf"Worker {index} of 2 forwarded (\d+) image", log)
        half = sum(len(range(index, n, 2))
                   for n in (chief["num_train"], chief["num_val"]))
        assert sum(map(int, counts)) == half, log[-3000:]
    ids = _shard_ids(config.cache_dir)
    assert len(ids) == len(set(ids)) == 24
    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert model.output_shape == (None, 2)


def test_multi_worker_fine_tuning_shards_and_stays_in_step(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 14, "b": 14})
    config = tiny_train_config(tmp_path, root, batch_size=4, fine_tune_epochs=2,
                               patience=0, distribution="multi_worker")
    (chief, worker), logs = _two_workers(config)
    # Same all-reduced updates and sums: the same history on both workers.
    assert worker["stages"] == chief["stages"]
    assert chief["stages"]["fine_tune"]["best_epoch"] == 2
    with open(tmp_path / "out" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    tuned = [r for r in rows if r["stage"] == "fine_tune"]
    assert [r["epoch"] for r in tuned] == ["1", "2"]
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in tuned)
    for log in logs:  # Each worker its own shard, logged with the epochs.
        assert "[fine_tune] epoch 2/2" in log, log[-3000:]
