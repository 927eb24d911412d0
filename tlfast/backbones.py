"""Backbone registry: pretrained `keras.applications` feature extractors.

Each backbone is described by a frozen `BackboneSpec` row in a data table.
`create_backbone` turns a row into a `keras.Model` that maps uint8 RGB images
of shape `(batch, S, S, 3)` to pooled float32 features `(batch, feature_dim)`,
with the backbone's own input preprocessing built in.

Block convention (used by `unfreeze_top_blocks`):
    `spec.blocks` lists fine-tuning units bottom to top by the name of the
    FIRST layer of each block, in the order of the inner model's layers.
    Where that first layer only has an auto-generated name (Keras numbers
    unnamed layers with a process-wide counter, so InceptionV3's `conv2d_57`
    is `conv2d_151` in the next model built), the entry names a later layer
    of the block instead (InceptionV3: its closing `mixedN` concatenation),
    and the block starts at the nearest single-tensor cut at or before it:
    the last position where exactly one tensor flows from the layers before
    into the layers after. For a true first layer that cut is the layer
    itself, so one rule serves both. `blocks[0]` always reaches down to the
    input (stem included) and the last block up to the output (pooling
    included), so unfreezing `len(spec.blocks)` blocks unfreezes everything.
    "top" decision: a conv after the last stage (EfficientNet `top_conv`,
    MobileNetV2 `Conv_1`, MobileNetV3 `conv_1`) is its own final block;
    models without one have no top entry.
"""

import dataclasses
import difflib
import hashlib
import os
import re
import urllib.error
from pathlib import Path

