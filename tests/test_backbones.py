"""Tests for tlfast.backbones."""

import dataclasses
import hashlib
import time
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from conftest import assets_path
from tlfast import backbones as bb

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
K3_WEIGHTS = ASSETS / "weights" / "mobilenet_v1_0.25_224_no_top.weights.h5"
LEGACY_WEIGHTS = ASSETS / "weights" / "mobilenet_v1_0.25_224_imagenet.h5"

REQUIRED = (
    "vgg16 vgg19 resnet50 resnet50_v2 mobilenet_025 mobilenet_050 mobilenet_075 "
    "mobilenet_100 mobilenet_v2 mobilenet_v3_small mobilenet_v3_large "
    "efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3 "
    "efficientnet_v2_b0 efficientnet_v2_b1 efficientnet_v2_b2 efficientnet_v2_b3 "
    "convnext_tiny densenet121 inception_v3 xception"
).split()

# test_every_backbone_builds takes >= ~2 s for these on a 2-core CPU
# (densenet121 3.6 s, inception_v3 2.6 s, efficientnet_b3 2.2 s); the rest
# take 0.3-2 s, about 25 s together.
SLOW_TO_BUILD = {"densenet121", "inception_v3", "efficientnet_b3"}


# --- Tiny registered backbone, reusable (e.g. from conftest.py). ---

TINY_SPEC = bb.BackboneSpec(
    name="tiny_test",
    constructor="TinyTest",
    feature_dim=8,
    default_size=32,
    preprocessing="tf",
    blocks=("stem_conv", "block1_conv", "block2_conv"),
    min_size=16,
)


def build_tiny(input_shape, weights):
    """builder(input_shape, weights) for TINY_SPEC: stem + 2 conv blocks."""
    if weights == "imagenet":
        raise urllib.error.URLError("simulated: no network")
    layers = keras.layers
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(4, 3, strides=2, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.Conv2D(8, 3, name="block1_conv")(x)
    x = layers.BatchNormalization(name="block1_bn")(x)
    x = layers.Conv2D(8, 3, name="block2_conv")(x)
    x = layers.BatchNormalization(name="block2_bn")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="tiny_test_inner")


def register_tiny_backbone():
    bb.register_backbone(TINY_SPEC, builder=build_tiny, overwrite=True)
    return TINY_SPEC


@pytest.fixture
def tiny():
    spec = register_tiny_backbone()
    yield spec
    bb.unregister_backbone(spec.name)


def images(size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


# --- Registry. ---


def test_list_and_get():
    names = bb.list_backbones()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))
    spec = bb.get_backbone_spec("mobilenet_025")
    assert (spec.constructor, spec.feature_dim, dict(spec.kwargs)) == (
        "MobileNet", 256, {"alpha": 0.25})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.feature_dim = 3


def test_table_values():
    get = bb.get_backbone_spec
    modes = {
        "caffe": ["vgg16", "vgg19", "resnet50"],
        "tf": ["resnet50_v2", "mobilenet_050", "mobilenet_v2", "inception_v3",
               "xception"],
        "torch": ["densenet121"],
        "none": ["efficientnet_b0", "efficientnet_v2_b3", "convnext_tiny",
                 "mobilenet_v3_small"],
    }
    for mode, names in modes.items():
        assert [get(n).preprocessing for n in names] == [mode] * len(names)
    sizes = {"efficientnet_b1": 240, "efficientnet_v2_b2": 260, "efficientnet_b3": 300,
             "inception_v3": 299, "xception": 299, "resnet50": 224}
    assert {n: get(n).default_size for n in sizes} == sizes
    assert (get("inception_v3").min_size, get("xception").min_size) == (75, 71)


@pytest.mark.parametrize("typo, expected", [
    ("mobilenetv2", "mobilenet_v2"),
    ("EfficientNet-B0", "efficientnet_b0"),
    ("resnet50v2", "resnet50_v2"),
])
def test_unknown_name_suggests(typo, expected):
    with pytest.raises(ValueError, match="list_backbones") as info:
        bb.get_backbone_spec(typo)
    assert f"'{expected}'" in str(info.value)
    assert f"name={typo!r}" in str(info.value)


def test_register_duplicate_and_validation(tiny):
    with pytest.raises(ValueError, match="already registered"):
        bb.register_backbone(tiny, builder=build_tiny)
    bb.register_backbone(tiny, builder=build_tiny, overwrite=True)
    with pytest.raises(ValueError, match="keras.applications has no"):
        bb.register_backbone(dataclasses.replace(tiny, name="tiny_other"))
    with pytest.raises(ValueError, match="preprocessing"):
        dataclasses.replace(tiny, preprocessing="imagenet")
    with pytest.raises(ValueError, match="snake case"):
        dataclasses.replace(tiny, name="Tiny-Test")


# --- Preprocessing layer. ---


