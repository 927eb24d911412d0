"""Backbone registry: pretrained `keras.applications` feature extractors.

Each backbone is one frozen `BackboneSpec` row in a data table.
`create_backbone` turns a row into a `keras.Model` mapping uint8 RGB images
`(batch, S, S, 3)` to pooled float32 features `(batch, feature_dim)`, with the
backbone's own input preprocessing built in.

Block convention (`BackboneSpec.blocks`, used by `unfreeze_top_blocks`):
    Entries name the FIRST layer of each fine-tuning block, bottom to top, in
    the inner model's layer order. Where a block's first layer only has an
    auto-generated name (Keras numbers unnamed layers with a process-wide
    counter, so `conv2d_57` is `conv2d_151` in the next model built), the
    entry names a later layer of the block (InceptionV3: its closing `mixedN`
    concatenation) and the block starts at the nearest single-tensor cut at
    or before it: the last position where exactly one tensor flows from the
    layers before into the layers after. For a true first layer that cut is
    the layer itself, so one rule serves both. `blocks[0]` reaches down to
    the input (stem included) and the last block up to the output (pooling
    included), so unfreezing `len(blocks)` blocks unfreezes everything.
    Top: a conv after the last stage (EfficientNet `top_conv`, MobileNetV2
    `Conv_1`, MobileNetV3 `conv_1`) is its own final block; models without
    one have no top entry.
"""

import dataclasses
import difflib
import hashlib
import os
import re
from pathlib import Path