import keras
from keras import ops

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")
# ImageNet statistics as used by keras.applications.imagenet_utils.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Attributes:
        name: Registry name, lower snake case.
        constructor: Attribute name in `keras.applications`, e.g.
            `"MobileNetV2"`.
        feature_dim: Size of the pooled feature vector.
        default_size: Default square input size in pixels.
        preprocessing: `"caffe"`, `"tf"`, `"torch"` or `"none"` (the model
            has built-in preprocessing and takes [0, 255] input).
        blocks: Block names, bottom to top (see the module docstring).
        min_size: Smallest input size the constructor accepts.
        kwargs: Extra constructor kwargs as `(key, value)` pairs.
    """

    name: str
    constructor: str
    feature_dim: int
    default_size: int
    preprocessing: str
    blocks: tuple
    min_size: int = 32
    kwargs: tuple = ()

    def __post_init__(self):
        # Frozen dataclass: normalize sequences with object.__setattr__ so
        # specs written with lists still hash and compare like tuples.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "kwargs", tuple(tuple(kv) for kv in self.kwargs))
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                "Backbone names must be lower snake case, e.g. 'mobilenet_v2'. "
                f"Received: name={self.name!r}"
            )
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"`preprocessing` must be one of {PREPROCESSING_MODES}. "
                f"Received: preprocessing={self.preprocessing!r}"
            )
        if not self.blocks:
            raise ValueError(
                "`blocks` must name at least one layer. "
                f"Received: blocks={self.blocks!r} for backbone '{self.name}'"
            )
        if not 0 < self.min_size <= self.default_size or self.feature_dim <= 0:
            raise ValueError(
                "Expected feature_dim > 0 and 0 < min_size <= default_size. "
                f"Received: feature_dim={self.feature_dim}, "
                f"min_size={self.min_size}, default_size={self.default_size}"
            )
        if any(len(kv) != 2 for kv in self.kwargs):
            raise ValueError(
                "`kwargs` must be a tuple of (key, value) pairs. "
                f"Received: kwargs={self.kwargs!r}"
            )


def _numbered(template, first, last):
    return tuple(template.format(i) for i in range(first, last + 1))


def _resnet_blocks(suffix):
    stages = ((2, 3), (3, 4), (4, 6), (5, 3))  # ResNet50 blocks per stage
    return ("conv1_pad",) + tuple(
        f"conv{s}_block{b}_{suffix}" for s, n in stages for b in range(1, n + 1)
    )


def _mobilenet_v1(alpha, name):
    # Stride-2 blocks start with a ZeroPadding2D named conv_pad_N.
    blocks = ("conv1",) + tuple(
        f"conv_pad_{i}" if i in (2, 4, 6, 12) else f"conv_dw_{i}" for i in range(1, 14)
    )
    return BackboneSpec(
        name, "MobileNet", int(1024 * alpha), 224, "tf", blocks,
        kwargs=(("alpha", alpha),),
    )


def _efficientnet(variant, feature_dim, size):
    blocks = ("stem_conv_pad", "block1a_dwconv")
    blocks += _numbered("block{}a_expand_conv", 2, 7) + ("top_conv",)
    return BackboneSpec(
        f"efficientnet_b{variant}", f"EfficientNetB{variant}", feature_dim, size,
        "none", blocks,
    )


def _efficientnet_v2(variant, feature_dim, size):
    blocks = ("stem_conv", "block1a_project_conv")
    blocks += _numbered("block{}a_expand_conv", 2, 6) + ("top_conv",)
    return BackboneSpec(
        f"efficientnet_v2_b{variant}", f"EfficientNetV2B{variant}", feature_dim,
        size, "none", blocks, kwargs=(("include_preprocessing", True),),
    )


_VGG_BLOCKS = _numbered("block{}_conv1", 1, 5)
_BUILTIN_SPECS = (
    BackboneSpec("vgg16", "VGG16", 512, 224, "caffe", _VGG_BLOCKS),
    BackboneSpec("vgg19", "VGG19", 512, 224, "caffe", _VGG_BLOCKS),
    BackboneSpec("resnet50", "ResNet50", 2048, 224, "caffe", _resnet_blocks("1_conv")),
    BackboneSpec(
        "resnet50_v2", "ResNet50V2", 2048, 224, "tf", _resnet_blocks("preact_bn")
    ),
    _mobilenet_v1(0.25, "mobilenet_025"),
    _mobilenet_v1(0.5, "mobilenet_050"),
    _mobilenet_v1(0.75, "mobilenet_075"),
    _mobilenet_v1(1.0, "mobilenet_100"),
    BackboneSpec(
        "mobilenet_v2", "MobileNetV2", 1280, 224, "tf",
        ("Conv1", "expanded_conv_depthwise")
        + _numbered("block_{}_expand", 1, 16) + ("Conv_1",),
    ),
    BackboneSpec(
        "mobilenet_v3_small", "MobileNetV3Small", 576, 224, "none",
        ("conv", "expanded_conv_depthwise_pad")
        + _numbered("expanded_conv_{}_expand", 1, 10) + ("conv_1",),
        kwargs=(("include_preprocessing", True),),
    ),
    BackboneSpec(
        "mobilenet_v3_large", "MobileNetV3Large", 960, 224, "none",
        ("conv", "expanded_conv_depthwise")
        + _numbered("expanded_conv_{}_expand", 1, 14) + ("conv_1",),
        kwargs=(("include_preprocessing", True),),
    ),
    _efficientnet(0, 1280, 224),
    _efficientnet(1, 1280, 240),
    _efficientnet(2, 1408, 260),
    _efficientnet(3, 1536, 300),
    _efficientnet_v2(0, 1280, 224),
    _efficientnet_v2(1, 1280, 240),
    _efficientnet_v2(2, 1408, 260),
    _efficientnet_v2(3, 1536, 300),
    BackboneSpec(
        "convnext_tiny", "ConvNeXtTiny", 768, 224, "none",
        ("convnext_tiny_stem", "convnext_tiny_stage_0_block_0_depthwise_conv")
        + _numbered("convnext_tiny_downsampling_block_{}", 0, 2),
        kwargs=(("include_preprocessing", True),),
    ),
    BackboneSpec(
        "densenet121", "DenseNet121", 1024, 224, "torch",
        ("conv1_conv", "conv2_block1_0_bn", "pool2_bn", "pool3_bn", "pool4_bn"),
    ),
    BackboneSpec(
        "inception_v3", "InceptionV3", 2048, 299, "tf",
        _numbered("mixed{}", 0, 10), min_size=75,
    ),
    BackboneSpec(
        "xception", "Xception", 2048, 299, "tf",
        ("block1_conv1", "block2_sepconv1")
        + _numbered("block{}_sepconv1_act", 3, 13) + ("block14_sepconv1",),
        min_size=71,
    ),
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    spec: BackboneSpec
    builder: object = None


_REGISTRY = {spec.name: _Entry(spec) for spec in _BUILTIN_SPECS}


def list_backbones():
    """Returns the registered backbone names, in table order."""
    return list(_REGISTRY)


def _get_entry(name):
    if name in _REGISTRY:
        return _REGISTRY[name]
    names = list(_REGISTRY)
    # Match on squashed names so "MobileNetV2" and "efficientnet-b0" find
    # "mobilenet_v2" and "efficientnet_b0".
    squash = lambda s: re.sub(r"[^a-z0-9]", "", str(s).lower())
    by_squashed = {squash(n): n for n in names}
    close = difflib.get_close_matches(squash(name), list(by_squashed), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(by_squashed[c]) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown backbone '{name}'.{hint} Call "
        f"`tlfast.backbones.list_backbones()` to see all {len(names)} names. "
        f"Received: name={name!r}"
    )


def get_backbone_spec(name):
    """Returns the `BackboneSpec` registered under `name`.

    Raises:
        ValueError: If `name` is unknown (the message suggests close names).
    """
    return _get_entry(name).spec


def register_backbone(spec, *, builder=None, overwrite=False):
    """Adds `spec` to the registry.

    Args:
        spec: A `BackboneSpec`.
        builder: Optional callable `builder(input_shape, weights)` returning a
            `keras.Model` without top and with average pooling, used instead
            of `keras.applications.<spec.constructor>`. `input_shape` is
            `(S, S, 3)`; `weights` is `"imagenet"` or `None` (local weight
            files are loaded by `create_backbone` after building).
        overwrite: Whether to replace an existing entry of the same name.
    """
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"Expected a BackboneSpec. Received: spec={spec!r}")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A backbone named '{spec.name}' is already registered. Pass "
            f"overwrite=True to replace it. Received: spec.name={spec.name!r}"
        )
    if builder is None and not hasattr(keras.applications, spec.constructor):
        raise ValueError(
            f"keras.applications has no '{spec.constructor}'; pass builder= for "
            f"custom models. Received: spec.constructor={spec.constructor!r}"
        )
    _REGISTRY[spec.name] = _Entry(spec, builder)


def unregister_backbone(name):
    """Removes `name` from the registry (mainly for tests)."""
    _get_entry(name)
    del _REGISTRY[name]


@keras.saving.register_keras_serializable(package="tlfast")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps RGB images in [0, 255] to a backbone's expected input.

    Input of any real dtype, shape `(..., 3)`; output float32, same shape.
    Modes match `keras.applications.*.preprocess_input`: `"caffe"` (RGB to
    BGR, minus ImageNet BGR means), `"tf"` (`x / 127.5 - 1`), `"torch"`
    (`x / 255`, minus ImageNet means, over stds), `"none"` (cast only).
    """

    def __init__(self, mode, **kwargs):
        # Offsets like 123.68 need float32 even under mixed precision.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {PREPROCESSING_MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        const = lambda v: ops.convert_to_tensor(v, dtype=self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - const(_CAFFE_MEAN_BGR)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - const(_TORCH_MEAN)) / const(_TORCH_STD)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _normalize_weights(weights):
    """Returns "imagenet", None, or an existing `Path`."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights == "imagenet":
        return "imagenet"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            '`weights` must be "imagenet", None, or a path to a weights file. '
            f"Received: weights={weights!r}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file not found: '{path}'. Expected an existing .weights.h5 "
            f'or .h5 file, "imagenet", or None. Received: weights={weights!r}'
        )
    return path


def weights_identity(weights):
    """Returns a short stable id of `weights` for cache keys.

    Returns:
        `"imagenet"`, `"none"`, or `"sha256:<first 16 hex digits>"` of the
        contents of a local weights file.
    """
    normalized = _normalize_weights(weights)
    if normalized is None or normalized == "imagenet":
        return normalized or "none"
    digest = hashlib.sha256()
    with open(normalized, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _build_inner(entry, input_shape, weights):
    if entry.builder is not None:
        return entry.builder(input_shape, weights)
    spec = entry.spec
    constructor = getattr(keras.applications, spec.constructor)
    return constructor(
        include_top=False, pooling="avg", input_shape=input_shape,
        weights=weights, **dict(spec.kwargs),
    )


def _build_imagenet(entry, input_shape):
    try:
        return _build_inner(entry, input_shape, "imagenet")
    except Exception as e:
        # keras.utils.get_file turns URLError/HTTPError into a bare Exception.
        offline = isinstance(e, (OSError, urllib.error.URLError)) or (
            "URL fetch failure" in str(e)
        )
        if not offline:
            raise
        name = entry.spec.name
        raise RuntimeError(
            f"ImageNet weights for '{name}' could not be downloaded (no network?): "
            f"{e}\nTo fix: pass weights=<path to a local Keras 3 no-top "
            f"'.weights.h5' file or a legacy full-model '.h5' file for "
            f"keras.applications.{entry.spec.constructor}>, or weights=None for "
            "random initialization; or place the file keras.applications "
            "downloads in the Keras cache directory ~/.keras/models."
        ) from e


def _h5_layers_with_weights(path):
    import h5py  # Keras' own HDF5 dependency; only needed for legacy files.

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        return {
            name for name, g in group.items()
            if isinstance(g, h5py.Group) and len(g.attrs.get("weight_names", ())) > 0
        }


def _load_weights_file(inner, spec, path):
    """Loads a local weights file into the freshly built `inner` model."""
    what = f"is this a weights file for keras.applications.{spec.constructor}{dict(spec.kwargs) or ''}?"
    suffix = path.name.lower()
    if suffix.endswith(".weights.h5"):
        try:
            inner.load_weights(path)
        except ValueError as e:
            raise ValueError(f"Could not load '{path}' into '{spec.name}' ({what}): {e}") from e
        return
    if not suffix.endswith((".h5", ".hdf5")):
        raise ValueError(
            "Unsupported weights file: expected a Keras 3 '.weights.h5' file or a "
            f"legacy '.h5' file. Received: weights='{path}'"
        )
    try:
        # Topological order, as keras.applications loads its own no-top .h5.
        inner.load_weights(path)
        return
    except ValueError:
        pass  # E.g. a full model with its 1000-class top: match by name.
    try:
        inner.load_weights(path, by_name=True)
    except ValueError as e:
        raise ValueError(f"Could not load '{path}' into '{spec.name}' ({what}): {e}") from e
    # By-name loading silently skips layers it can't find, so check coverage.
    in_file = _h5_layers_with_weights(path)
    missing = [l.name for l in inner.layers if l.weights and l.name not in in_file]
    if missing:
        raise ValueError(
            f"'{path}' has no weights for {len(missing)} of the layers of "
            f"'{spec.name}' ({what}) Missing e.g.: {missing[:5]}"
        )


def create_backbone(name, weights="imagenet", image_size=None, *, trainable=False):
    """Builds a feature extractor for a registered backbone.

    Args:
        name: Registry name, see `list_backbones()`.
        weights: `"imagenet"` (downloaded by Keras), `None`/`"none"` (random
            init), or a path to a Keras 3 no-top `.weights.h5` file or a
            legacy Keras 2 `.h5` file (a full model with top is fine).
        image_size: Square input size; defaults to `spec.default_size`.
        trainable: If True, every layer except BatchNormalization is
            trainable (as `unfreeze_top_blocks` with all blocks).

    Returns:
        A `keras.Model` named `backbone_<name>` mapping uint8 images
        `(batch, S, S, 3)` to float32 features `(batch, spec.feature_dim)`.
        Its single nested model (see `get_inner_model`) is the applications
        model, called with `training=False` so BatchNormalization stays in
        inference mode even when unfrozen.
    """
    entry = _get_entry(name)
    spec = entry.spec
    size = spec.default_size if image_size is None else image_size
    if not isinstance(size, int) or isinstance(size, bool) or size < spec.min_size:
        raise ValueError(
            f"`image_size` for '{name}' must be an int >= {spec.min_size}. "
            f"Received: image_size={image_size!r}"
        )
    weights = _normalize_weights(weights)
    input_shape = (size, size, 3)
    if weights == "imagenet":
        inner = _build_imagenet(entry, input_shape)
    else:
        # Files are loaded after a weights=None build: some constructors
        # (MobileNet) restrict sizes only when they load weights themselves.
        inner = _build_inner(entry, input_shape, None)
        if weights is not None:
            _load_weights_file(inner, spec, weights)
    if tuple(inner.output.shape) != (None, spec.feature_dim):
        raise ValueError(
            f"Backbone '{name}' produced features of shape {inner.output.shape}, "
            f"expected (None, {spec.feature_dim}). Received: name={name!r}"
        )
    image = keras.Input(input_shape, dtype="uint8", name="image")
    x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(image)
    model = keras.Model(image, inner(x, training=False), name=f"backbone_{name}")
    _set_trainable_from(model, inner, 0 if trainable else None)
    return model


def get_inner_model(backbone_model):
    """Returns the single nested `keras.Model` of a `create_backbone` model."""
    nested = [l for l in backbone_model.layers if isinstance(l, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            "Expected a model from `create_backbone` with exactly one nested "
            f"keras.Model. Received: backbone_model={backbone_model.name!r} "
            f"with {len(nested)} nested models"
        )
    return nested[0]


def _block_starts(inner, blocks):
    """Index in `inner`'s operation order where each block starts."""
    # Functional models also list non-Layer ops (e.g. `x + 3.0`) here.
    nodes = list(getattr(inner, "operations", None) or inner.layers)
    pos = {id(op): i for i, op in enumerate(nodes)}
    names = {op.name: i for i, op in enumerate(nodes)}
    # crossing[j] = distinct tensors made before position j and used at/after it.
    last_use = {}
    for i, op in enumerate(nodes):
        for node in getattr(op, "_inbound_nodes", ()):
            for t in node.input_tensors:
                producer, node_index, tensor_index = t._keras_history
                if id(producer) in pos:
                    key = (pos[id(producer)], node_index, tensor_index)
                    last_use[key] = max(last_use.get(key, 0), i)
    delta = [0] * (len(nodes) + 2)
    for (p, _, _), c in last_use.items():
        delta[p + 1] += 1
        delta[c + 1] -= 1
    crossing, running = [], 0
    for d in delta:
        running += d
        crossing.append(running)
    starts = []
    for k, block in enumerate(blocks):
        if block not in names:
            raise ValueError(
                f"Block layer '{block}' not found in model '{inner.name}'; does the "
                f"spec match the model? Received: blocks={blocks!r}"
            )
        anchor = names[block]
        cut = next((j for j in range(anchor, 0, -1) if crossing[j] == 1), anchor)
        starts.append(0 if k == 0 else cut)
    return starts


