"""tf.distribute strategies for training (TensorFlow backend).

- `mirrored` replicates the model on every local GPU (or the CPU when there
  is none) and splits each global batch between them.
- `multi_worker` (`MultiWorkerMirroredStrategy`) does the same across
  machines described by the `TF_CONFIG` environment variable; every worker
  runs the same command. Feature extraction is sharded: each worker forwards
  its part of the examples into the shared feature cache, then all read the
  whole cache. The chief writes the outputs; the others write to a scratch
  folder that is deleted.
- `tpu` (`TPUStrategy`) connects to the TPU named by `TPU_NAME` (or the
  local one).

Batch size and learning rate scale with the number of replicas, the usual
linear-scaling rule.
"""

import contextlib
import dataclasses
import json
import os

import keras

from tlfast.config import DISTRIBUTIONS


def check_distribution(name):
    """Validates a `--distribution` value for this backend; returns it."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}. "
                         f"Received: distribution={name!r}")
    if name != "none" and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "tf.distribute strategies need the TensorFlow backend; with "
            f"KERAS_BACKEND={keras.backend.backend()} use distribution=none. "
            f"Received: distribution={name!r}")
    if name == "multi_worker":
        cluster_from_env()
    return name


def cluster_from_env():
    """The cluster and task of `TF_CONFIG`, checked.

    Returns:
      (cluster dict, task dict).

    Raises:
      ValueError: `TF_CONFIG` is unset, not JSON, or names no worker or no
        task of this process.
    """
    text = os.environ.get("TF_CONFIG", "")
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not text:
        raise ValueError(
            "distribution='multi_worker' needs the TF_CONFIG environment "
            "variable: the cluster's workers and this process's task, e.g. "
            f"TF_CONFIG='{example}' (the same command runs on every worker, "
            "each with its own task index). Received: TF_CONFIG unset")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        if not (isinstance(cluster, dict) and isinstance(task, dict) and all(
                isinstance(addresses, list)
                and all(isinstance(a, str) for a in addresses)
                for addresses in cluster.values())):
            raise TypeError("cluster must map task types to lists of "
                            "addresses, and task must be an object")
        workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
        index = int(task["index"])
        kind = task["type"]
        if not workers or kind not in ("chief", "worker") or not (
                0 <= index < len(cluster[kind])):
            raise ValueError("no such task")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            "TF_CONFIG must be JSON with a cluster of 'worker' (and optionally "
            "one 'chief') addresses and this process's task, e.g. "
            f"'{example}' ({e}). Received: TF_CONFIG={text!r}") from None
    return cluster, task


@dataclasses.dataclass(frozen=True)
class Workers:
    """This process's place among the workers of a job.

    Attributes:
      index: 0 for the chief, then the other workers in order.
      count: Number of worker processes (1 without multi_worker).
    """

    index: int = 0
    count: int = 1

    @property
    def is_chief(self):
        return self.index == 0


def workers_of(strategy):
    """The `Workers` of `strategy` (one worker unless multi_worker)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return Workers()
    cluster, task = cluster_from_env()
    chiefs = len(cluster.get("chief", []))
    index = int(task["index"]) + (0 if task["type"] == "chief" else chiefs)
    return Workers(index, chiefs + len(cluster.get("worker", [])))


def local_cluster(count):
    """`TF_CONFIG` values for a `multi_worker` job of `count` processes on
    this machine, one JSON string per worker (index 0 is the chief), on
    loopback ports that are free now: for trying multi_worker on one host
    (the tests and `benchmarks/multi_worker_check.py`)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        workers = [f"localhost:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return [json.dumps({"cluster": {"worker": workers},
                        "task": {"type": "worker", "index": index}})
            for index in range(count)]


def make_strategy(name):
    """The strategy for `name`, or None for "none".

    Raises:
      ValueError: see `check_distribution`.
      RuntimeError: `tpu` without a reachable TPU.
    """
    check_distribution(name)
    if name == "none":
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        # Reads TF_CONFIG; must come before any other TensorFlow op runs.
        return tf.distribute.MultiWorkerMirroredStrategy()
    tpu = os.environ.get("TPU_NAME", "")
    if not tpu and not tf.config.list_physical_devices("TPU"):
        # The resolver would wait for a cloud metadata server that is not
        # there; say at once what is missing.
        raise RuntimeError(
            "distribution='tpu' found no TPU: this machine has no TPU device "
            "and TPU_NAME is unset. Run on a TPU VM, or set TPU_NAME to the "
            "TPU's name or grpc:// address; elsewhere use "
            "distribution='mirrored' or 'none'.")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"distribution='tpu' found no TPU ({type(e).__name__}: {e}). Run on "
            "a TPU VM, or set TPU_NAME to the TPU's name or grpc:// address; "
            "elsewhere use distribution='mirrored' or 'none'.") from e
    return tf.distribute.TPUStrategy(resolver)


def strategy_scope(strategy):
    """`strategy.scope()`, or a no-op context without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def num_replicas(strategy):
    return 1 if strategy is None else strategy.num_replicas_in_sync


def all_sum(strategy, value):
    """Sum of numbers over the workers; also a barrier (all must call it).

    Args:
      strategy: A tf.distribute strategy, or None.
      value: This worker's number (int or float), or a float array.

    Returns:
      The sum over workers: a float (or float64 array of `value`'s shape);
      `value` itself without a strategy.
    """
    if strategy is None:
        return value
    import numpy as np
    import tensorflow as tf

    # Each worker's local replicas share its value: each contributes a share.
    local = max(1, strategy.num_replicas_in_sync // workers_of(strategy).count)
    share = tf.constant(np.asarray(value, np.float64) / local)
    per_replica = strategy.run(lambda: tf.identity(share))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                            axis=None).numpy()
    return float(total) if np.ndim(value) == 0 else total
