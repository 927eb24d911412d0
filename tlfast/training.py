"""The main job: validated data -> cached frozen features -> head -> [fine-tune] -> outputs.

`run_training(TrainConfig(...))` is the library entry point; `tlfast.train`
is the absl-flags script around it (it alone sets the precision policy and
the global seed). The settings are resolved once (`tlfast.resolve`) and the
run folder is written through `tlfast.run_folder`.
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
from tlfast import config as config_lib
from tlfast import distribute
from tlfast import extraction
from tlfast import head as head_lib
from tlfast import host_arrays
from tlfast import layer_rates
from tlfast import model as model_lib
from tlfast import progress
from tlfast import report as report_lib
from tlfast import resolve as resolve_lib
from tlfast import reuse
from tlfast import run_data
from tlfast import run_folder as run_folder_lib
from tlfast import run_outputs
from tlfast.config import TrainConfig  # noqa: F401  (the library's input)
from tlfast.data import augment as augment_lib
from tlfast.data import pipeline
from tlfast.progress import EpochLogger
from tlfast.progress import Phase
from tlfast.run_folder import RunFolder

log = logging.getLogger("tlfast")


def estimate_cache_bytes(data, run):
    """Disk the feature cache (and a spilled pixel cache) may need."""
    config, size = run.config, run.image_size
    itemsize = 2 if config.feature_dtype == "float16" else 4
    examples = len(data.train) * (run.views + 1) + len(data.validation)
    needed = examples * run.spec.feature_dim * itemsize
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


def fine_tune_schedule(learning_rate, num_train, batch_size, epochs):
    """Linear warm-up, then cosine decay to 0, over the fine-tuning steps.

    The warm-up (a fifth of the steps, one epoch at most) lets the unfrozen
    blocks start from the head's solution without large early updates, as
    Model Maker and fastai's one-cycle do.
    """
    steps = max(1, -(-num_train // batch_size)) * epochs
    warmup = max(1, min(steps // 5, -(-num_train // batch_size)))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - warmup), warmup_target=learning_rate,
        warmup_steps=warmup)


def fine_tune(classifier, backbone_model, run, data, timings, callbacks,
              class_weights=None, strategy=None):
    """Trains the top blocks end to end on the uint8 pixel pipeline.

    Warm-up + cosine learning rate, optionally lower a block down
    (`fine_tune_lr_decay`); with `patience`, early stopping on validation
    loss and the best epoch's weights restored. Under `multi_worker` each
    worker trains on its shard of the images (`tlfast.worker_fit`).

    Returns:
      The Keras history dict of the fine-tuning epochs.
    """
    config = run.config
    blocks = config.fine_tune_blocks
    if blocks is None:
        blocks = len(run.spec.blocks)
    trainable = backbones.unfreeze_top_blocks(backbone_model, run.spec, blocks)
    log.info("[fine_tune] %d layer(s) unfrozen in the top %d block(s)%s",
             len(trainable), blocks,
             f", rate x{config.fine_tune_lr_decay:g} a block down"
             if config.fine_tune_lr_decay < 1 else "")
    head_lib.compile_classifier(
        classifier, fine_tune_schedule(config.fine_tune_learning_rate,
                                       len(data.train), config.batch_size,
                                       config.fine_tune_epochs),
        config.label_smoothing, data.label_matrix,
        layer_rates.block_multipliers(backbone_model, run.spec,
                                      config.fine_tune_lr_decay))
    if config.patience:
        callbacks = [*callbacks, keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience,
            restore_best_weights=True)]
    pconfig = pipeline.PipelineConfig(
        image_size=run.image_size, batch_size=config.batch_size,
        resize=config.resize, ram_budget_mb=config.ram_budget_mb,
        cache_dir=run.cache_dir, seed=config.seed)
    train_config, val_config = split_ram_budget(pconfig, len(data.train),
                                                len(data.validation))
    workers = distribute.workers_of(strategy)
    logger = EpochLogger("fine_tune", len(data.train))
    if workers.count > 1:
        return _fine_tune_across_workers(
            classifier, strategy, workers, data, (train_config, val_config),
            config.fine_tune_epochs, [logger, *callbacks], class_weights,
            timings)
    train_ds = pipeline.to_supervised(data.train.pixels(train_config,
                                                        training=True))
    val_ds = pipeline.to_supervised(data.validation.pixels(val_config,
                                                           training=False))
    with Phase("fine_tune", timings=timings):
        history = classifier.fit(
            train_ds, validation_data=val_ds, epochs=config.fine_tune_epochs,
            verbose=0, callbacks=[logger, *callbacks],
            # The pipeline shuffles (`pipeline.finish`); Keras' own shuffle
            # does not apply to a tf.data input, and says so on the console.
            shuffle=False,
            class_weight=None if class_weights is None else dict(
                enumerate(class_weights.tolist())))
    return history.history


def _fine_tune_across_workers(classifier, strategy, workers, data, configs,
                              epochs, callbacks, class_weights, timings):
    """`fine_tune`'s training under multi_worker: each worker a shard and
    batch_size / workers images a step (the same global batch)."""
    from tlfast import worker_fit

    train_config, val_config = configs
    shard = (workers.index, workers.count)
    per_worker = max(1, train_config.batch_size // workers.count)
    train_ds = data.train.pixels(
        dataclasses.replace(train_config, batch_size=per_worker,
                            seed=train_config.seed + workers.index),
        training=True, shard=shard)
    val_ds = data.validation.pixels(val_config, training=False, shard=shard)
    steps = max(1, -(-len(data.train) // (per_worker * workers.count)))
    with Phase("fine_tune", timings=timings):
        return worker_fit.fit_across_workers(
            classifier, strategy, workers, train_ds, val_ds,
            steps_per_epoch=steps, epochs=epochs,
            callbacks=callbacks, class_weights=class_weights,
            label_matrix=data.label_matrix)


def kept_epoch(history, patience):
    """The 1-based epoch whose weights a stage kept.

    With early stopping (`patience` > 0) the one with the lowest validation
    loss (its weights are restored), else the last.
    """
    losses = history.get("val_loss") or []
    if patience and losses:
        return int(np.argmin(losses)) + 1
    return len(history.get("loss", losses))


def run_training(config):
    """Runs the whole job; see the module docstring.

    Args:
      config: A `TrainConfig`. Uses the Keras global dtype policy and seed
        as set by the caller (`config.precision` must be "auto" or the
        policy in force: see `tlfast.precision.check_policy`).

    Returns:
      The metrics dict also written to `<output_dir>/metrics.json`.
    """
    progress.ensure_visible()
    run = resolve_lib.resolve(config)
    strategy = distribute.make_strategy(config.distribution)
    replicas = distribute.num_replicas(strategy)
    workers = distribute.workers_of(strategy)
    scope, scale = distribute.strategy_scope(strategy), replicas
    if config.distribution == "multi_worker":
        # The workers shard the feature extraction, the heavy part, and meet
        # through the strategy's collectives; the head (seconds on cached
        # features) then trains on every worker alike, outside the strategy:
        # Keras 3's trainer cannot run under MultiWorkerMirroredStrategy
        # (tensorflow/tensorflow#72388). Fine-tuning shards the images and
        # all-reduces gradients in a loop of its own (`tlfast.worker_fit`).
        # Batch size and rate stay those of one process: a global batch is
        # split between the workers.
        scope, scale = contextlib.nullcontext(), 1
    run = dataclasses.replace(run.scaled(scale), replicas=replicas)
    if workers.is_chief:
        with scope:
            return _run(run, strategy)
    # Every worker runs the whole job (the collectives need all of them) but
    # only the chief's outputs are kept.
    scratch = tempfile.mkdtemp(prefix=f"tlfast-worker{workers.index}-")
    log.info("Worker %d of %d: outputs go to the scratch folder %s (deleted "
             "at the end); the chief writes %s", workers.index, workers.count,
             scratch, config.output_dir)
    try:
        with scope:
            return _run(run.with_output_dir(scratch), strategy)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(run, strategy=None):
    start = time.perf_counter()
    folder = RunFolder(run.config.output_dir)
    with folder.lock(run.config.lock_timeout):
        listing = run_data.list_folder(run.config)
        key = reuse.run_key(run, listing)
        if key is not None and run.config.reuse_outputs:
            reused = reuse.reuse_outputs(key, run, folder, start)
            if reused is not None:
                return reused
        return _train(run, folder, strategy, start, key, listing)


def _log_augmentation(run, num_train, extracted, timings):
    """One line saying what augmentation did to this run."""
    config = run.config
    if not run.augment:
        log.info("[augment] none")
    elif run.views:
        forwarded = sum(s.forwarded for s in extracted.stats[2:])
        log.info("[augment] %s: the head trains on %d augmented view(s) of "
                 "each of the %d training images besides the clean one "
                 "(%d computed now, %.1f s; cached for later runs)",
                 run.augment, run.views, num_train, forwarded,
                 timings.get("extract_views", 0.0))
    elif config.fine_tune_epochs:
        log.info("[augment] %s: in fine-tuning; the head trains on clean "
                 "features (--augment_views=K caches augmented ones)",
                 run.augment)
    else:
        log.info("[augment] %s: not used: the head trains on clean features "
                 "of %d images (more than %d: no augmented views by default); "
                 "pass --augment_views=K or --fine_tune_epochs=N",
                 run.augment, num_train, config_lib.AUTO_VIEWS_MAX_TRAIN)


def _lr_find(run, folder, train, num_classes, timings, label_matrix=None,
             rows=None):
    """--lr_find: the sweep's plot in the run folder and its suggestion logged."""
    from tlfast import plots

    with Phase("lr_find", timings=timings):
        rates, losses, suggested = head_lib.lr_find(
            run.spec.feature_dim, num_classes, train, run.head,
            label_matrix=label_matrix, rows=rows)
        plots.plot_lr_find(rates, losses, suggested,
                           folder.file(run_folder_lib.LR_FIND))
    log.info("[lr_find] suggested --learning_rate=%.2g (this run uses %.2g); "
             "plot: %s", suggested, run.head.learning_rate, run_folder_lib.LR_FIND)


