"""The main job: validated data -> cached frozen features -> head -> [fine-tune] -> outputs.

`run_training(TrainConfig(...))` is the library entry point; `tlfast.train`
is the absl-flags script around it (it alone sets the precision policy and
the global seed).
"""

import contextlib
import dataclasses
import logging
import os
import platform
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tlfast import backbones
from tlfast import distribute
from tlfast import extraction
from tlfast import head as head_lib
from tlfast import locks
from tlfast import model as model_lib
from tlfast import reuse
from tlfast import run_data
from tlfast import run_outputs
from tlfast.data import augment as augment_lib
from tlfast.data import pipeline
from tlfast.data import scan as scan_lib
from tlfast.progress import EpochLogger
from tlfast.progress import Phase

log = logging.getLogger("tlfast")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "tlfast")
RUN_LOCK = ".tlfast-run.lock"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; `tlfast.train`'s flags reuse these defaults."""

    output_dir: str = None
    data_dir: str = None
    tfds_name: str = None
    tfds_data_dir: str = None
    validation_split: float = 0.2
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"
    image_size: int = None
    # Centre crop keeps the aspect ratio ImageNet backbones were trained on;
    # measured +5 points on hymenoptera over stretching.
    resize: str = "crop"
    batch_size: int = 32
    # Cached feature vectors are tiny: big head batches keep an epoch to a
    # few steps (per-step overhead dominates on small heads).
    head_batch_size: int = 256
    epochs: int = 50
    learning_rate: float = 3e-3
    hidden_units: int = 0
    dropout: float = 0.2
    patience: int = 10
    label_smoothing: float = 0.0
    fine_tune_epochs: int = 0
    fine_tune_blocks: int = 1
    fine_tune_learning_rate: float = 1e-4
    augment: str = "standard"
    augment_views: int = 0
    cache_dir: str = DEFAULT_CACHE_DIR
    ram_budget_mb: int = 2048
    feature_dtype: str = "float16"
    feature_shard_size: int = 512
    max_pixels: int = scan_lib.DEFAULT_MAX_PIXELS
    # Skip "image not found" graphics; False keeps line art, icons, digits.
    skip_placeholders: bool = True
    export: str = ""  # Comma list of keras, saved_model, tflite, tflite_int8.
    data_service_address: str = None  # grpc://host:port of a tf.data service.
    # Read a folder through tlfast's TFDS builder (prepared once under
    # tfds_data_dir or <cache_dir>/tfds, re-prepared when the folder changes);
    # False reads the loose files.
    prepare_tfds: bool = True
    # none | mirrored | multi_worker | tpu (tf.distribute, TF backend).
    distribution: str = "none"
    seed: int = 0
    strict: bool = False
    # Keep the outputs already in output_dir when they come from an identical
    # run (see tlfast.reuse); False always trains.
    reuse_outputs: bool = True


