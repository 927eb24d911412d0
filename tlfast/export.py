"""Export to serving formats, each checked against the Keras model.

Formats, written into `output_dir` with `labels.txt` beside them:

    keras        model.keras: the Keras model, re-saved.
    saved_model  saved_model/: TF SavedModel with a "serving_default"
                 signature taking uint8 images [None, S, S, 3] ("image") and
                 returning float32 probabilities [None, C] ("output_0").
                 It has its own labels.txt inside.
    tflite       model.tflite: float32 weights and activations, uint8 input,
                 float32 output; converted from the SavedModel.
                 Works under the JAX backend too (via jax2tf).
    tflite_fp16  model_fp16.tflite: float16 weights (half the size), float
                 activations on CPU (fp16 on GPUs that have it).
    tflite_dynamic  model_dynamic.tflite: dynamic-range quantization: int8
                 weights (a quarter of the size), float activations; needs
                 no calibration images.
    tflite_int8  model_int8.tflite: full-integer quantization of weights and
                 activations, calibrated on representative training images.
                 Input stays uint8 [None, S, S, 3] (raw pixels, no input
                 quantization: the graph casts and quantizes them), output
                 float32 probabilities (dequantized from int8 softmax, so in
                 steps of 1/256). Every op in between is int8. Needs the
                 TensorFlow backend.

SavedModel and TFLite are made from `serving_model(model)`: augmentation and
dropout, no-ops at inference, are left out. Every .tflite carries TFLite
metadata (`tlfast.tflite_metadata`): its labels, input format and a
description, as the TFLite Task Library and MediaPipe read them.

After each export a parity check runs the exported model on the validation
images and compares it with the Keras model: top-1 agreement and the largest
absolute probability difference. Float formats must agree on >= 99.5% of
top-1 and within 1e-3; int8 is reported with a looser top-1 bar (>= 95%, no
probability bar). A failed check logs a warning and is reported, it does not
stop the export. `export.json` records it all.
"""

import logging
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from tlfast import atomic
from tlfast import backbones
from tlfast import config
from tlfast import predict as predict_lib
from tlfast import progress
from tlfast import run_folder
from tlfast import tflite_metadata
from tlfast.data import augment as augment_lib
from tlfast.data import scan as scan_lib

log = logging.getLogger("tlfast")
FORMATS = config.EXPORT_FORMATS
# Formats converted from the SavedModel of `serving_model(model)`.
GRAPH_FORMATS = frozenset({"saved_model", "tflite", "tflite_fp16",
                           "tflite_dynamic", "tflite_int8"})
FILE_NAMES = {"keras": "model.keras", "saved_model": "saved_model",
              "tflite": "model.tflite", "tflite_fp16": "model_fp16.tflite",
              "tflite_dynamic": "model_dynamic.tflite",
              "tflite_int8": "model_int8.tflite"}
# Parity of each format: (largest probability change allowed, or None for
# none; top-1 agreement needed on decisive images; the shift that makes a
# near-tie). float16 weights move probabilities by ~1e-3 (measured up to
# 4e-3 on the tiny test model); int8 weights (dynamic range) like int8.
_FP16_MAX_DIFF = 1e-2
TOLERANCES = {"tflite_fp16": (_FP16_MAX_DIFF, 0.99, _FP16_MAX_DIFF),
              "tflite_dynamic": (None, 0.95, 0.05)}
FLOAT_TOP1, FLOAT_MAX_DIFF = 0.995, 1e-3
INT8_TOP1 = 0.95
# How far int8 quantization may move a probability on a near-tie.
INT8_MAX_SHIFT = 0.05
NUM_REPRESENTATIVE = 100


def problems(report):
    """One line per format of an `export_model` report that failed or
    failed its parity check (empty when all are fine)."""
    lines = []
    for fmt, info in report.items():
        if "error" in info:
            lines.append(f"export {fmt} failed: {info['error']}")
        elif info.get("parity_ok") is False:
            lines.append(
                f"export {fmt} differs from the Keras model (top-1 agreement "
                f"{info['top1_agreement']:.4f}, max probability difference "
                f"{info['max_prob_diff']:.2e} on {info['num_images']} images):"
                f" {info['path']} is not a faithful copy")
    return lines