def _class_weights(run, labels, num_classes):
    """float32 [C] weights for --class_weight=balanced, else None (logged)."""
    if run.config.class_weight != "balanced":
        return None
    weights = head_lib.balanced_class_weights(labels, num_classes)
    log.info("Class weights (balanced): %s", ", ".join(
        f"{w:.2f}" for w in weights))
    return weights


def _train_head(run, folder, data, extracted, timings, callbacks):
    """Trains the head on the cached features.

    Returns:
      (head, its history dict, validation probabilities float32 [N, C]).
    """
    train, val_x, views = data.train, extracted.validation, extracted.train_views
    # Rows in content-id order: the head then trains on the same sequence
    # whether the images came from loose files or prepared TFDS records.
    # Every view's rows index the views as stored (no copy of them).
    order = np.argsort(np.asarray(train.ids, dtype=object), kind="stable")
    rows = (np.arange(len(views), dtype=np.int32)[:, None] * len(train)
            + order.astype(np.int32)).ravel()
    train_x = views.reshape(-1, views.shape[-1])
    train_y = np.tile(train.labels[order], len(views))
    num_classes, matrix = len(data.outputs), data.label_matrix
    if run.config.lr_find:
        _lr_find(run, folder, (train_x, train_y), num_classes, timings, matrix,
                 rows)
    head = head_lib.build_head(run.spec.feature_dim, num_classes, run.head,
                               "softmax" if matrix is None else "sigmoid")
    with Phase("head", timings=timings):
        history = head_lib.train_head(
            head, (train_x, train_y), (val_x, data.validation.labels), run.head,
            callbacks=[EpochLogger("head", len(train_y), interval=2.0),
                       *callbacks],
            class_weights=_class_weights(run, train_y, num_classes),
            label_matrix=matrix, rows=rows)
    # One pass over the cached validation features serves both the accuracy
    # and the end-of-run evaluation report.
    return head, history.history, head_lib.predict_head(head, val_x)