def check_config(config):
    """Fails fast, before any heavy work, on values that cannot work.

    Returns:
      (spec, image_size, canonical augmentation spec).
    """
    if not config.output_dir:
        raise ValueError("output_dir is required: where the model, labels and "
                         "reports go. Received: output_dir=None")
    if not config.data_dir and not config.tfds_name:
        raise ValueError("Pass data_dir (a folder of class sub-folders) or "
                         "tfds_name (e.g. tf_flowers). Received neither.")
    if config.data_dir and config.tfds_name:
        raise ValueError(
            "Pass either data_dir or tfds_name, not both. Received: "
            f"data_dir={config.data_dir!r}, tfds_name={config.tfds_name!r}")
    if config.data_service_address and config.tfds_name:
        # Only image folders are decoded on service workers; a TFDS dataset
        # would silently decode here.
        raise ValueError(
            "data_service_address works with data_dir (an image folder), not "
            "tfds_name. Received: tfds_name="
            f"{config.tfds_name!r}, data_service_address="
            f"{config.data_service_address!r}")
    if config.data_dir and not os.path.isdir(os.path.expanduser(config.data_dir)):
        raise FileNotFoundError(
            f"Dataset folder not found: '{config.data_dir}'. Expected a folder "
            "of class sub-folders of images. Received: "
            f"data_dir={config.data_dir!r}")
    spec = backbones.get_backbone_spec(config.backbone)
    size = config.image_size or spec.default_size
    if size < spec.min_size:
        raise ValueError(
            f"image_size must be at least {spec.min_size} for backbone "
            f"'{spec.name}'. Received: image_size={size}")
    positive = {"batch_size": config.batch_size, "epochs": config.epochs,
                "head_batch_size": config.head_batch_size,
                "learning_rate": config.learning_rate,
                "fine_tune_learning_rate": config.fine_tune_learning_rate}
    for name, value in positive.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0. Received: {name}={value!r}")
    for name in ("feature_shard_size", "max_pixels"):
        if not getattr(config, name) >= 1:
            raise ValueError(f"{name} must be >= 1. Received: "
                             f"{name}={getattr(config, name)!r}")
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32). Received: "
                         f"seed={config.seed!r}")
    for name in ("fine_tune_epochs", "augment_views", "fine_tune_blocks",
                 "ram_budget_mb"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0. Received: "
                             f"{name}={getattr(config, name)!r}")
    if config.fine_tune_epochs and not (
            1 <= config.fine_tune_blocks <= len(spec.blocks)):
        raise ValueError(
            f"fine_tune_blocks must be in [1, {len(spec.blocks)}] for "
            f"'{spec.name}'. Received: fine_tune_blocks={config.fine_tune_blocks}")
    if not 0 < config.validation_split < 1:
        raise ValueError("validation_split must be in (0, 1). Received: "
                         f"validation_split={config.validation_split!r}")
    if config.feature_dtype not in ("float16", "float32"):
        raise ValueError("feature_dtype must be 'float16' or 'float32'. "
                         f"Received: feature_dtype={config.feature_dtype!r}")
    ops = augment_lib.parse_augmentation(config.augment)
    if config.augment_views and not ops:
        raise ValueError("augment_views > 0 needs augmentation ops. Received: "
                         f"augment={config.augment!r}")
    weights = config.weights
    if not (weights is None or weights == "imagenet" or weights.lower() == "none"
            or os.path.isfile(os.path.expanduser(weights))):
        raise FileNotFoundError(
            f"Weights file not found: '{weights}'. Pass imagenet, none, or a "
            f"path to a .weights.h5 / .h5 file. Received: weights={weights!r}")
    head_config(config)  # Validates the head settings.
    distribute.check_distribution(config.distribution)
    if config.distribution == "multi_worker" and config.fine_tune_epochs:
        raise ValueError(
            "Fine-tuning cannot run with distribution='multi_worker': Keras 3's "
            "trainer fails under MultiWorkerMirroredStrategy "
            "(tensorflow/tensorflow#72388). Extract features and train the "
            "head with multi_worker, then fine-tune on one machine "
            "(distribution='mirrored' uses all its GPUs); the feature cache "
            "is reused. Received: fine_tune_epochs="
            f"{config.fine_tune_epochs}, distribution='multi_worker'")
    known = ("keras", "saved_model", "tflite", "tflite_int8")
    for fmt in (f.strip() for f in config.export.split(",") if f.strip()):
        if fmt not in known:
            raise ValueError(f"Unknown export format '{fmt}'. Expected a comma "
                             f"list of {', '.join(known)}. Received: "
                             f"export={config.export!r}")
        if fmt == "tflite_int8" and config.tfds_name:
            # Its calibration images come from the folder's files.
            raise ValueError(
                "export=tflite_int8 needs an image folder (--data_dir) for its "
                "calibration images; with a TFDS dataset, export tflite (float) "
                "instead. "
                f"Received: tfds_name={config.tfds_name!r}")
        if fmt == "tflite_int8" and keras.backend.backend() != "tensorflow":
            # Refused by the export too, but only after all the training.
            raise ValueError(
                "export=tflite_int8 needs Keras' TensorFlow backend: train "
                "with KERAS_BACKEND=tensorflow, or export tflite (float) now "
                "and tflite_int8 later with `KERAS_BACKEND=tensorflow "
                "tlfast-export`. Received: "
                f"backend={keras.backend.backend()!r}")
    for path in (config.output_dir, os.path.expanduser(config.cache_dir)):
        _check_writable(path)
    return spec, size, augment_lib.canonical_spec(config.augment)