@pytest.mark.parametrize("mode, reference", [
    ("caffe", keras.applications.vgg16.preprocess_input),
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("none", keras.applications.efficientnet.preprocess_input),
])
def test_preprocessing_matches_keras(mode, reference):
    x = images(8, batch=3)
    expected = reference(x.astype("float32"))
    layer = bb.BackbonePreprocessing(mode)
    got = keras.ops.convert_to_numpy(layer(x))  # uint8 in
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x.astype("float32"))), got, atol=0)


def test_preprocessing_serialization(tmp_path):
    layer = bb.BackbonePreprocessing("caffe", name="pre")
    clone = bb.BackbonePreprocessing.from_config(layer.get_config())
    assert (clone.mode, clone.name) == ("caffe", "pre")
    with pytest.raises(ValueError, match="mode='bgr'"):
        bb.BackbonePreprocessing("bgr")

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, bb.BackbonePreprocessing("torch")(inputs))
    path = tmp_path / "pre.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images(8)
    assert isinstance(loaded.layers[-1], bb.BackbonePreprocessing)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)))


# --- create_backbone mechanics (tiny backbone). ---


def test_tiny_backbone_model(tiny):
    model = bb.create_backbone("tiny_test", weights=None)
    assert model.name == "backbone_tiny_test"
    assert model.input.dtype == "uint8"
    assert tuple(model.input.shape) == (None, 32, 32, 3)
    assert tuple(model.output.shape) == (None, 8)
    inner = bb.get_inner_model(model)
    assert inner.name == "tiny_test_inner"
    assert model.get_layer("tiny_test_inner") is inner
    assert not inner.trainable and model.trainable_weights == []
    features = model(images(32))
    assert features.dtype == "float32" and tuple(features.shape) == (2, 8)
    larger = bb.create_backbone("tiny_test", None, 48)
    assert tuple(larger.input.shape) == (None, 48, 48, 3)


def test_image_size_validation(tiny):
    with pytest.raises(ValueError, match=r"must be an int >= 16.*image_size=8"):
        bb.create_backbone("tiny_test", weights=None, image_size=8)
    with pytest.raises(ValueError, match=">= 75"):
        bb.create_backbone("inception_v3", weights=None, image_size=64)


def test_feature_dim_mismatch_is_reported(tiny):
    bb.register_backbone(
        dataclasses.replace(tiny, feature_dim=9), builder=build_tiny, overwrite=True)
    with pytest.raises(ValueError, match=r"expected \(None, 9\)"):
        bb.create_backbone("tiny_test", weights=None)


def trainable_layer_names(model):
    inner = bb.get_inner_model(model)
    return [l.name for l in inner.layers if l.trainable_weights]


def test_unfreeze_top_blocks(tiny):
    model = bb.create_backbone("tiny_test", weights=None)
    assert bb.unfreeze_top_blocks(model, tiny, 1) == ["block2_conv"]
    assert trainable_layer_names(model) == ["block2_conv"]
    assert len(model.trainable_weights) == 2  # kernel + bias; block2_bn frozen
    assert not model.get_layer("tiny_test_inner").get_layer("block2_bn").trainable
    assert bb.unfreeze_top_blocks(model, tiny, 2) == ["block1_conv", "block2_conv"]
    assert bb.unfreeze_top_blocks(model, tiny, 3) == [
        "stem_conv", "block1_conv", "block2_conv"]
    assert bb.unfreeze_top_blocks(model, tiny, 0) == []
    assert model.trainable_weights == []
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="num_blocks"):
            bb.unfreeze_top_blocks(model, tiny, bad)


def test_trainable_true_keeps_batchnorm_frozen(tiny):
    model = bb.create_backbone("tiny_test", weights=None, trainable=True)
    assert trainable_layer_names(model) == ["stem_conv", "block1_conv", "block2_conv"]


def test_unfreeze_real_mobilenet():
    spec = bb.get_backbone_spec("mobilenet_025")
    model = bb.create_backbone("mobilenet_025", weights=None, image_size=32)
    assert bb.unfreeze_top_blocks(model, spec, 1) == ["conv_dw_13", "conv_pw_13"]
    # Block "conv_pad_12" starts with a weightless ZeroPadding2D.
    assert bb.unfreeze_top_blocks(model, spec, 2) == [
        "conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"]


def test_get_inner_model_requires_one_nested_model():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="exactly one nested"):
        bb.get_inner_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_saved_backbone_roundtrip(tiny, tmp_path):
    model = bb.create_backbone("tiny_test", weights=None)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images(32)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


# --- Weights handling. ---