def _train(run, folder, strategy, start, key, listing):
    # Files this run writes are newer than this (less a coarse-clock margin).
    since_ns = time.time_ns() - 2 * 10**9
    config, timings = run.config, {}
    # Built first: a random initialisation then depends only on the seed,
    # not on how much randomness loading the data happened to use.
    with Phase("backbone", timings=timings):
        backbone_model = backbones.create_backbone(run.spec.name, config.weights,
                                                   run.image_size)
    data = run_data.load_data(run, folder, timings, listing)
    log.info("%d classes, %d training and %d validation images",
             len(data.class_names), len(data.train), len(data.validation))
    run = dataclasses.replace(run, views=config.views_for(len(data.train)))
    check_free_space(run.cache_dir, estimate_cache_bytes(data, run))
    extracted = extraction.extract_all(data.train, data.validation,
                                       backbone_model, run, timings, strategy)
    # Extraction's freed batches would otherwise still count in the head's
    # peak (see `host_arrays.release_freed_memory`).
    host_arrays.release_freed_memory()
    _log_augmentation(run, len(data.train), extracted, timings)
    tensorboard = keras.callbacks.TensorBoard(folder.file("logs"),
                                              write_graph=False)
    head, head_history, val_probs = _train_head(run, folder, data, extracted,
                                                timings, [tensorboard])
    stages = [("head", head_history)]
    val_accuracy = _accuracy(data, val_probs)
    stage_results = {"head": {"val_accuracy": val_accuracy, "best_epoch":
                              kept_epoch(head_history, config.patience)}}
    classifier = model_lib.build_classifier(
        backbone_model, head,
        augment_lib.make_augmentation(run.augment, seed=config.seed))
    if config.fine_tune_epochs:
        head_only = classifier.get_weights()
        history = fine_tune(
            classifier, backbone_model, run, data, timings, [tensorboard],
            _class_weights(run, data.train.labels, len(data.class_names)),
            strategy)
        stages.append(("fine_tune", history))
        epoch = kept_epoch(history, config.patience)
        tuned = {"val_accuracy": float(history["val_accuracy"][epoch - 1]),
                 "best_epoch": epoch, "kept": True}
        head_loss = head_history["val_loss"][
            stage_results["head"]["best_epoch"] - 1]
        if config.patience and history["val_loss"][epoch - 1] >= head_loss:
            # The head alone generalised better (a small set, a too-high
            # rate): the model stays the head-only one.
            classifier.set_weights(head_only)
            tuned["kept"] = False
            log.info("[fine_tune] validation loss %.4f is no better than the "
                     "head's %.4f: the head-only model is kept",
                     history["val_loss"][epoch - 1], head_loss)
        else:
            val_accuracy = tuned["val_accuracy"]
            val_probs = None  # The backbone changed: evaluate from pixels.
        stage_results["fine_tune"] = tuned
    run_info = _run_info(run, strategy, data, extracted)
    with Phase("save", timings=timings):
        folder.write_model(classifier)
        folder.write_labels(data.outputs)
        folder.write_history(stages)
        # Written now, beside the model it describes (predict reads its
        # resize mode): evaluation and exports can take long, or fail. The
        # final run.json adds what lets an identical run reuse the outputs.
        folder.write_run_info(run_info)
    report = run_outputs.finish_run(classifier, data, run, folder, timings,
                                    val_probs)
    metrics = _metrics(data, extracted, val_accuracy, timings, key, report,
                       run.image_size)
    if data.label_names:
        run_info["resolved"]["multi_label_threshold"] = report.get(
            "evaluation", {}).get("threshold", 0.5)
    metrics["stages"] = stage_results
    metrics["augment_views"] = run.views
    with Phase("report", timings=timings):
        report_lib.write_run_report(folder, metrics, run_info)
    timings["total"] = round(time.perf_counter() - start, 3)
    folder.write_metrics(metrics)
    if key is not None:
        run_info.update(reuse.record(key, folder.path, extracted, since_ns))
    folder.write_run_info(run_info)
    log.info("val_accuracy=%.4f  feature_cache=%s  forwarded=%d  total=%.1fs",
             val_accuracy, extracted.status, extracted.forwarded,
             timings["total"])
    return metrics