import keras
from keras import ops

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")
# ImageNet statistics as in keras.applications.imagenet_utils.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Attributes:
        name: Registry name, lower snake case.
        constructor: Attribute name in `keras.applications`, e.g. "MobileNetV2".
        feature_dim: Size of the pooled feature vector.
        default_size: Default square input size in pixels.
        preprocessing: "caffe", "tf", "torch", or "none" (the model has
            built-in preprocessing and takes [0, 255] input).
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
        # Lists become tuples so that specs stay hashable.
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "kwargs", tuple(tuple(kv) for kv in self.kwargs))
        problems = [
            (not re.fullmatch(r"[a-z][a-z0-9_]*", str(self.name)),
             f"`name` must be lower snake case. Received: name={self.name!r}"),
            (self.preprocessing not in PREPROCESSING_MODES,
             f"`preprocessing` must be one of {PREPROCESSING_MODES}. "
             f"Received: preprocessing={self.preprocessing!r}"),
            (not self.blocks,
             f"`blocks` must not be empty. Received: blocks={self.blocks!r}"),
            (not 0 < self.min_size <= self.default_size or self.feature_dim <= 0,
             "Expected feature_dim > 0 and 0 < min_size <= default_size. Received: "
             f"feature_dim={self.feature_dim}, min_size={self.min_size}, "
             f"default_size={self.default_size}"),
            (any(len(kv) != 2 for kv in self.kwargs),
             "`kwargs` must hold (key, value) pairs. "
             f"Received: kwargs={self.kwargs!r}"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(f"Invalid BackboneSpec '{self.name}': {message}")


def _numbered(template, first, last):
    return tuple(template.format(i) for i in range(first, last + 1))


def _resnet50_blocks(suffix):
    stages = ((2, 3), (3, 4), (4, 6), (5, 3))  # (stage, residual blocks)
    return ("conv1_pad",) + tuple(
        f"conv{s}_block{b}_{suffix}" for s, n in stages for b in range(1, n + 1))


def _mobilenet(alpha):
    # Stride-2 blocks start with a ZeroPadding2D named conv_pad_N.
    blocks = ("conv1",) + tuple(
        f"conv_pad_{i}" if i in (2, 4, 6, 12) else f"conv_dw_{i}" for i in range(1, 14))
    return BackboneSpec(f"mobilenet_{round(alpha * 100):03d}", "MobileNet",
                        int(1024 * alpha), 224, "tf", blocks,
                        kwargs=(("alpha", alpha),))


def _efficientnet(b, feature_dim, size):
    blocks = ("stem_conv_pad", "block1a_dwconv")
    blocks += _numbered("block{}a_expand_conv", 2, 7) + ("top_conv",)
    return BackboneSpec(f"efficientnet_b{b}", f"EfficientNetB{b}", feature_dim,
                        size, "none", blocks)


def _efficientnet_v2(b, feature_dim, size):
    blocks = ("stem_conv", "block1a_project_conv")
    blocks += _numbered("block{}a_expand_conv", 2, 6) + ("top_conv",)
    return BackboneSpec(f"efficientnet_v2_b{b}", f"EfficientNetV2B{b}", feature_dim,
                        size, "none", blocks, kwargs=_BUILT_IN_PREPROCESSING)


# Pinned rather than left to constructor defaults: "none" relies on it.
_BUILT_IN_PREPROCESSING = (("include_preprocessing", True),)
_BUILTIN_SPECS = (
    BackboneSpec("vgg16", "VGG16", 512, 224, "caffe", _numbered("block{}_conv1", 1, 5)),
    BackboneSpec("vgg19", "VGG19", 512, 224, "caffe", _numbered("block{}_conv1", 1, 5)),
    BackboneSpec("resnet50", "ResNet50", 2048, 224, "caffe",
                 _resnet50_blocks("1_conv")),
    BackboneSpec("resnet50_v2", "ResNet50V2", 2048, 224, "tf",
                 _resnet50_blocks("preact_bn")),
    *(_mobilenet(alpha) for alpha in (0.25, 0.5, 0.75, 1.0)),
    BackboneSpec(
        "mobilenet_v2", "MobileNetV2", 1280, 224, "tf",
        ("Conv1", "expanded_conv_depthwise") + _numbered("block_{}_expand", 1, 16)
        + ("Conv_1",)),
    BackboneSpec(
        "mobilenet_v3_small", "MobileNetV3Small", 576, 224, "none",
        ("conv", "expanded_conv_depthwise_pad")
        + _numbered("expanded_conv_{}_expand", 1, 10) + ("conv_1",),
        kwargs=_BUILT_IN_PREPROCESSING),
    BackboneSpec(
        "mobilenet_v3_large", "MobileNetV3Large", 960, 224, "none",
        ("conv", "expanded_conv_depthwise")
        + _numbered("expanded_conv_{}_expand", 1, 14) + ("conv_1",),
        kwargs=_BUILT_IN_PREPROCESSING),
    _efficientnet(0, 1280, 224),
    _efficientnet(1, 1280, 240),
    _efficientnet(2, 1408, 260),
    _efficientnet(3, 1536, 300),
    _efficientnet_v2(0, 1280, 224),
    _efficientnet_v2(1, 1280, 240),
    _efficientnet_v2(2, 1408, 260),
    _efficientnet_v2(3, 1536, 300),
    BackboneSpec(  # Stages; the downsampling layers open stages 1-3.
        "convnext_tiny", "ConvNeXtTiny", 768, 224, "none",
        ("convnext_tiny_stem", "convnext_tiny_stage_0_block_0_depthwise_conv")
        + _numbered("convnext_tiny_downsampling_block_{}", 0, 2),
        kwargs=_BUILT_IN_PREPROCESSING),
    BackboneSpec(  # Dense blocks; the transition layers poolN open blocks 3-5.
        "densenet121", "DenseNet121", 1024, 224, "torch",
        ("conv1_conv", "conv2_block1_0_bn", "pool2_bn", "pool3_bn", "pool4_bn")),
    BackboneSpec("inception_v3", "InceptionV3", 2048, 299, "tf",
                 _numbered("mixed{}", 0, 10), min_size=75),
    BackboneSpec(
        "xception", "Xception", 2048, 299, "tf",
        ("block1_conv1", "block2_sepconv1") + _numbered("block{}_sepconv1_act", 3, 13)
        + ("block14_sepconv1",), min_size=71),
)
# name -> (spec, builder or None)
_REGISTRY = {spec.name: (spec, None) for spec in _BUILTIN_SPECS}


def list_backbones():
    """Returns the registered backbone names (list of str), in table order."""
    return list(_REGISTRY)


def describe_backbones():
    """One dict per registered backbone: name, input size, feature size and
    parameters (built without weights at its smallest size: a frozen conv
    net's parameters do not depend on the input size; ~17 s for all here).
    """
    rows = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
        model = create_backbone(name, None, spec.min_size)
        rows.append({"name": name, "input_size": spec.default_size,
                     "feature_dim": spec.feature_dim,
                     "parameters": int(model.count_params())})
        del model
        keras.backend.clear_session()
    return rows


def _lookup(name):
    if name in _REGISTRY:
        return _REGISTRY[name]
    # Compare squashed names so "MobileNetV2" or "efficientnet-b0" still match.
    squash = lambda s: re.sub(r"[^a-z0-9]", "", str(s).lower())
    by_squashed = {squash(n): n for n in _REGISTRY}
    close = [squash(name)] if squash(name) in by_squashed else (
        difflib.get_close_matches(squash(name), list(by_squashed), n=3, cutoff=0.6))
    hint = " Did you mean " + " or ".join(repr(by_squashed[c]) for c in close) + "?"
    raise ValueError(
        f"Unknown backbone '{name}'.{hint if close else ''} Call "
        f"`tlfast.backbones.list_backbones()` to see all {len(_REGISTRY)} names. "
        f"Received: name={name!r}")


def get_backbone_spec(name):
    """Returns the `BackboneSpec` registered as `name`.

    Raises:
        ValueError: If `name` is unknown; the message suggests close names.
    """
    return _lookup(name)[0]


def get_backbone_builder(name):
    """Returns the builder registered with `name`, or None for keras.applications."""
    return _lookup(name)[1]


def register_backbone(spec, *, builder=None, overwrite=False):
    """Adds `spec` to the registry.

    Args:
        spec: A `BackboneSpec`.
        builder: Optional `builder(input_shape, weights) -> keras.Model` used
            instead of `keras.applications.<spec.constructor>`; it must build
            the model without top and with average pooling. `input_shape` is
            `(S, S, 3)`; `weights` is "imagenet" or None (`create_backbone`
            loads local weight files itself, after building).
        overwrite: Whether to replace an entry of the same name.
    """
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"Expected a BackboneSpec. Received: spec={spec!r}")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A backbone named '{spec.name}' is already registered; pass "
            f"overwrite=True to replace it. Received: spec.name={spec.name!r}")
    if builder is None and not hasattr(keras.applications, spec.constructor):
        raise ValueError(
            f"keras.applications has no '{spec.constructor}'; pass builder= for other "
            f"models. Received: spec.constructor={spec.constructor!r}")
    _REGISTRY[spec.name] = (spec, builder)


