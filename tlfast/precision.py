"""Mixed-precision policy selection.

Only scripts set the global policy (`keras.mixed_precision.set_global_policy`);
library code reads whatever is in force and keeps classifier outputs float32.
"""

import keras

from tlfast.config import PRECISIONS


def _gpu_compute_capability():
    """(major, minor) of the first GPU TensorFlow or JAX sees, else None."""
    if keras.backend.backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            return None
        capability = getattr(gpus[0], "compute_capability", "0.0")
        major, _, minor = str(capability).partition(".")
        try:
            return int(major), int(minor or 0)
        except ValueError:  # Not CUDA (e.g. ROCm's "gfx90a"): no bf16 rule.
            return (0, 0)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return details.get("compute_capability", (0, 0))


def resolve_precision(precision):
    """Turns a `--precision` value into a Keras dtype-policy name.

    "auto" gives "mixed_bfloat16" on GPUs with bf16 tensor cores (compute
    capability 8.0+), "mixed_float16" on older tensor-core GPUs (7.0+) and
    "float32" elsewhere: on a CPU, float16 math is emulated and slower.

    Args:
      precision: One of `PRECISIONS`.

    Returns:
      A policy name accepted by `keras.mixed_precision.set_global_policy`.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS}. Received: "
            f"precision={precision!r}")
    if precision != "auto":
        return precision
    capability = _gpu_compute_capability()
    if capability is None or capability < (7, 0):
        return "float32"
    return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"


def check_policy(precision):
    """The Keras global policy in force, checked against a `precision` setting.

    Only scripts set global state: `tlfast-train` sets the policy from its
    `--precision`; a library caller of `run_training` sets it itself (or
    leaves "auto", which trains with the policy in force).

    Args:
      precision: One of `PRECISIONS`.

    Returns:
      The policy name in force, e.g. "float32".

    Raises:
      ValueError: An explicit `precision` that is not the policy in force.
    """
    policy = keras.mixed_precision.global_policy().name
    if precision not in ("auto", policy):
        raise ValueError(
            f"precision={precision!r} but the Keras global dtype policy is "
            f"{policy!r}. Set it before training: keras.mixed_precision."
            f"set_global_policy(tlfast.resolve_precision({precision!r})) (as "
            "tlfast-train does), or pass precision='auto' to train with the "
            f"policy in force. Received: precision={precision!r}")
    return policy