def _accuracy(data, val_probs):
    """Validation accuracy of the head's probabilities float32 [N, C].

    Multi-label: per-label accuracy at 0.5, as the training curves show.
    """
    labels = data.validation.labels
    if data.label_matrix is None:
        return float(np.mean(val_probs.argmax(axis=1) == labels))
    return float(np.mean((val_probs >= 0.5) == (data.label_matrix[labels] > 0.5)))


def _metrics(data, extracted, val_accuracy, timings, key, report, size):
    """metrics.json of a run that trained."""
    return {
        "val_accuracy": val_accuracy,
        "num_train": len(data.train),
        "num_val": len(data.validation),
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        **({"multi_label": True, "label_names": list(data.label_names)}
           if data.label_names else {}),
        "skipped": [{"path": s.path, "reason": s.reason} for s in data.skipped],
        "timings_s": timings,
        "feature_cache": extracted.status,
        "backbone_images_forwarded": extracted.forwarded,
        "features_cached": sum(s.cached for s in extracted.stats),
        "scan_cached": data.scan_cached,
        "image_size": size,
        "prepared_tfds": data.prepared_tfds,
        "outputs_reused": False,
        "run_key": key,
        **report,
    }


def _run_info(run, strategy, data, extracted):
    """run.json's description of the run: settings, versions, split, keys."""
    config = run.config
    return {
        "config": dataclasses.asdict(config),
        "resolved": {"backbone": run.spec.name, "image_size": run.image_size,
                     "resize": config.resize, "augment": run.augment,
                     "precision": run.policy,
                     "replicas": run.replicas,
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