def test_weights_file_errors(tiny, tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        bb.create_backbone("tiny_test", weights=missing)
    other = tmp_path / "w.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="Unsupported weights file"):
        bb.create_backbone("tiny_test", weights=other)
    with pytest.raises(TypeError, match="weights=3"):
        bb.create_backbone("tiny_test", weights=3)
    for name in ("damaged.weights.h5", "damaged.h5"):  # Not HDF5 at all.
        damaged = tmp_path / name
        damaged.write_bytes(b"\0" * 64)
        with pytest.raises(ValueError, match=f"Could not load '.*{name}'"):
            bb.create_backbone("tiny_test", weights=damaged)


def test_weights_file_roundtrip(tiny, tmp_path):
    source = bb.create_backbone("tiny_test", weights=None)
    path = tmp_path / "tiny.weights.h5"
    bb.get_inner_model(source).save_weights(path)
    x = images(32)
    for weights in (path, str(path)):
        loaded = bb.create_backbone("tiny_test", weights=weights)
        np.testing.assert_array_equal(loaded(x), source(x))


def test_weights_identity(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"weights")
    assert bb.weights_identity("imagenet") == "imagenet"
    assert bb.weights_identity(None) == bb.weights_identity("none") == "none"
    digest = hashlib.sha256(b"weights").hexdigest()
    assert bb.weights_identity(path) == "sha256:" + digest[:16]
    with pytest.raises(FileNotFoundError):
        bb.weights_identity(tmp_path / "missing.h5")


def assert_download_hint(error, name):
    message = str(error)
    assert f"'{name}' could not be downloaded" in message
    assert "weights=" in message and "weights=None" in message
    assert "~/.keras/models" in message


def test_imagenet_download_failure_from_builder(tiny):
    with pytest.raises(RuntimeError) as info:
        bb.create_backbone("tiny_test", weights="imagenet")
    assert_download_hint(info.value, "tiny_test")
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_imagenet_download_failure_from_keras(monkeypatch):
    def offline_get_file(fname=None, origin=None, **kwargs):
        # The exception keras.utils.get_file raises when offline.
        raise Exception(f"URL fetch failure on {origin}: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline_get_file)
    with pytest.raises(RuntimeError) as info:
        bb.create_backbone("mobilenet_025", weights="imagenet", image_size=128)
    assert_download_hint(info.value, "mobilenet_025")


def test_imagenet_real_download_path():
    start = time.monotonic()
    try:
        bb.create_backbone("mobilenet_025", weights="imagenet", image_size=128)
    except RuntimeError as e:
        assert_download_hint(e, "mobilenet_025")
        assert time.monotonic() - start < 60
    else:
        pytest.skip("ImageNet weights available (network or Keras cache)")


needs_assets = pytest.mark.skipif(
    not (K3_WEIGHTS.is_file() and LEGACY_WEIGHTS.is_file()),
    reason=f"shared weights not found under {ASSETS}")


@pytest.mark.assets
@needs_assets
def test_shared_weights_both_formats_match():
    x = images(96, batch=4)  # 96 is not a size MobileNet ships weights for
    k3 = bb.create_backbone("mobilenet_025", weights=K3_WEIGHTS, image_size=96)(x)
    legacy = bb.create_backbone(
        "mobilenet_025", weights=str(LEGACY_WEIGHTS), image_size=96)(x)
    random = bb.create_backbone("mobilenet_025", weights=None, image_size=96)(x)
    k3, legacy, random = (keras.ops.convert_to_numpy(f) for f in (k3, legacy, random))
    np.testing.assert_array_equal(k3, legacy)
    assert not np.allclose(k3, random, atol=1e-3)
    # The same features as keras.applications with its own preprocess_input.
    reference = keras.applications.MobileNet(
        alpha=0.25, include_top=False, pooling="avg", input_shape=(96, 96, 3),
        weights=str(K3_WEIGHTS))
    expected = reference(
        keras.applications.mobilenet.preprocess_input(x.astype("float32")))
    np.testing.assert_allclose(k3, expected, rtol=1e-5, atol=1e-5)
    # Matches the sha256 published in shared/assets/README.md.
    assert bb.weights_identity(K3_WEIGHTS) == "sha256:71750134a6cc506c"


@pytest.mark.assets
@needs_assets
@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, on failure
def test_shared_weights_wrong_model():
    for weights in (K3_WEIGHTS, LEGACY_WEIGHTS):  # alpha 0.5: shapes differ
        with pytest.raises(ValueError, match="is this a weights file for"):
            bb.create_backbone("mobilenet_050", weights=weights, image_size=32)
    # By-name loading into VGG16 matches no layer at all.
    with pytest.raises(ValueError, match="has no weights for 13 of the layers"):
        bb.create_backbone("vgg16", weights=LEGACY_WEIGHTS, image_size=32)


# --- Every registry entry. ---


def _entry_params():
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_BUILD else name
        for name in bb.list_backbones()
    ]


@pytest.mark.parametrize("name", _entry_params())
def test_every_backbone_builds(name):
    spec = bb.get_backbone_spec(name)
    model = bb.create_backbone(name, weights=None, image_size=max(spec.min_size, 32))
    features = model(images(model.input.shape[1]))
    assert tuple(features.shape) == (2, spec.feature_dim)
    assert features.dtype == "float32"
    assert model.trainable_weights == []

    inner = bb.get_inner_model(model)
    position = {op.name: i for i, op in enumerate(inner.operations)}
    assert set(spec.blocks) <= set(position), set(spec.blocks) - set(position)
    starts = bb._block_starts(inner, spec.blocks)
    assert starts == sorted(set(starts)), "blocks must be distinct, bottom to top"
    if name != "inception_v3":  # the only table entry not naming first layers
        assert starts[1:] == [position[b] for b in spec.blocks[1:]]

    top = bb.unfreeze_top_blocks(model, spec, 1)
    assert top and all(position[n] >= starts[-1] for n in top)
    everything = bb.unfreeze_top_blocks(model, spec, len(spec.blocks))
    expected = [
        l.name for l in inner.layers if l.weights and not isinstance(
            l, (keras.layers.BatchNormalization, keras.layers.Normalization))
    ]
    assert everything == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", bb.list_backbones())
def test_every_backbone_at_default_size(name):
    spec = bb.get_backbone_spec(name)
    model = bb.create_backbone(name, weights=None)
    assert tuple(model.input.shape) == (None, spec.default_size, spec.default_size, 3)
    features = model(images(spec.default_size, batch=1))
    assert tuple(features.shape) == (1, spec.feature_dim)


def _hymenoptera_features(weights, size=160):
    """Pooled features of hymenoptera's train and val images (real photos)."""
    from tlfast.data import pipeline
    from tlfast.data.prepare import prepare_folder

    data = prepare_folder(assets_path("datasets", "hymenoptera"))
    model = bb.create_backbone("mobilenet_025", weights=weights, image_size=size)
    out = []
    for entries in (data.train, data.validation):
        ds = pipeline.files_dataset(entries, size, "crop").batch(64)
        feats = np.concatenate([model.predict_on_batch(b["image"]) for b in ds])
        out.append((feats, np.array([e.label for e in entries])))
    return out


def _nearest_centroid_accuracy(train, val):
    (x, y), (vx, vy) = train, val
    norm = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)
    x, vx = norm(x), norm(vx)
    centroids = np.stack([x[y == c].mean(0) for c in np.unique(y)])
    return float(((vx @ centroids.T).argmax(1) == vy).mean())