def unregister_backbone(name):
    """Removes `name` from the registry (for tests)."""
    _lookup(name)
    del _REGISTRY[name]


@keras.saving.register_keras_serializable(package="tlfast")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps RGB images in [0, 255] to what a backbone expects.

    Input: any real dtype (uint8 or float), shape `(..., 3)`. Output: float32,
    same shape. Modes match `keras.applications.*.preprocess_input`: "caffe"
    (RGB to BGR, minus the ImageNet BGR means), "tf" (`x / 127.5 - 1`),
    "torch" (`x / 255`, minus ImageNet means, over stds), "none" (cast only).
    """

    def __init__(self, mode, **kwargs):
        # float32 even under mixed precision: offsets like 123.68 need it.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {PREPROCESSING_MODES}. Received: mode={mode!r}")
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
    """Returns "imagenet", None, or the `Path` of an existing file."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights == "imagenet":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError('`weights` must be "imagenet", None, or a path to a weights '
                        f"file. Received: weights={weights!r}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file '{path}' does not exist. Expected a .weights.h5 or .h5 "
            f'file, "imagenet", or None. Received: weights={weights!r}')
    return path


def weights_identity(weights, name=None):
    """Returns a short stable id of `weights`, for cache keys.

    Args:
        weights: As for `create_backbone`.
        name: Optional registry name of the backbone the weights go into.

    Returns:
        "imagenet", "none", or "sha256:<first 16 hex digits>" of the contents
        of a local weights file; for a file in an EfficientNet (v1) backbone,
        with "+imagenet_scale" (features before that scaling was applied
        were keyed by the bare hash).
    """
    weights = _normalize_weights(weights)
    if not isinstance(weights, Path):
        return weights or "none"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    identity = "sha256:" + digest.hexdigest()[:16]
    if name is not None:
        if _rescales_imagenet_input(*_lookup(name)):
            identity += "+imagenet_scale"
    return identity


