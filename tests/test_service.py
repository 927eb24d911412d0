import dataclasses

import keras
import pytest

from conftest import make_folder
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import training
from tlfast.data import service


@pytest.fixture(scope="module")
def local_service():
    dispatcher, workers = service.start_local_service(num_workers=2)
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server._stop()


@pytest.mark.parametrize("prepare_tfds", [True, False])
def test_training_through_the_data_service_matches_local(
        tmp_path, local_service, monkeypatch, prepare_tfds):
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"a": 20, "b": 20})
    local = tiny_train_config(
        tmp_path, root, output_dir=str(tmp_path / "local"),
        cache_dir=str(tmp_path / "cache_local"), epochs=5,
        prepare_tfds=prepare_tfds)
    served = dataclasses.replace(
        local, output_dir=str(tmp_path / "served"),
        cache_dir=str(tmp_path / "cache_served"),
        data_service_address=local_service)
    keras.utils.set_random_seed(0)
    a = training.run_training(local)
    # Every extraction (validation, train) must go through the service.
    calls = []
    real = service.distribute
    monkeypatch.setattr(service, "distribute",
                        lambda ds, address, **kw: calls.append(address) or
                        real(ds, address, **kw))
    keras.utils.set_random_seed(0)
    b = training.run_training(served)
    assert len(calls) >= 2 and set(calls) == {local_service}
    assert b["backbone_images_forwarded"] == a["backbone_images_forwarded"] == 40
    assert (b["num_train"], b["num_val"]) == (a["num_train"], a["num_val"])
    assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.01)


@pytest.mark.slow
def test_fine_tuning_reads_pixels_through_the_service(tmp_path, local_service):
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    config = tiny_train_config(tmp_path, root, epochs=2, batch_size=4,
                               fine_tune_epochs=1,
                               data_service_address=local_service)
    keras.utils.set_random_seed(0)
    metrics = training.run_training(config)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args):
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen(
        [sys.executable, "-m", "tlfast.data_service_main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
        env=dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="3"))


def test_dispatcher_and_worker_as_separate_processes(tmp_path):
    # The multi-host recipe of BUILD.md on one machine: each server its own
    # process, on its own port, the worker naming the address trainers use.
    register_tiny_backbone()
    dispatcher_port, worker_port = _free_port(), _free_port()
    dispatcher = _start("--role=dispatcher", f"--port={dispatcher_port}")
    worker = _start("--role=worker", f"--dispatcher=localhost:{dispatcher_port}",
                    f"--worker_port={worker_port}", "--worker_address=127.0.0.1")
    try:
        for process in (dispatcher, worker):
            line = process.stdout.readline()
            assert "without authentication" in line, process.stderr.read()
        assert f"127.0.0.1:{worker_port}" in line
        root = make_folder(tmp_path / "data", {"a": 12, "b": 12})
        local = tiny_train_config(tmp_path, root, output_dir=str(tmp_path / "l"),
                                  cache_dir=str(tmp_path / "cl"), epochs=5)
        served = dataclasses.replace(
            local, output_dir=str(tmp_path / "s"), cache_dir=str(tmp_path / "cs"),
            data_service_address=f"grpc://localhost:{dispatcher_port}")
        keras.utils.set_random_seed(0)
        a = training.run_training(local)
        keras.utils.set_random_seed(0)
        b = training.run_training(served)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.01)
    finally:
        for process in (worker, dispatcher):
            process.kill()
            process.wait()


@pytest.mark.parametrize("kwargs,match", [
    ({"role": "worker", "dispatcher": "host1:5050"}, "worker_address is required"),
    ({"role": "worker", "dispatcher": "localhost:5051"},
     "worker_port must differ"),
])
def test_worker_settings_that_cannot_work_are_refused(kwargs, match):
    from tlfast import config

    with pytest.raises(ValueError, match=match):
        config.ServiceConfig(**kwargs)