def parse_formats(formats):
    """Normalises "keras,tflite" or a list to a tuple of known format names."""
    out = config.export_formats(formats)
    if not out:
        raise ValueError(f"No export format given. Expected some of "
                         f"{', '.join(FORMATS)}. Received: formats={formats!r}")
    return out


def as_arrays(data, name):
    """uint8 images [N, S, S, 3] and labels [N] (or None) from many shapes.

    Args:
      data: None; a uint8 array [N, S, S, 3]; an (images, labels) pair; or
        a `tf.data.Dataset` (batched or not) of images, (image, label)
        tuples or {"image", "label"} dicts.
      name: Argument name, for messages.

    Returns:
      (images, labels) as numpy arrays; (None, None) for None.
    """
    if data is None:
        return None, None
    labels = None
    if isinstance(data, tf.data.Dataset):
        images, labels = [], []
        for element in data.as_numpy_iterator():
            if isinstance(element, dict):
                image, label = element["image"], element.get("label")
            elif isinstance(element, tuple):
                image, label = element[0], element[1]
            else:
                image, label = element, None
            images.append(image if image.ndim == 4 else image[None])
            if label is not None:
                labels.append(np.reshape(label, (-1,)))
        if not images:
            raise ValueError(f"{name} is an empty dataset. Pass some images.")
        images = np.concatenate(images)
        labels = np.concatenate(labels) if labels else None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = np.asarray(data[0]), np.asarray(data[1])
    else:
        images = np.asarray(data)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{name} must hold uint8 images [N, S, S, 3]. Received: "
            f"shape={images.shape}, dtype={images.dtype}")
    if not len(images):
        raise ValueError(f"{name} holds no images. Pass some, or None.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{name} has {len(images)} images but {len(labels)} "
                         "labels.")
    return images, labels


# Validation images the parity checks decode at most (held in memory).
PARITY_IMAGES = 1000


def spread(entries, limit):
    """At most `limit` of `entries`, evenly spaced (all of them for None).

    Entries are sorted by class, so every class is represented.
    """
    entries = list(entries)
    if limit is not None and len(entries) > limit:
        keep = np.linspace(0, len(entries) - 1, limit).round().astype(int)
        entries = [entries[i] for i in np.unique(keep)]
    return entries


def decode_entries(entries, image_size, resize, *, limit=None, batch_size=64):
    """Decodes files to arrays through the training decode path.

    Args:
      entries: Scanned `FileEntry`s.
      image_size: Side S.
      resize: The run's resize mode.
      limit: Keep at most this many, evenly spaced over `entries` (which
        are sorted by class, so every class is represented).
      batch_size: Decode batch size.

    Returns:
      (images uint8 [N, S, S, 3], labels int32 [N]).
    """
    entries = spread(entries, limit)
    images, labels = [], []
    for batch, positions in predict_lib.iter_batches(entries, image_size, resize,
                                                      batch_size):
        images.append(batch)
        labels.append(np.array([entries[i].label for i in positions], np.int32))
    if not images:
        return (np.zeros((0, image_size, image_size, 3), np.uint8),
                np.zeros((0,), np.int32))
    return np.concatenate(images), np.concatenate(labels)


# Identity at inference, but holding random-seed state: a uint32 variable
# under JAX, which TFLite cannot hold.
_INFERENCE_NO_OPS = (augment_lib.Augmentation, keras.layers.Dropout,
                     keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                     keras.layers.AlphaDropout)


