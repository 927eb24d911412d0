import keras
import pytest

from conftest import make_folder
from test_backbones import register_tiny_backbone
from tlfast import distribute
from tlfast import training


def test_strategy_names():
    assert distribute.make_strategy("none") is None
    strategy = distribute.make_strategy("mirrored")
    assert distribute.num_replicas(strategy) >= 1
    for name in ("multi_worker", "tpu"):
        with pytest.raises(ValueError, match="not supported yet"):
            distribute.check_distribution(name)
    with pytest.raises(ValueError, match="Received: distribution='ring'"):
        distribute.check_distribution("ring")


def test_mirrored_training_on_one_cpu_device(tmp_path):
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    config = training.TrainConfig(
        data_dir=str(root), output_dir=str(tmp_path / "out"),
        cache_dir=str(tmp_path / "cache"), backbone="tiny_test", weights=None,
        image_size=32, epochs=3, batch_size=4, fine_tune_epochs=1,
        distribution="mirrored")
    keras.utils.set_random_seed(0)
    metrics = training.run_training(config)
    assert metrics["num_train"] + metrics["num_val"] == 20
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    model = keras.models.load_model(tmp_path / "out" / "model.keras")
    assert model.output_shape == (None, 2)