def _build_inner(spec, builder, input_shape, weights):
    if builder is not None:
        return builder(input_shape, weights)
    return getattr(keras.applications, spec.constructor)(
        include_top=False, pooling="avg", input_shape=input_shape, weights=weights,
        **dict(spec.kwargs))


def _build_imagenet(spec, builder, input_shape):
    try:
        return _build_inner(spec, builder, input_shape, "imagenet")
    except Exception as e:
        # keras.utils.get_file re-raises URLError/HTTPError as a bare Exception.
        if not (isinstance(e, OSError) or "URL fetch failure" in str(e)):
            raise
        raise RuntimeError(
            f"ImageNet weights for '{spec.name}' could not be downloaded "
            f"(no network?): {e}\nTo fix, pass weights=<path to a local Keras 3 "
            "no-top '.weights.h5' file or a legacy full-model '.h5' file for "
            f"keras.applications.{spec.constructor}>, or weights=None for random "
            "initialization. A file downloaded by hand can also be placed in the "
            "Keras cache directory ~/.keras/models.") from e


def _h5_layers_with_weights(path):
    import h5py  # A Keras dependency; only legacy files need it here.

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        return {name for name, g in group.items()
                if isinstance(g, h5py.Group) and len(g.attrs.get("weight_names", ()))}


def _load_weights_file(inner, spec, path):
    """Loads a local weights file into the freshly built `inner` model."""
    fail = (f"Could not load '{path}' into '{spec.name}' (is this a weights file for "
            f"keras.applications.{spec.constructor}{dict(spec.kwargs) or ''}?)")
    name = path.name.lower()
    if not name.endswith((".h5", ".hdf5")):
        raise ValueError("Unsupported weights file: expected a Keras 3 '.weights.h5' "
                         f"or a legacy '.h5' file. Received: weights='{path}'")
    try:
        if name.endswith(".weights.h5"):
            return inner.load_weights(path)  # Raises on anything it can't match.
        try:
            # Topological order, as keras.applications loads its no-top .h5.
            return inner.load_weights(path)
        except ValueError:
            # E.g. a full model with its 1000-class top: match by layer name.
            inner.load_weights(path, by_name=True)
    except (ValueError, OSError) as e:  # h5py: OSError on a damaged file.
        raise ValueError(f"{fail}: {e}") from e
    # By-name loading silently skips layers missing from the file.
    in_file = _h5_layers_with_weights(path)
    missing = [l.name for l in inner.layers if l.weights and l.name not in in_file]
    if missing:
        raise ValueError(f"{fail}: it has no weights for {len(missing)} of the layers, "
                         f"e.g. {missing[:5]}")


def _rescales_imagenet_input(spec, builder):
    # keras.applications.EfficientNet (v1) divides its normalised input by
    # sqrt(ImageNet std) -- a correction its published weights need -- only
    # when built with weights="imagenet", never for weights=None or a file.
    # A registered builder is someone else's model.
    return builder is None and spec.constructor.startswith("EfficientNetB")


