"""tlfast.host_arrays: aligned arrays TensorFlow wraps without a copy."""

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from tlfast import host_arrays


def test_zeros_are_aligned_zero_and_shaped():
    for dtype in ("float16", "float32", "int32"):
        a = host_arrays.zeros((3, 5, 7), dtype)
        assert a.shape == (3, 5, 7) and a.dtype == dtype and not a.any()
        assert host_arrays.is_aligned(a)
        assert host_arrays.is_aligned(a.reshape(-1, 7))  # A view, in place.


def test_an_aligned_array_is_wrapped_in_place_and_kept_alive():
    a = host_arrays.zeros((4, 8), "float16")
    tensor = host_arrays.as_tensor(a)
    a[1, 2] = 5  # Written after wrapping: the tensor sees it.
    assert tensor.dtype == tf.float16 and float(tensor[1, 2]) == 5.0
    del a
    gc.collect()
    assert float(tf.reduce_sum(tf.cast(tensor, tf.float32))) == 5.0
    gathered = tf.function(lambda x, i: tf.gather(x, i))(tensor, [1, 1])
    assert float(gathered[0, 2]) == 5.0


def test_anything_else_is_copied():
    unaligned = np.zeros(65, np.uint8)[1:].view("float32")  # 1 byte off.
    strided = np.zeros((4, 8), "float32")[:, ::2]
    for array in (unaligned, strided):
        assert not host_arrays.is_aligned(array)
        tensor = host_arrays.as_tensor(array)
        array[0] = 3
        assert tensor.numpy().flat[0] == 0  # A copy from before the write.


_TRIM = textwrap.dedent("""
    import numpy as np
    from tlfast import host_arrays

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    # 64 chunks of 1 MiB from the heap (a freed 8 MiB block has raised
    # glibc's mmap threshold), below one that stays: freed, they stay in
    # the process until trimmed.
    big = np.ones(8 * 2**20, np.uint8)
    del big
    chunks = [np.ones(2**20, np.uint8) for _ in range(64)]
    pin = np.ones(2**20, np.uint8)
    del chunks
    before = rss_mib()
    trimmed = host_arrays.release_freed_memory()
    print(trimmed, before, rss_mib(), bool(pin.all()))
""")


def test_freed_memory_goes_back_where_glibc_can():
    # In a fresh interpreter: a long test process's heap (other tests'
    # arenas, an mmap threshold already adapted) says nothing definite.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _TRIM], capture_output=True,
                         text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=repo)).stdout.split()
    trimmed, before, after, pinned = out
    assert pinned == "True"
    if trimmed == "True":  # Else not glibc: nothing to give back this way.
        assert float(after) < float(before) - 32
