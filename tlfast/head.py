"""The classification head, trained on cached features in memory.

The head is float32 whatever the global policy: it is tiny, and its softmax
must not saturate in float16.
"""

import keras
import numpy as np

from tlfast import epoch_loop
from tlfast import head_epochs
from tlfast.config import HeadConfig


def build_head(feature_dim, num_classes, config=HeadConfig(),
               activation="softmax"):
    """Builds the head: [Dropout -> Dense(relu)] -> Dropout -> Dense(softmax).

    Args:
      feature_dim: Size of the pooled backbone features.
      num_classes: Number of classes (>= 2), or of labels (multi-label).
      config: A `HeadConfig`.
      activation: "softmax" (one class an image) or "sigmoid" (multi-label).

    Returns:
      A `keras.Sequential` named "head" mapping float [B, feature_dim] to
      float32 class probabilities [B, num_classes].
    """
    seed = config.seed
    layers = [keras.Input((feature_dim,), name="features")]
    if config.hidden_units:
        layers += [
            keras.layers.Dropout(config.dropout, seed=seed, dtype="float32",
                                 name="head_dropout_hidden"),
            keras.layers.Dense(
                config.hidden_units, activation="relu", dtype="float32",
                kernel_initializer=keras.initializers.HeNormal(seed),
                name="head_hidden"),
        ]
    layers += [
        keras.layers.Dropout(config.dropout, seed=seed + 1, dtype="float32",
                             name="head_dropout"),
        keras.layers.Dense(
            num_classes, activation=activation, dtype="float32",
            kernel_initializer=keras.initializers.GlorotUniform(seed + 2),
            name="predictions"),
    ]
    return keras.Sequential(layers, name="head")