def _set_trainable_from(backbone_model, inner, start):
    """Freezes `inner` before position `start`, unfreezes the rest (BN frozen)."""
    if start is None:
        inner.trainable = False
        return []
    backbone_model.trainable = True  # Recursive; the loop below re-freezes.
    nodes = list(getattr(inner, "operations", None) or inner.layers)
    made_trainable = []
    for i, op in enumerate(nodes):
        if not isinstance(op, keras.layers.Layer):
            continue
        op.trainable = i >= start
        # BN gamma/beta stay frozen: fine-tuning them on small batches hurts.
        for sub in op._flatten_layers():
            if isinstance(sub, keras.layers.BatchNormalization):
                sub.trainable = False
        if op.trainable_weights:
            made_trainable.append(op.name)
    return made_trainable


def unfreeze_top_blocks(backbone_model, spec, num_blocks):
    """Makes the top `num_blocks` blocks of a backbone trainable.

    Layers from the start of `spec.blocks[-num_blocks]` to the end of the
    inner model become trainable, except BatchNormalization layers; all
    layers below are frozen. `num_blocks=0` freezes everything.

    Args:
        backbone_model: A model returned by `create_backbone`.
        spec: Its `BackboneSpec`.
        num_blocks: Int in `[0, len(spec.blocks)]`.

    Returns:
        Names of the inner model's layers that now have trainable weights.
    """
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or not (
        0 <= num_blocks <= len(spec.blocks)
    ):
        raise ValueError(
            f"`num_blocks` must be an int in [0, {len(spec.blocks)}] for "
            f"'{spec.name}'. Received: num_blocks={num_blocks!r}"
        )
    inner = get_inner_model(backbone_model)
    if num_blocks == 0:
        return _set_trainable_from(backbone_model, inner, None)
    start = _block_starts(inner, spec.blocks)[-num_blocks]
    return _set_trainable_from(backbone_model, inner, start)