def serving_model(model):
    """The model for SavedModel / TFLite: inference no-ops left out, float32.

    Augmentation and dropout layers do nothing at inference; they are
    replaced by `Identity`, every other layer is shared (same weights). The
    result computes the same function with no random-seed variables, which
    TFLite cannot convert under the JAX backend. Layers of a mixed-precision
    model become float32 copies. A model that cannot be cloned (subclassed)
    is returned as is.
    """

    copies = []

    def strip(layer):
        if isinstance(layer, _INFERENCE_NO_OPS):
            # float32 as well: under a mixed global policy it would cast.
            return keras.layers.Identity(name=layer.name, dtype="float32")
        if not isinstance(layer, keras.Model) and (
                layer.dtype_policy.name != "float32"):
            # A mixed-precision layer computes in float16/bfloat16, which
            # TFLite's builtin kernels do not take: a float32 twin, with the
            # same (float32) weights copied in once it is built.
            twin = type(layer).from_config({**layer.get_config(),
                                            "dtype": "float32"})
            if layer.weights:
                copies.append((layer, twin))
            return twin
        return layer

    try:
        clone = keras.models.clone_model(model, clone_function=strip,
                                         recursive=True)
    except ValueError:  # Not a Functional / Sequential model.
        return model
    for layer, twin in copies:
        twin.set_weights(layer.get_weights())
    return clone


def _interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TF's own copy, deprecated but still bundled.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf.lite.Interpreter(model_path=path)
    return Interpreter(model_path=path)


