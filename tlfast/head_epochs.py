"""Epochs of the head on features in memory, and its evaluation.

Two ways to run an epoch, giving the same steps: `compiled_epochs` (one
traced TensorFlow call an epoch, training and validation) where the
backend allows, else `epoch_on_batches` (Keras's `train_on_batch`) and
`evaluate`. `tlfast.head.train_head` picks one; features are read as
stored (float16 or float32) and cast a batch at a time.
"""

import contextlib

import keras
import numpy as np

from tlfast import host_arrays

# Rows per evaluation call: bounds the memory of [rows, classes] probabilities.
EVAL_CHUNK = 8192


@contextlib.contextmanager
def _epoch_metrics(model):
    """Makes `train_on_batch`/`test_on_batch` accumulate metrics over calls.

    Both reset the metrics at every call, which costs more than a step of a
    small head; inside this block they keep accumulating (sample-weighted),
    so the last call returns the means over all the calls made in it.

    Shadowing a public method on the instance, not public API: the public
    way (each call's own batch values, weighted by batch size in Python)
    measured 8% slower where this path runs (`benchmarks/run.py
    --modes=head` under JAX, 20,000 x 1280 features, batch 256, alternated
    twice: 78.1k/77.8k against 71.1k/71.8k steady features/s).
    """
    model.reset_metrics()
    model.reset_metrics = lambda: None  # Shadows the method on this instance.
    try:
        yield
    finally:
        del model.reset_metrics


def epoch_on_batches(head, x, y, rows, order, batch_size, class_weights=None):
    """One epoch of `train_on_batch` steps; the epoch's mean loss/accuracy."""
    with _epoch_metrics(head):
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            weights = None if class_weights is None else class_weights[y[batch]]
            out = head.train_on_batch(x[rows[batch]].astype(np.float32), y[batch],
                                      sample_weight=weights, return_dict=True)
    return {"loss": out["loss"], "accuracy": out["accuracy"]}


def float32_rows(features, start, size):
    """float32 rows [start, start + size) of features of any float dtype."""
    return np.asarray(features[start:start + size], np.float32)


def evaluate(head, x, y, batch_size=EVAL_CHUNK):
    """(loss, accuracy) over arrays, in few large batches."""
    with _epoch_metrics(head):
        for start in range(0, len(x), batch_size):
            out = head.test_on_batch(float32_rows(x, start, batch_size),
                                     y[start:start + batch_size],
                                     return_dict=True)
    return out["loss"], out["accuracy"]


def count_correct(labels, probs, label_matrix=None):
    """float32 scalar: the examples of a batch classified right (TensorFlow).

    Args:
      labels: int [B] class (or label-set) indices.
      probs: float [B, C] outputs.
      label_matrix: Multi-label (see `train_head`): per-label accuracy.
    """
    import tensorflow as tf

    if label_matrix is not None:
        from tlfast import multilabel

        return tf.reduce_sum(multilabel.correct_per_example(
            label_matrix, labels, probs))
    predicted = tf.cast(tf.argmax(probs, axis=-1), labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))


def compiled_epochs(head, x, y, rows, validation, batch_size,
                    class_weights=None, label_matrix=None):
    """One compiled TensorFlow call per epoch (training and validation), or None.

    `train_on_batch` costs a few milliseconds of Python per call, far more
    than a step of a small head; looping over the batches inside one traced
    function pays that once per epoch. The step is Keras's own (the
    compiled loss via `compute_loss`, `optimizer.scale_loss`/`apply`), so
    the results match the `train_on_batch` loop. Only for the TensorFlow
    backend outside a distribution strategy (replicas need `strategy.run`);
    elsewhere the caller keeps the loop.

    Returns:
      A function `order -> logs` (a dict of floats), or None.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.distribute.has_strategy():
        return None
    variables = head.trainable_variables
    optimizer = head.optimizer

    def correct(labels, probs):
        return count_correct(labels, probs, label_matrix)

    weights = None if class_weights is None else tf.constant(
        class_weights, tf.float32)

    def step(x, y, rows, order, start, loss_sum, correct_sum):
        batch = order[start:start + batch_size]
        # Gathered and cast per batch: the features stay as stored.
        xb = tf.cast(tf.gather(x, tf.gather(rows, batch)), tf.float32)
        yb = tf.gather(y, batch)
        sample_weight = None if weights is None else tf.gather(weights, yb)
        with tf.GradientTape() as tape:
            probs = head(xb, training=True)
            loss = head.compute_loss(x=xb, y=yb, y_pred=probs,
                                     sample_weight=sample_weight, training=True)
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, variables), variables)
        size = tf.cast(tf.shape(batch)[0], tf.float32)
        return (start + batch_size, loss_sum + tf.cast(loss, tf.float32) * size,
                correct_sum + correct(yb, probs))

    def validation_sums(vx, vy, start, loss_sum, correct_sum):
        # In chunks, as `evaluate`: probabilities of a large set times many
        # classes would not fit at once; the size-weighted sums of the
        # chunks' mean losses give the loss of the whole set.
        xb = tf.cast(vx[start:start + EVAL_CHUNK], tf.float32)
        yb = vy[start:start + EVAL_CHUNK]
        probs = head(xb, training=False)
        loss = head.compute_loss(x=xb, y=yb, y_pred=probs, training=False)
        size = tf.cast(tf.shape(yb)[0], tf.float32)
        return (start + EVAL_CHUNK, loss_sum + tf.cast(loss, tf.float32) * size,
                correct_sum + correct(yb, probs))

    def means(body, n, *data):
        zero = tf.constant(0.0)
        _, loss_sum, correct_sum = tf.while_loop(
            lambda start, *_: start < n,
            lambda *sums: body(*data, *sums), (tf.constant(0), zero, zero))
        n = tf.cast(n, tf.float32)
        return [loss_sum / n, correct_sum / n]

    # The arrays are arguments, not captured constants: a captured constant
    # stays referenced from TensorFlow's gradient registry (the optimizer's
    # all-reduce registers a custom gradient) and would never be freed.
    # Graph code without autograph: converting Keras's layers and optimizer
    # as well would add half again to the tracing, the bulk of the cost.
    @tf.function(autograph=False)
    def epoch(x, y, rows, order, *validation):
        logs = means(step, tf.shape(order)[0], x, y, rows, order)
        if validation:
            logs += means(validation_sums, tf.shape(validation[1])[0],
                          *validation)
        return tf.stack(logs)

    names = ["loss", "accuracy"]
    # The features in place where they are aligned (`host_arrays`): a copy
    # of every view would double the head's memory.
    arrays = [host_arrays.as_tensor(x), tf.convert_to_tensor(y),
              tf.convert_to_tensor(rows)]
    if validation is not None:
        names += ["val_loss", "val_accuracy"]
        arrays += [host_arrays.as_tensor(validation[0]),
                   tf.convert_to_tensor(validation[1])]

    def run(order):
        values = epoch(*arrays[:3], tf.constant(order, tf.int32),
                       *arrays[3:]).numpy()
        return {name: float(v) for name, v in zip(names, values)}

    return run
