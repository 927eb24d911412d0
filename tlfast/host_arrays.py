"""Host memory: arrays TensorFlow reads without copying them, and freed
memory given back between phases.

The head trains on every cached feature at once. `tf.convert_to_tensor` of
a NumPy array copies it: at 160k training images, three views of 256
float16 features are 246 MB, and the copy doubled that at the peak (the
NumPy array is still referenced by the run). TensorFlow can instead wrap
the NumPy buffer through DLPack, if the buffer is aligned as TensorFlow's
CPU kernels require (64 bytes: an unaligned one aborts the process in
`Tensor::CheckAligned`), which NumPy does not promise. `zeros` allocates
such a buffer; `as_tensor` wraps it, or copies anything else.
"""

import ctypes
import ctypes.util
import mmap

import numpy as np

# EIGEN_MAX_ALIGN_BYTES of TensorFlow's CPU builds.
ALIGNMENT = 64


def zeros(shape, dtype):
    """A zero-filled C-contiguous array whose data is `ALIGNMENT`-aligned.

    Fresh anonymous pages (page-aligned), touched only when written, so
    memory grows as the array fills. `np.zeros` (calloc) may instead carve
    the array out of the heap's free top, dirty from an earlier phase, and
    clear it all at once: at 200k images the 3 views' 234 MiB array came
    out ~150 MiB resident before a feature was written.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes)  # Anonymous: zeros, read-write.
    return np.frombuffer(pages, dtype, count=nbytes // dtype.itemsize).reshape(
        shape)


def is_aligned(array):
    """Whether TensorFlow can wrap `array` (C-contiguous, aligned data)."""
    return (isinstance(array, np.ndarray) and array.flags.c_contiguous
            and array.ctypes.data % ALIGNMENT == 0 and array.size > 0)


def as_tensor(array):
    """A `tf.Tensor` of `array`: its own buffer when `is_aligned` (the
    tensor keeps it alive, and sees later writes), else a copy."""
    import tensorflow as tf

    if is_aligned(array) and array.dtype != object:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array)


def release_freed_memory():
    """Gives the C heap's freed pages back to the OS, where glibc can.

    TensorFlow's CPU tensors come from malloc; what a phase frees stays in
    the process (glibc keeps freed chunks below its adaptive mmap threshold,
    up to 32 MB, in its arenas), so the next phase's peak RSS counts the
    last phase's temporaries too. Measured at 200k 32-px images: extracting
    2 augmented views left ~20 MB of freed batch buffers behind, on top of
    the views' 156 MiB. Returns whether `malloc_trim` was called.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(0)
    return True