@pytest.mark.assets
def test_imagenet_features_separate_ants_from_bees():
    weights = assets_path("weights", "mobilenet_v1_0.25_224_no_top.weights.h5")
    keras.utils.set_random_seed(0)
    pretrained = _nearest_centroid_accuracy(*_hymenoptera_features(str(weights)))
    random = _nearest_centroid_accuracy(*_hymenoptera_features(None))
    assert pretrained >= 0.75, pretrained
    assert pretrained - random >= 0.15, (pretrained, random)


def test_efficientnet_weights_file_computes_the_imagenet_models_features(
        tmp_path, monkeypatch):
    # Keras adds EfficientNet's extra input scaling only for weights=
    # "imagenet"; a local copy of those weights (the offline route) must
    # give the same features, not inputs scaled ~2x wrong.
    from keras.src.applications import efficientnet

    keras.utils.set_random_seed(0)
    source = keras.applications.EfficientNetB0(
        include_top=False, pooling="avg", weights=None, input_shape=(32, 32, 3))
    norm = [l for l in source.layers if isinstance(l, keras.layers.Normalization)][0]
    norm.set_weights([np.array([0.485, 0.456, 0.406], "float32"),
                      np.array([0.229, 0.224, 0.225], "float32") ** 2, np.array(0)])
    path = str(tmp_path / "effb0_notop.weights.h5")
    source.save_weights(path)
    with monkeypatch.context() as patch:  # Keras's "download" is the file.
        patch.setattr(efficientnet.file_utils, "get_file", lambda *a, **k: path)
        reference = keras.applications.EfficientNetB0(
            include_top=False, pooling="avg", weights="imagenet",
            input_shape=(32, 32, 3))
    model = bb.create_backbone("efficientnet_b0", weights=path, image_size=32)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    expected = np.asarray(reference(x.astype("float32")))
    np.testing.assert_allclose(np.asarray(model(x)), expected,
                               atol=1e-5 * np.abs(expected).max())
    saved = tmp_path / "backbone.keras"
    model.save(saved)
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(saved)(x)),
                                  np.asarray(model(x)))
    # Features cached before the scaling was applied are not reused.
    assert bb.weights_identity(path, "efficientnet_b0") != bb.weights_identity(path)
    assert bb.weights_identity(path, "efficientnet_v2_b0") == bb.weights_identity(path)