def _fold_imagenet_std(inner):
    """Gives a file-loaded EfficientNet the input scaling of weights="imagenet".

    A local weights file stands in for the ImageNet download (the offline
    route), so it must compute the same features. Dividing the normalised
    input by sqrt(std) is dividing by sqrt(variance * std): the factor goes
    into the Normalization layer's variance, so the model's structure (and
    its saved config) stays that of Keras's own model.
    """
    from keras.src.applications.efficientnet import IMAGENET_STDDEV_RGB

    norms = [l for l in inner.layers if isinstance(l, keras.layers.Normalization)]
    if len(norms) != 1:
        raise ValueError(
            f"Expected one Normalization layer in '{inner.name}' to apply the "
            f"ImageNet input scaling. Received: {len(norms)} layers")
    norm = norms[0]
    norm.adapt_variance.assign(ops.multiply(
        norm.adapt_variance, ops.convert_to_tensor(IMAGENET_STDDEV_RGB, "float32")))
    norm.finalize_state()


def create_backbone(name, weights="imagenet", image_size=None, *, trainable=False):
    """Builds a feature extractor for a registered backbone.

    Args:
        name: Registry name, see `list_backbones()`.
        weights: "imagenet" (downloaded by Keras), None or "none" (random
            init), or a path (str or os.PathLike) to a Keras 3 no-top
            `.weights.h5` file or a legacy Keras 2 `.h5` file (a full model
            with its top is fine; layers are then matched by name).
        image_size: Square input size S (int); defaults to `spec.default_size`.
        trainable: If True, all layers but BatchNormalization are trainable
            (as `unfreeze_top_blocks` with every block); else all are frozen.

    Returns:
        A `keras.Model` named `backbone_<name>` from uint8 images
        `(batch, S, S, 3)` to features `(batch, spec.feature_dim)` in the
        policy's compute dtype (float16 under mixed_float16). Its one nested
        model (`get_inner_model`) is the applications model. BatchNormalization
        stays in inference mode because its layers are never made trainable:
        the nested call's `training=False` holds only for calls without
        `training` (Keras 3 passes `fit`'s `training=True` down to nested
        layers, so dropout inside the backbone, e.g. EfficientNet's stochastic
        depth, is active while fine-tuning).
    """
    spec, builder = _lookup(name)
    size = spec.default_size if image_size is None else image_size
    if not isinstance(size, int) or isinstance(size, bool) or size < spec.min_size:
        raise ValueError(
            f"`image_size` for '{name}' must be an int >= {spec.min_size}. "
            f"Received: image_size={image_size!r}")
    weights = _normalize_weights(weights)
    input_shape = (size, size, 3)
    if weights == "imagenet":
        inner = _build_imagenet(spec, builder, input_shape)
    else:
        # Files are loaded after a weights=None build: MobileNet v1/v2 limit
        # input sizes only when they load weights themselves.
        inner = _build_inner(spec, builder, input_shape, None)
        if weights is not None:
            _load_weights_file(inner, spec, weights)
            if _rescales_imagenet_input(spec, builder):
                _fold_imagenet_std(inner)
    if tuple(inner.output.shape) != (None, spec.feature_dim):
        raise ValueError(
            f"Backbone '{name}' outputs shape {inner.output.shape}, expected "
            f"(None, {spec.feature_dim}). Received: name={name!r}")
    image = keras.Input(input_shape, dtype="uint8", name="image")
    x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(image)
    model = keras.Model(image, inner(x, training=False), name=f"backbone_{name}")
    _set_trainable_from(model, inner, 0 if trainable else None)
    return model


def get_inner_model(backbone_model):
    """Returns the one nested `keras.Model` of a `create_backbone` model."""
    nested = [l for l in backbone_model.layers if isinstance(l, keras.Model)]
    if len(nested) != 1:
        raise ValueError(
            "Expected a model from `create_backbone`, with exactly one nested "
            f"keras.Model. Received: backbone_model={backbone_model.name!r} with "
            f"{len(nested)}")
    return nested[0]


def layers_within(layer):
    """`layer`, then every layer nested in it (through models' `.layers`).

    Public API only: the models of `keras.applications` nest layers only
    inside (Functional) models.
    """
    yield layer
    for sub in getattr(layer, "layers", None) or ():
        yield from layers_within(sub)


def _operations(inner):
    # Functional models also list non-Layer ops here (MobileNetV3's `x + 3`).
    return list(getattr(inner, "operations", None) or inner.layers)


