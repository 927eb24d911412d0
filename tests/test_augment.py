import numpy as np
import pytest
import tensorflow as tf

from tlfast.data import augment


def test_presets_parse():
    for name in augment.PRESETS:
        ops = augment.parse_augmentation(name)
        assert len(ops) == len(augment.PRESETS[name])
    assert augment.make_augmentation("none") is None
    assert augment.make_augmentation(None) is None


def test_list_and_string_forms():
    assert augment.parse_augmentation("flip, rotation:0.2") == (
        ("flip", None), ("rotation", 0.2))
    assert augment.parse_augmentation(["zoom"]) == (("zoom", 0.1),)


def test_unknown_op_suggests():
    with pytest.raises(ValueError, match="Did you mean 'rotation'"):
        augment.parse_augmentation("rotaton:0.1")


@pytest.mark.parametrize("spec", ["zoom:2", "zoom:abc", "zoom:0", "flip:0.3"])
def test_bad_strength(spec):
    with pytest.raises(ValueError, match="Received: augment="):
        augment.parse_augmentation(spec)


def _images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, 32, 32, 3)).astype("float32")


def test_identity_at_inference_and_random_in_training():
    block = augment.make_augmentation("strong", seed=1)
    x = _images()
    np.testing.assert_array_equal(np.asarray(block(x, training=False)), x)
    # Keras' own random layers augment when training is not given; ours not.
    np.testing.assert_array_equal(np.asarray(block(x)), x)
    y = np.asarray(block(x, training=True))
    assert y.shape == x.shape
    assert not np.allclose(y, x)
    assert y.min() >= -1e-3 and y.max() <= 255 + 1e-3


def test_works_inside_tf_data():
    block = augment.make_augmentation("standard", seed=1)
    ds = tf.data.Dataset.from_tensor_slices(_images()).batch(2).map(
        lambda x: block(x, training=True))
    out = np.concatenate([b.numpy() for b in ds])
    assert out.shape == (4, 32, 32, 3)


def test_serialization_round_trip(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, augment.make_augmentation("flip,zoom:0.3", 5)(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    layer = loaded.get_layer("augmentation")
    assert layer.spec == "flip,zoom:0.3" and layer.seed == 5
    np.testing.assert_array_equal(np.asarray(loaded(_images())), _images())


def test_the_spec_parser_and_the_layers_know_the_same_ops():
    from tlfast.data import augment_spec

    assert set(augment.OPS) == set(augment_spec.DEFAULT_STRENGTH)
