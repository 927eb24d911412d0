"""Decoding a chunk of encoded images at once, without a tf.data pipeline.

Feature extraction asks for its images chunk by chunk (a feature shard at a
time). A tf.data pipeline per chunk paid ~155 ms to create its iterator
(instantiating the decode function's graph), about 300 us an image at 512
images a chunk, more than decoding them: 20,000 48-px JPEGs decoded at 455
us an image that way, 54 us here (a traced `map_fn` over slices of the chunk
in a thread per core; 224-px photos: 572 -> 220 us). The pixels are those of
`pipeline.decode_image`, the same function the pipelines map.

JPEGs without an EXIF block (known from their bytes before decoding) skip
`decode_image`'s format dispatch and EXIF turn, which cannot change them:
48-px JPEGs decode at 27 us an image that way on one thread, 89 through
`decode_image` (the conds of a while loop's body cost more than the decode).
"""

import concurrent.futures
import functools
import os

import numpy as np
import tensorflow as tf

from tlfast.data import headers
from tlfast.data import orientation
from tlfast.data import pipeline

# Slices per thread: with 2 a thread, 2 cores decoded 48-px JPEGs at 54 us
# an image against 63 with one (the next slice's set-up overlaps).
_SLICES_PER_THREAD = 2


@functools.lru_cache(maxsize=8)
def shared(image_size, resize):
    """The process's `ChunkDecoder` for (`image_size`, `resize`).

    Shared by the training and validation examples (and later runs in the
    same process): tracing and instantiating the decode function costs
    ~400 ms a decoder, 20 us an image of a 20k-image run.
    """
    return ChunkDecoder(image_size, resize)


class ChunkDecoder:
    """`pipeline.decode_image` over lists of encoded images, traced once.

    Args:
      image_size: Output side S.
      resize: One of `pipeline.RESIZE_MODES`.
      threads: Decoding threads (default: the CPU count).
    """

    def __init__(self, image_size, resize, threads=None):
        self.image_size, self.resize = image_size, resize
        self.threads = threads or os.cpu_count() or 1
        self._pool = None
        spec = tf.TensorSpec([image_size, image_size, 3], tf.uint8)

        def over_slice(decode):
            return tf.function(
                lambda data: tf.map_fn(decode, data, fn_output_signature=spec),
                input_signature=[tf.TensorSpec([None], tf.string)])

        self._decode = over_slice(
            lambda one: pipeline.decode_image(one, image_size, resize))
        self._decode_plain = over_slice(
            lambda one: pipeline.to_size(tf.io.decode_jpeg(one, channels=3),
                                         image_size, resize))

    def __call__(self, encoded):
        """uint8 [N, S, S, 3] of N encoded images (bytes), in order.

        Raises:
          tf.errors.InvalidArgumentError: An image does not decode.
        """
        size = self.image_size
        out = np.zeros((len(encoded), size, size, 3), np.uint8)
        plain = np.array([_plain_jpeg(e) for e in encoded], bool)
        jobs = []
        for decode, rows in ((self._decode_plain, np.flatnonzero(plain)),
                             (self._decode, np.flatnonzero(~plain))):
            if len(rows):
                jobs += [(decode, part) for part in np.array_split(
                    rows, self.threads * _SLICES_PER_THREAD) if len(part)]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="tlfast-decode")
        parts = self._pool.map(
            lambda job: job[0](tf.constant([encoded[i] for i in job[1]],
                                           tf.string)).numpy(), jobs)
        for (_, rows), pixels in zip(jobs, parts):
            out[rows] = pixels
        return out


def _plain_jpeg(data):
    """Whether `data` is a JPEG that `decode_image` would not turn."""
    return (headers.sniff_format(bytes(data[:16])) == "jpeg"
            and not orientation.may_turn(data))
