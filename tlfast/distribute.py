"""tf.distribute strategies for training (TensorFlow backend).

`mirrored` replicates the model on every local GPU (or the CPU when there is
none) and splits each global batch between them; batch size and learning
rate scale with the number of replicas, the usual linear-scaling rule.
"""

import contextlib

import keras

DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "tpu")


def check_distribution(name):
    """Validates a `--distribution` value for this backend; returns it."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}. "
                         f"Received: distribution={name!r}")
    if name in ("multi_worker", "tpu"):
        raise ValueError(
            f"distribution={name!r} is not supported yet; use 'mirrored' for "
            "several local GPUs or the tf.data service for input scale-out. "
            f"Received: distribution={name!r}")
    if name != "none" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "tf.distribute strategies need the TensorFlow backend; with "
            f"KERAS_BACKEND={keras.backend.backend()} use distribution=none. "
            f"Received: distribution={name!r}")
    return name


def make_strategy(name):
    """The strategy for `name`, or None for "none"."""
    check_distribution(name)
    if name == "none":
        return None
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op context without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def num_replicas(strategy):
    return 1 if strategy is None else strategy.num_replicas_in_sync