def run_tflite(path, images, batch_size=32):
    """Probabilities float32 [N, C] of a .tflite model taking uint8 [B, S, S, 3].

    Quantized inputs / outputs are (de)quantized with their scales.
    """
    interpreter = _interpreter(path)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results, shape = [], None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape != shape:
            interpreter.resize_tensor_input(inp["index"], batch.shape)
            interpreter.allocate_tensors()
            shape = batch.shape
        scale, zero = inp["quantization"]
        x = batch.astype(np.float32)
        if scale and inp["dtype"] != np.float32:
            x = x / scale + zero
        interpreter.set_tensor(inp["index"], np.round(x).astype(inp["dtype"])
                               if inp["dtype"] != np.float32 else x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        if scale and out["dtype"] != np.float32:
            y = (y - zero) * scale
        results.append(y)
    return np.concatenate(results)


def _run_saved_model(path, images, batch_size=32):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    outputs = []
    for start in range(0, len(images), batch_size):
        result = serve(image=tf.constant(images[start:start + batch_size]))
        outputs.append(next(iter(result.values())).numpy())
    return np.concatenate(outputs).astype(np.float32)


def _convert(saved_model_dir, representative=None, fmt="tflite"):
    """TFLite flatbuffer bytes; float, float16 or dynamic-range weights, or
    full-integer with `representative`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if fmt in ("tflite_fp16", "tflite_dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if fmt == "tflite_fp16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert(), False
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [image[None]] for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        return converter.convert(), False
    try:
        return converter.convert(), False
    except Exception as e:  # ConverterError; its class moves between TF versions.
        # An op with no TFLite builtin: fall back to TF ops (needs the Flex
        # delegate at run time, bundled with the full TF interpreter).
        log.warning("TFLite builtins cannot express the model (%s); retrying "
                    "with SELECT_TF_OPS.", str(e).splitlines()[0][:200])
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                               tf.lite.OpsSet.SELECT_TF_OPS]
        return converter.convert(), True


def parity(reference, probs, labels=None, *, quantized=False, tolerance=None):
    """Compares an export's probabilities with the Keras model's.

    A float export must stay within `FLOAT_MAX_DIFF` of every probability;
    an int8 one must agree on the top class of at least `INT8_TOP1` of the
    images whose top two reference classes are more than 2 x
    `INT8_MAX_SHIFT` apart (closer ones may swap under quantization).

    Args:
      reference: float [N, C] probabilities of the Keras model.
      probs: float [N, C] probabilities of the export.
      labels: Optional int [N] true classes.
      quantized: Whether the export is int8.
      tolerance: (max probability change or None, top-1 agreement, near-tie
        shift) instead of the float or int8 defaults (`TOLERANCES`).

    Returns:
      {"top1_agreement" (over all images), "max_prob_diff", "parity_ok"
      (None for an int8 export with no decisive image), "num_images",
      "decisive_images"} and, with labels, "accuracy" (the export's) and
      "reference_accuracy".
    """
    same = reference.argmax(1) == probs.argmax(1)
    diff = float(np.max(np.abs(reference - probs)))
    # Where the reference's top two classes are closer than an export may
    # move a probability, either may come first: such near-ties (all of a
    # barely trained model's images) say nothing about the export.
    ranked = np.sort(reference, axis=1)
    margin = ranked[:, -1] - ranked[:, -2] if reference.shape[1] > 1 else (
        np.ones(len(reference)))
    if tolerance is None:
        tolerance = ((None, INT8_TOP1, INT8_MAX_SHIFT) if quantized else
                     (FLOAT_MAX_DIFF, FLOAT_TOP1, FLOAT_MAX_DIFF))
    max_diff, top1, shift = tolerance
    decisive = margin > 2 * shift
    agree = float(np.mean(same[decisive])) if decisive.any() else None
    if max_diff is None:  # None: nothing decisive to compare.
        ok = None if agree is None else agree >= top1
    else:
        ok = diff <= max_diff and (agree is None or agree >= top1)
    out = {"top1_agreement": float(np.mean(same)), "max_prob_diff": diff,
           "parity_ok": None if ok is None else bool(ok),
           "num_images": int(len(probs)),
           "decisive_images": int(decisive.sum())}
    if labels is not None:
        out["accuracy"] = float(np.mean(probs.argmax(1) == labels))
        out["reference_accuracy"] = float(np.mean(reference.argmax(1) == labels))
    return out


def _write_labels(directory, class_names):
    atomic.write_text(os.path.join(directory, "labels.txt"),
                      "\n".join(class_names) + "\n")


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, n))
               for d, _, names in os.walk(path) for n in names)


def _export_one(fmt, model, path, saved_model_dir, representative, images,
                batch_size, class_names):
    """Writes one format; returns (info dict, probabilities or None)."""
    info, probs = {"path": path}, None
    if fmt == "keras":
        # Saved beside, then renamed: `path` may be the model being exported.
        with atomic.replacing(path) as tmp:
            model.save(tmp)
        if images is not None:
            probs = keras.models.load_model(path, compile=False).predict(
                images, batch_size=batch_size, verbose=0)
    elif fmt == "saved_model":
        if images is not None:
            probs = _run_saved_model(saved_model_dir, images, batch_size)
    else:
        flatbuffer, select_ops = _convert(
            saved_model_dir, representative if fmt == "tflite_int8" else None,
            fmt)
        size = model.input_shape[1]
        atomic.write_bytes(path, tflite_metadata.populate(
            flatbuffer, class_names, name=f"tlfast {model.name} ({fmt})",
            description=f"Image classifier of {len(class_names)} labels "
            f"({fmt}, made by tlfast): uint8 RGB {size} x {size} in, float32 "
            "probabilities out.", image_size=size))
        info["select_tf_ops"] = select_ops
        info["metadata"] = True
        if fmt == "tflite_int8":
            info["representative_images"] = len(representative)
        if images is not None:
            probs = run_tflite(path, images, batch_size)
    info["size_bytes"] = _size(saved_model_dir if fmt == "saved_model" else path)
    return info, probs


def _computes_below_float32(model):
    """Whether any layer of `model` (nested ones too) computes in 16 bits."""
    return any(layer.dtype_policy.compute_dtype != "float32"
               for layer in backbones.layers_within(model) if layer is not model)


def export_model(model, formats, output_dir, *, class_names, representative=None,
                 validation=None, batch_size=32,
                 max_representative=NUM_REPRESENTATIVE):
    """Exports a model and checks every export against it.

    Args:
      model: uint8 [B, S, S, 3] -> float32 [B, C] probabilities.
      formats: Names from `FORMATS`, as a list or "keras,tflite".
      output_dir: Folder for the exports, labels.txt and export.json.
      class_names: C names, written to labels.txt.
      representative: Calibration images for "tflite_int8" (about 100
        training images): see `as_arrays` for accepted forms.
      validation: Images (with labels, for accuracies) for the parity
        checks: see `as_arrays`. None: no parity check.
      batch_size: Images per forward pass in the checks.
      max_representative: At most this many of the representative images
        (evenly spaced) calibrate "tflite_int8".

    Returns:
      {format: {"path", "size_bytes", and with validation "top1_agreement",
      "max_prob_diff", "parity_ok", "num_images", with labels "accuracy",
      "reference_accuracy"; without, "parity_ok" is None; TFLite formats
      also "select_tf_ops"; for a mixed-precision model the graph formats
      are compared with the float32 copy they are built from and say so in
      "reference"}}; a format
      that failed to export has {"error": message} instead. Also written to
      `output_dir/export.json`.

    Raises:
      ValueError: Unknown formats, class names that do not match the model,
        malformed images, or "tflite_int8" without representative images or
        on a backend other than TensorFlow.
    """
    formats = parse_formats(formats)
    if len(class_names) != model.output_shape[-1]:
        raise ValueError(
            f"The model has {model.output_shape[-1]} outputs but "
            f"{len(class_names)} class names were given. Received: "
            f"class_names={list(class_names)}")
    if "tflite_int8" in formats and keras.backend.backend() != "tensorflow":
        # jax2tf graphs quantize into int8 convs that TFLite refuses to run.
        raise ValueError(
            "tflite_int8 export needs Keras' TensorFlow backend. model.keras "
            "is backend-independent: run the export with "
            "KERAS_BACKEND=tensorflow. Received: "
            f"backend={keras.backend.backend()!r}")
    rep_images, _ = as_arrays(representative, "representative")
    images, labels = as_arrays(validation, "validation")
    if "tflite_int8" in formats and rep_images is None:
        raise ValueError(
            "tflite_int8 needs representative images to calibrate the int8 "
            "ranges: pass representative= about 100 uint8 training images "
            "[N, S, S, 3] (tlfast-export reads them from the run's data).")
    if rep_images is not None and len(rep_images) > max_representative:
        rep_images = rep_images[np.linspace(0, len(rep_images) - 1,
                                            max_representative).astype(int)]
    os.makedirs(output_dir, exist_ok=True)
    _write_labels(output_dir, class_names)
    serving = None
    if GRAPH_FORMATS & set(formats):
        serving = serving_model(model)
    reference, float_reference = _references(model, serving, images,
                                              batch_size)
    report = {}
    # The SavedModel is written into a temporary folder beside its final
    # place (TFLite converts from it) and renamed there once checked.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".tmp-") as tmp:
        saved_model_dir = os.path.join(tmp, "saved_model")
        saved_model_error = None
        if serving is not None:
            saved_model_error = _export_saved_model(serving, saved_model_dir,
                                                    class_names)
        for fmt in formats:
            path = os.path.join(output_dir, FILE_NAMES[fmt])
            error = saved_model_error if fmt != "keras" else None
            if not error:
                try:
                    info, probs = _export_one(fmt, model, path, saved_model_dir,
                                              rep_images, images, batch_size,
                                              class_names)
                except Exception as e:  # One failed format must not lose the rest.
                    error = f"{type(e).__name__}: {e}"
            if error:
                log.error("[export] %s failed: %s", fmt, error)
                report[fmt] = {"path": path, "error": error}
                continue
            if probs is not None:
                info.update(_parity_of(
                    fmt, reference if fmt == "keras" else float_reference,
                    float_reference is not reference, probs, labels))
            else:
                info["parity_ok"] = None  # Not checked: no validation images.
            report[fmt] = info
            log.info("[export] %s -> %s %s", fmt, path, {
                k: v for k, v in info.items() if k != "path"})
        if "saved_model" in report and "error" not in report["saved_model"]:
            atomic.publish(saved_model_dir,
                           os.path.join(output_dir, FILE_NAMES["saved_model"]))
    atomic.write_json(os.path.join(output_dir, "export.json"), report)
    return report


def _references(model, serving, images, batch_size):
    """The model's probabilities on `images`, and those of its float32 copy."""
    if images is None:
        return None, None
    reference = model.predict(images, batch_size=batch_size, verbose=0)
    if serving is not None and _computes_below_float32(model):
        # The graph exports are built from the float32 copy: measured
        # against the bfloat16/float16 model they would fail on its
        # rounding (0.45 max probability difference seen with bf16), not on
        # anything the conversion did.
        return reference, serving.predict(images, batch_size=batch_size,
                                          verbose=0)
    return reference, reference


def _export_saved_model(serving, directory, class_names):
    """Writes the SavedModel; returns None, or why it failed."""
    try:
        serving.export(directory, format="tf_saved_model", verbose=False)
        _write_labels(directory, class_names)
    except Exception as e:  # Reported for each format that needs it.
        return f"SavedModel export failed: {type(e).__name__}: {e}"
    return None


def _parity_of(fmt, reference, against_float_copy, probs, labels):
    """The parity entries of one export's report, logged when not clean."""
    info = parity(reference, np.asarray(probs, np.float32), labels,
                  quantized=fmt == "tflite_int8",
                  tolerance=TOLERANCES.get(fmt))
    if fmt != "keras" and against_float_copy:
        info["reference"] = "float32 copy of the model"
    if info["parity_ok"] is None:
        log.warning(
            "[export] %s not checked: on every validation image the model's "
            "top two classes are near-ties that quantization may swap (a "
            "barely trained model?).", fmt)
    elif not info["parity_ok"]:
        log.warning(
            "[export] %s differs from the Keras model: top-1 agreement %.4f, "
            "max probability difference %.2e.", fmt, info["top1_agreement"],
            info["max_prob_diff"])
    return info


def run_export(config):
    """`tlfast-export`: a run's model in serving formats, parity-checked.

    Calibration images for tflite_int8 (`num_representative` training
    images) and the parity-check images (the validation split) are read
    from the run's data folder (run.json, or `config.data_dir`) with its
    split.csv. Without data, float formats are exported unchecked and
    tflite_int8 is refused.

    Args:
      config: A `tlfast.config.ExportConfig`.

    Returns:
      The report of `export_model`.
    """
    progress.ensure_visible()
    formats = parse_formats(config.formats)
    run = run_folder.load_model_run(config.model)
    entries = run_folder.split_entries(run.folder, config.data_dir)

    def decode(split, limit):
        # Scanned as the run scanned them: the decompression-bomb guard and
        # the placeholder rule hold for these images too.
        usable = scan_lib.scan_files(
            spread(entries.get(split) or (), limit),
            max_pixels=run.run.setting("max_pixels", scan_lib.DEFAULT_MAX_PIXELS),
            skip_placeholders=run.run.setting("skip_placeholders", True)).usable
        if not usable:
            return None
        return decode_entries(usable, run.image_size, run.resize)

    representative = None
    if "tflite_int8" in formats:
        representative = decode("train", config.num_representative)
        if representative is None:
            raise ValueError(
                "tflite_int8 needs training images to calibrate, and none "
                f"were found for the run in '{run.run_dir}' (split.csv + "
                "run.json's data_dir). Pass --data_dir=<the training "
                "folder>, or leave tflite_int8 out of --formats.")
    validation = None
    if config.parity_images:
        validation = decode("validation", config.parity_images)
        if validation is None:
            log.warning("No validation images found: exports are not "
                        "parity-checked. Pass --data_dir to check them.")
    return export_model(
        run.model, formats, config.output_dir, class_names=run.class_names,
        representative=None if representative is None else representative[0],
        validation=validation, batch_size=config.batch_size,
        max_representative=config.num_representative)