@keras.saving.register_keras_serializable(package="tlfast")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing, on integer labels.

    Smoothing needs one-hot targets; this keeps integer labels in the
    pipeline. A registered class rather than a closure, so that a saved,
    compiled model loads with `keras.models.load_model` (after `import
    tlfast`).
    """

    def __init__(self, num_classes, label_smoothing=0.0,
                 name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = keras.ops.one_hot(
            keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"),
            self.num_classes)
        return keras.losses.categorical_crossentropy(
            y_true, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}


def compile_classifier(model, learning_rate, label_smoothing=0.0,
                       label_matrix=None, rate_multipliers=None):
    """Compiles a classifier with Adam and (sparse) categorical cross-entropy.

    With `label_matrix` (multi-label: float [label sets, labels], see
    `tlfast.multilabel`): binary cross-entropy and per-label accuracy, on
    the same integer (label-set) targets. With `rate_multipliers`
    ({variable path: factor}): per-variable rates
    (`tlfast.layer_rates.LayerwiseAdam`).
    """
    if rate_multipliers:
        from tlfast import layer_rates

        optimizer = layer_rates.LayerwiseAdam(rate_multipliers,
                                              learning_rate=learning_rate)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if label_matrix is not None:
        from tlfast import multilabel

        model.compile(
            optimizer=optimizer,
            loss=multilabel.SetCrossentropy(label_matrix, label_smoothing),
            metrics=[multilabel.SetAccuracy(label_matrix)])
        return model
    if label_smoothing:
        loss = SmoothedSparseCrossentropy(model.output_shape[-1], label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=optimizer, loss=loss,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


class _History:
    def __init__(self):
        self.history = {}


def predict_head(head, features, batch_size=head_epochs.EVAL_CHUNK):
    """Class probabilities of the head, float32 [N, num_classes].

    Direct calls on a few large chunks: `predict` would build an input
    pipeline and trace a function for what is one small matrix product.

    Args:
      head: From `build_head`.
      features: float [N, feature_dim] (float16 ones cast a chunk at a time).
      batch_size: Rows per call (bounds memory).
    """
    chunks = [keras.ops.convert_to_numpy(head(
                  head_epochs.float32_rows(features, i, batch_size),
                  training=False))
              for i in range(0, len(features), batch_size)]
    if not chunks:
        return np.zeros((0, head.output_shape[-1]), np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _check_examples(name, x, y, rows=None):
    if x.ndim != 2 or len(x) == 0 or len(y) != (len(x) if rows is None
                                                 else len(rows)):
        hint = " (pass validation=None to train without one)" if name == "validation" else ""
        raise ValueError(
            f"{name} must be (features [N, D], labels [N]) with N >= 1{hint}. "
            f"Received: {name} features of shape {x.shape} and labels of "
            f"shape {y.shape}")
    if rows is not None and len(rows) and (rows.min() < 0
                                           or rows.max() >= len(x)):
        raise ValueError(
            f"rows must index the {len(x)} feature rows. Received: rows from "
            f"{rows.min()} to {rows.max()}")


def _features(x):
    """float16/float32 features as they are (no copy), others as float32."""
    x = np.asarray(x)
    return x if x.dtype in (np.float16, np.float32) else x.astype(np.float32)


def _training_examples(train, rows):
    """(features [N, D] float16/32, labels int32 [M], rows int32 [M])."""
    x = _features(train[0])
    y = np.asarray(train[1], np.int32)
    rows = (np.arange(len(x), dtype=np.int32) if rows is None
            else np.asarray(rows, np.int32))
    _check_examples("train", x, y, rows)
    return x, y, rows


# Optimizer steps a head trains for at the least, and an epoch has: with
# 256-example batches a 244-image folder (hymenoptera) made one step an
# epoch, so the default 50 epochs were 50 steps (validation accuracy still
# rising) and --epochs=3 ended at chance (0.49). Smaller sets get smaller
# batches instead (8 at the least). Measured on hymenoptera and flowers224
# (MobileNet-0.25 features): 10 steps an epoch keeps flowers224's 256
# batches (0.8655; 20 or 40 steps an epoch gave 0.858 / 0.847) and gives
# hymenoptera 0.8954 at 50 epochs; 100 steps in all lift --epochs=3 from
# 0.82 (30 steps) to 0.86.
MIN_STEPS_PER_EPOCH = 10
MIN_STEPS = 100


def step_batch_size(num_examples, batch_size, epochs):
    """The batch size `train_head` uses for `num_examples` over `epochs`.

    `batch_size`, or smaller (down to 8) so that an epoch has
    `MIN_STEPS_PER_EPOCH` steps and the whole training `MIN_STEPS`.
    """
    steps = max(MIN_STEPS_PER_EPOCH, -(-MIN_STEPS // max(epochs, 1)))
    return max(1, min(batch_size, max(8, -(-num_examples // steps))))


def balanced_class_weights(labels, num_classes):
    """Inverse-frequency weights float32 [C]: n / (C * n_c); 0 for absent classes.

    With them every class weighs as much in the loss as a balanced set's
    would (Keras' and scikit-learn's "balanced").
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    weights = np.zeros(num_classes, np.float32)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def train_head(head, train, validation=None, config=HeadConfig(), callbacks=(),
               class_weights=None, label_matrix=None, rows=None):
    """Fits the head on in-memory features.

    An epoch loop of its own instead of `fit`: on a few thousand cached
    vectors, `fit`'s per-epoch set-up (iterators, validation) costs more
    than the training itself. With TensorFlow each epoch is one compiled
    call; otherwise `train_on_batch` per step. Keras callbacks still see
    every epoch.

    Args:
      head: From `build_head`.
      train: (features float16/float32 [N, D], labels int [M]); used as
        they are (no float32 copy; aligned ones in place, see
        `tlfast.host_arrays`).
      validation: Optional (features, labels) for validation and early
        stopping (on validation loss, best weights restored); the features
        used as the training ones are.
      config: A `HeadConfig`; `seed` also seeds the shuffling.
      callbacks: Extra Keras callbacks (progress, TensorBoard). Only their
        train and epoch hooks run, with the epoch logs; no batch hooks.
      class_weights: Optional float [C]: each training example's loss is
        weighted by its class's entry (see `balanced_class_weights`).
        Validation loss (early stopping) stays unweighted, as in `fit`.
      label_matrix: Multi-label: float [label sets, labels] (labels then
        index its rows; the head ends in a sigmoid per label).
      rows: Optional int [M]: example i is `features[rows[i]]` (several
        views of a set served from one array); None: M = N, in order.

    Returns:
      An object whose `.history` maps "loss", "accuracy" (and "val_loss",
      "val_accuracy") to per-epoch lists, like `keras.callbacks.History`.
    """
    compile_classifier(head, config.learning_rate, config.label_smoothing,
                       label_matrix)
    # Optimizer slots created inside the first step would make TensorFlow
    # trace the step function twice; creating them up front saves that.
    head.optimizer.build(head.trainable_variables)
    callbacks = list(callbacks)
    if validation is not None and config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience,
            restore_best_weights=True))
    x, y, rows = _training_examples(train, rows)
    if validation is not None:
        vx = _features(validation[0])
        vy = np.asarray(validation[1], np.int32)
        _check_examples("validation", vx, vy)
    batch_size = step_batch_size(len(y), config.batch_size, config.epochs)
    if class_weights is not None:
        class_weights = np.asarray(class_weights, np.float32)
    run_epoch = head_epochs.compiled_epochs(
        head, x, y, rows, None if validation is None else (vx, vy),
        batch_size, class_weights, label_matrix)
    rng = np.random.default_rng(config.seed)

    def epoch_logs(epoch):
        order = rng.permutation(np.arange(len(y), dtype=np.int32))
        if run_epoch:
            return run_epoch(order)
        logs = head_epochs.epoch_on_batches(head, x, y, rows, order,
                                            batch_size, class_weights)
        if validation is not None:
            logs["val_loss"], logs["val_accuracy"] = head_epochs.evaluate(
                head, vx, vy)
        return logs

    history = _History()
    history.history = epoch_loop.run_epochs(
        head, callbacks, config.epochs, -(-len(y) // batch_size), epoch_logs)
    return history


def lr_find(feature_dim, num_classes, train, config=HeadConfig(),
            start=1e-5, stop=1.0, steps=100, label_matrix=None, rows=None):
    """A learning-rate sweep for the head, on cached features (fastai's lr_find).

    A fresh head takes `steps` optimizer steps on shuffled batches while the
    rate grows exponentially from `start` to `stop`; the loss of each step is
    recorded (smoothed) and the sweep stops once it explodes. The suggested
    rate is where the smoothed loss falls fastest before its minimum, the
    usual rule.

    Args:
      feature_dim, num_classes: As for `build_head`.
      train: (features [N, D], labels int [M]), as for `train_head`.
      config: The head's `HeadConfig` (its rate is not used).
      start, stop: The sweep's first and last rate.
      steps: Optimizer steps.
      label_matrix: Multi-label, as for `train_head`.
      rows: As for `train_head`.

    Returns:
      (rates float [n], smoothed losses float [n], suggested rate).
    """
    x, y, rows = _training_examples(train, rows)
    head = build_head(feature_dim, num_classes, config,
                      "softmax" if label_matrix is None else "sigmoid")
    compile_classifier(head, start, config.label_smoothing, label_matrix)
    rng = np.random.default_rng(config.seed)
    batch = step_batch_size(len(y), config.batch_size, config.epochs)
    rates = start * (stop / start) ** (np.arange(steps) / max(steps - 1, 1))
    losses, smooth, best = [], 0.0, np.inf
    for i, rate in enumerate(rates):
        head.optimizer.learning_rate.assign(float(rate))
        chosen = rng.choice(len(y), size=min(batch, len(y)), replace=False)
        loss = float(head.train_on_batch(
            x[rows[chosen]].astype(np.float32), y[chosen],
            return_dict=True)["loss"])
        smooth = 0.9 * smooth + 0.1 * loss
        losses.append(smooth / (1 - 0.9 ** (i + 1)))  # Bias-corrected.
        best = min(best, losses[-1])
        if not np.isfinite(losses[-1]) or losses[-1] > 4 * best:
            break
    rates, losses = rates[:len(losses)], np.asarray(losses)
    # Steepest fall between the noisy first tenth and the lowest loss, on
    # a 5-step moving average (without both, hymenoptera's sweep suggested
    # 1.4e-5, its first wiggle; its loss falls fastest near 1e-2).
    lo, hi = max(1, len(losses) // 10), int(np.argmin(losses))
    if hi - lo < 4:
        return rates, losses, float(rates[hi] / 10)
    segment = np.convolve(losses[lo:hi + 1], np.ones(5) / 5, mode="valid")
    slope = np.gradient(segment, np.log(rates[lo + 2:hi - 1]))
    return rates, losses, float(rates[lo + 2 + int(np.argmin(slope))])
