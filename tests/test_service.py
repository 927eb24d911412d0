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