def _check_writable(path):
    """Creates `path` and proves it writable by writing a file there.

    A real write, not `os.access`: root passes permission checks, and a
    read-only mount or a full disk only shows on an actual write.
    """
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tlfast-probe-"):
            pass
    except OSError as e:
        raise OSError(
            f"Folder '{path}' is not writable: {e.strerror or e}. Pass a "
            "writable path (--output_dir / --cache_dir).") from e


def estimate_cache_bytes(data, spec, size, config):
    """Disk the feature cache (and a spilled pixel cache) may need."""
    itemsize = 2 if config.feature_dtype == "float16" else 4
    examples = len(data.train) * (config.augment_views + 1) + len(data.validation)
    needed = examples * spec.feature_dim * itemsize
    if config.fine_tune_epochs:
        pixels = (len(data.train) + len(data.validation)) * size * size * 3
        if pixels > config.ram_budget_mb * 2**20:
            needed += pixels
    return needed


def check_free_space(path, needed_bytes):
    """Fails up front when `path`'s file system cannot hold `needed_bytes`."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OSError(
            f"Not enough free disk space in '{path}': about "
            f"{needed_bytes / 2**20:.0f} MiB needed for the caches, "
            f"{free / 2**20:.0f} MiB free. Free some space or pass another "
            "--cache_dir.")


def head_config(config):
    return head_lib.HeadConfig(
        hidden_units=config.hidden_units, dropout=config.dropout,
        learning_rate=config.learning_rate, epochs=config.epochs,
        batch_size=config.head_batch_size, patience=config.patience,
        label_smoothing=config.label_smoothing, seed=config.seed)


def split_ram_budget(pconfig, num_train, num_val):
    """Pipeline configs for the train and validation pixel caches.

    Both live at once: the training images take their share of the RAM
    budget first, and validation gets what is left (else it goes to disk).

    Returns:
      (train PipelineConfig, validation PipelineConfig).
    """
    left = pconfig.ram_budget_mb
    if pipeline.choose_cache(num_train, pconfig) == "memory":
        left -= num_train * pconfig.image_bytes / 2**20
    return pconfig, dataclasses.replace(pconfig, ram_budget_mb=max(0, int(left)))


def fine_tune(classifier, backbone_model, spec, train, validation, size, config,
              timings, callbacks):
    """Trains the top blocks end to end on the uint8 pixel pipeline."""
    trainable = backbones.unfreeze_top_blocks(backbone_model, spec,
                                              config.fine_tune_blocks)
    log.info("[fine_tune] %d layer(s) unfrozen in the top %d block(s)",
             len(trainable), config.fine_tune_blocks)
    head_lib.compile_classifier(classifier, config.fine_tune_learning_rate,
                                config.label_smoothing)
    pconfig = pipeline.PipelineConfig(
        image_size=size, batch_size=config.batch_size, resize=config.resize,
        ram_budget_mb=config.ram_budget_mb,
        cache_dir=os.path.expanduser(config.cache_dir), seed=config.seed)
    train_config, val_config = split_ram_budget(pconfig, len(train),
                                                len(validation))
    train_ds = pipeline.to_supervised(train.pixels(train_config, training=True))
    val_ds = pipeline.to_supervised(validation.pixels(val_config,
                                                      training=False))
    with Phase("fine_tune", timings=timings):
        history = classifier.fit(
            train_ds, validation_data=val_ds, epochs=config.fine_tune_epochs,
            verbose=0, callbacks=[EpochLogger("fine_tune", len(train)),
                                  *callbacks])
    return history.history


def run_training(config):
    """Runs the whole job; see the module docstring.

    Args:
      config: A `TrainConfig`. Uses the Keras global dtype policy and seed
        as set by the caller.

    Returns:
      The metrics dict also written to `<output_dir>/metrics.json`.
    """
    check_config(config)
    strategy = distribute.make_strategy(config.distribution)
    replicas = distribute.num_replicas(strategy)
    workers = distribute.workers_of(strategy)
    scope, scale = distribute.strategy_scope(strategy), replicas
    if config.distribution == "multi_worker":
        # The workers shard the feature extraction, the heavy part, and meet
        # through the strategy's collectives; the head (seconds on cached
        # features) then trains on every worker alike, outside the strategy:
        # Keras 3's trainer cannot run under MultiWorkerMirroredStrategy
        # (tensorflow/tensorflow#72388).
        scope, scale = contextlib.nullcontext(), 1
    if workers.is_chief:
        with scope:
            return _run_training(_scaled(config, scale), replicas, strategy)
    # Every worker runs the whole job (the collectives need all of them) but
    # only the chief's outputs are kept.
    scratch = tempfile.mkdtemp(prefix=f"tlfast-worker{workers.index}-")
    log.info("Worker %d of %d: outputs go to the scratch folder %s (deleted "
             "at the end); the chief writes %s", workers.index, workers.count,
             scratch, config.output_dir)
    try:
        with scope:
            return _run_training(
                _scaled(dataclasses.replace(config, output_dir=scratch), scale),
                replicas, strategy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scaled(config, replicas):
    """`config` with batch sizes and learning rates scaled by `replicas`."""
    if replicas > 1:
        # Linear scaling: the per-replica batch stays as asked.
        log.info("%d replicas: global batch and learning rates x%d",
                 replicas, replicas)
        config = dataclasses.replace(
            config, batch_size=config.batch_size * replicas,
            head_batch_size=config.head_batch_size * replicas,
            learning_rate=config.learning_rate * replicas,
            fine_tune_learning_rate=config.fine_tune_learning_rate * replicas)
    return config


def _run_training(config, replicas, strategy=None):
    start = time.perf_counter()
    spec, size, canonical = check_config(config)
    # One run at a time per output folder: two would mix their files, and
    # run.json would vouch for files another run wrote.
    with locks.exclusive(os.path.join(config.output_dir, RUN_LOCK),
                         f"Waiting for the other run writing to "
                         f"{config.output_dir} to finish."):
        key = reuse.run_key(config, spec, size, canonical)
        if key is not None and config.reuse_outputs:
            reused = reuse.reuse_outputs(key, config, start)
            if reused is not None:
                return reused
        return _train(config, replicas, strategy, start, spec, size, canonical,
                      key)


def _train(config, replicas, strategy, start, spec, size, canonical, key):
    # Files this run writes are newer than this (less a coarse-clock margin).
    since_ns = time.time_ns() - 2 * 10**9
    timings = {}
    # Built first: a random initialisation then depends only on the seed,
    # not on how much randomness loading the data happened to use.
    with Phase("backbone", timings=timings):
        backbone_model = backbones.create_backbone(spec.name, config.weights,
                                                   size)
    data = run_data.load_data(config, size, timings)
    train, validation = data.train, data.validation
    log.info("%d classes, %d training and %d validation images",
             len(data.class_names), len(train), len(validation))
    check_free_space(os.path.expanduser(config.cache_dir),
                     estimate_cache_bytes(data, spec, size, config))
    extracted = extraction.extract_all(
        train, validation, backbone_model, spec, size, canonical, config, timings,
        strategy)
    val_x, train_views = extracted.validation, extracted.train_views
    cache_status, forwarded = extracted.status, extracted.forwarded
    # Rows in content-id order: the head then trains on the same sequence
    # whether the images came from loose files or prepared TFDS records.
    order = np.argsort(np.asarray(train.ids, dtype=object), kind="stable")
    train_x = np.concatenate([view[order] for view in train_views])
    train_y = np.tile(train.labels[order], len(train_views))
    val_y = validation.labels
    head = head_lib.build_head(spec.feature_dim, len(data.class_names),
                               head_config(config))
    tensorboard = keras.callbacks.TensorBoard(
        os.path.join(config.output_dir, "logs"), write_graph=False)
    with Phase("head", timings=timings):
        head_history = head_lib.train_head(
            head, (train_x, train_y), (val_x, val_y), head_config(config),
            callbacks=[EpochLogger("head", len(train_x)), tensorboard])
    stages = [("head", head_history.history)]
    # One pass over the cached validation features serves both the accuracy
    # and the end-of-run evaluation report.
    val_probs = head_lib.predict_head(head, val_x)
    val_accuracy = float(np.mean(val_probs.argmax(axis=1) == val_y))
    augmentation = augment_lib.make_augmentation(canonical, seed=config.seed)
    classifier = model_lib.build_classifier(backbone_model, head, augmentation)
    if config.fine_tune_epochs:
        stages.append(("fine_tune", fine_tune(
            classifier, backbone_model, spec, train, validation, size, config,
            timings, [tensorboard])))
        val_accuracy = float(stages[-1][1]["val_accuracy"][-1])
    with Phase("save", timings=timings):
        # Saved beside, then renamed: a kill never leaves a torn model.keras.
        tmp_model = os.path.join(config.output_dir, ".tmp-model.keras")
        classifier.save(tmp_model)
        os.replace(tmp_model, os.path.join(config.output_dir, "model.keras"))
        run_outputs.write_text(os.path.join(config.output_dir, "labels.txt"),
                    "\n".join(data.class_names) + "\n")
        run_outputs.write_history(os.path.join(config.output_dir, "history.csv"), stages)
        # Written now, beside the model it describes (predict reads its
        # resize mode): evaluation and exports can take long, or fail. The
        # final run.json adds what lets an identical run reuse the outputs.
        run_info = _run_info(config, spec, size, canonical, replicas,
                             strategy, data, extracted)
        run_outputs.write_json(os.path.join(config.output_dir, "run.json"),
                               run_info)
    if config.fine_tune_epochs:
        val_probs = None  # The backbone changed: evaluate from pixels.
    report = run_outputs.finish_run(classifier, data, size, config, timings, val_probs)
    timings["total"] = round(time.perf_counter() - start, 3)
    metrics = {
        "val_accuracy": val_accuracy,
        "num_train": len(train),
        "num_val": len(validation),
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        "skipped": [{"path": s.path, "reason": s.reason} for s in data.skipped],
        "timings_s": timings,
        "feature_cache": cache_status,
        "backbone_images_forwarded": forwarded,
        "features_cached": sum(s.cached for s in extracted.stats),
        "scan_cached": data.scan_cached,
        "image_size": size,
        "prepared_tfds": data.prepared_tfds,
        "outputs_reused": False,
        "run_key": key,
        **report,
    }
    run_outputs.write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    run_outputs.write_json(os.path.join(config.output_dir, "run.json"), {
        **run_info,
        **({} if key is None else
           reuse.record(key, config.output_dir, extracted, since_ns)),
    })
    log.info("val_accuracy=%.4f  feature_cache=%s  forwarded=%d  total=%.1fs",
             val_accuracy, cache_status, forwarded, timings["total"])
    return metrics


def _run_info(config, spec, size, canonical, replicas, strategy, data,
              extracted):
    """run.json's description of the run: settings, versions, split, keys."""
    return {
        "config": dataclasses.asdict(config),
        "resolved": {"backbone": spec.name, "image_size": size,
                     "augment": canonical,
                     "precision": keras.mixed_precision.global_policy().name,
                     "replicas": replicas,
                     "workers": distribute.workers_of(strategy).count,
                     "weights_identity": extracted.weights_identity},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version(),
                     "backend": keras.backend.backend()},
        "seed": config.seed,
        "split": {"file": data.split_file, "presplit": data.presplit,
                  "validation_split": config.validation_split,
                  "tfds_splits": data.tfds_splits},
        "cache_keys": {"features": extracted.digests},
    }