def _block_starts(inner, blocks):
    """Returns the position in `_operations(inner)` where each block starts."""
    nodes = _operations(inner)
    position = {id(op): i for i, op in enumerate(nodes)}
    by_name = {op.name: i for i, op in enumerate(nodes)}
    last_use = {}  # (producer position, node, output index) -> last consumer
    for i, op in enumerate(nodes):
        for node in getattr(op, "_inbound_nodes", ()):
            for tensor in node.input_tensors:
                producer, node_index, index = tensor._keras_history
                if id(producer) in position:
                    last_use[(position[id(producer)], node_index, index)] = i
    # crossing[j]: tensors made before position j and used at or after it.
    crossing = [0] * (len(nodes) + 1)
    for (made, _, _), used in last_use.items():
        for j in range(made + 1, used + 1):
            crossing[j] += 1
    starts = []
    for block in blocks:
        if block not in by_name:
            raise ValueError(
                f"Layer '{block}' of `blocks` is not in model '{inner.name}'; does "
                f"the spec match the model? Received: blocks={blocks!r}")
        anchor = by_name[block]
        cut = next((j for j in range(anchor, 0, -1) if crossing[j] == 1), anchor)
        starts.append(cut if starts else 0)
    return starts


def _set_trainable_from(backbone_model, inner, start):
    """Unfreezes `inner` from position `start` on (None: nothing), BN excepted.

    Returns the names of the layers of `inner` that have trainable weights.
    """
    # Keras' TF backend ignores `layer.trainable = v` (no recursion either)
    # when the layer's own flag already is v, even if sublayers differ; so
    # every layer is set explicitly, parents before their sublayers.
    backbone_model.trainable = True
    inner.trainable = start is not None
    made_trainable = []
    for i, op in enumerate(_operations(inner)):
        if isinstance(op, keras.layers.Layer):
            for sub in layers_within(op):  # op itself first
                # BN gamma/beta stay frozen, as is usual when fine-tuning.
                is_bn = isinstance(sub, keras.layers.BatchNormalization)
                sub.trainable = start is not None and i >= start and not is_bn
            if op.trainable_weights:
                made_trainable.append(op.name)
    return made_trainable


def block_depths(backbone_model, spec):
    """How far below the top block each layer of a backbone sits.

    Args:
        backbone_model: A model returned by `create_backbone`.
        spec: Its `BackboneSpec`.

    Returns:
        {layer name: depth}, for every layer of the inner model: 0 for the
        top block's layers, 1 for the block below, ..., len(spec.blocks) - 1
        for the lowest block (and the stem before it).
    """
    inner = get_inner_model(backbone_model)
    starts = _block_starts(inner, spec.blocks)
    depths, block = {}, 0
    for i, op in enumerate(_operations(inner)):
        while block + 1 < len(starts) and i >= starts[block + 1]:
            block += 1
        depths[op.name] = len(starts) - 1 - block
    return depths


def unfreeze_top_blocks(backbone_model, spec, num_blocks):
    """Makes the top `num_blocks` blocks of a backbone trainable.

    Layers from the start of block `spec.blocks[-num_blocks]` to the end of
    the inner model become trainable, except BatchNormalization layers; all
    layers below are frozen. `num_blocks=0` freezes everything.

    Args:
        backbone_model: A model returned by `create_backbone`.
        spec: Its `BackboneSpec`.
        num_blocks: int in `[0, len(spec.blocks)]`.

    Returns:
        Names (list of str) of the inner model's layers that now have
        trainable weights, bottom to top.
    """
    if (not isinstance(num_blocks, int) or isinstance(num_blocks, bool)
            or not 0 <= num_blocks <= len(spec.blocks)):
        raise ValueError(f"`num_blocks` must be an int in [0, {len(spec.blocks)}] for "
                         f"'{spec.name}'. Received: num_blocks={num_blocks!r}")
    inner = get_inner_model(backbone_model)
    start = _block_starts(inner, spec.blocks)[-num_blocks] if num_blocks else None
    return _set_trainable_from(backbone_model, inner, start)
