"""EXIF orientation of JPEGs, read and applied inside the TensorFlow graph.

Phones store a photo as the sensor saw it and say how to turn it upright in
the EXIF Orientation tag (0x0112); TensorFlow's JPEG decoder ignores the tag
(as Keras' loaders do, tensorflow#8430), so portrait photos trained sideways.
`exif_orientation` finds the tag in the first 64 KiB of the bytes (the APP1
segment comes before the image data) with string ops only (no loop), and `upright`
applies it, so every route that decodes through `pipeline.decode_rgb` (the
scan, the prepared records, the loose-file pipeline, predict, evaluate,
export) sees the same upright pixels, in tf.data, in a `tf.function` and
eagerly.

Values, as in the EXIF standard (and PIL's `ImageOps.exif_transpose`):
1 as stored, 2 mirrored, 3 rotated 180, 4 flipped, 5 transposed, 6 rotated
90 clockwise, 7 transversed, 8 rotated 90 counter-clockwise; anything else
counts as 1.
"""

import tensorflow as tf

# Where the EXIF block must start: it precedes the image data.
_SCAN_BYTES = 65536
# IFD0 entries read at once: Orientation (0x0112) is among the first tags,
# which are sorted; 32 cover IFD0 of every camera seen.
_ENTRIES = 32
_PAD = b"\0" * (12 * _ENTRIES + 16)


def _reader(head):
    """`read(pos, k, little)`: the k-byte unsigned integer at `pos` (int64)."""
    size = tf.strings.length(head)

    def read(pos, k, little=None):
        pos = tf.clip_by_value(tf.cast(pos, tf.int32), 0, size - k)
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(head, pos, k),
                                       tf.uint8), tf.int64)
        powers = tf.constant([256 ** i for i in range(k)], tf.int64)
        big = tf.reduce_sum(raw * powers[::-1])
        if little is None:
            return big
        return tf.where(little, tf.reduce_sum(raw * powers), big)

    return read, size


def _exif_at(start):
    """Where `exif_orientation` looks for the EXIF block, in the first 32
    bytes (padded): (first segment, after a JFIF APP0)."""
    return start[6:12] == b"Exif\0\0", start[24:30] == b"Exif\0\0"


def may_turn(data):
    """Whether `exif_orientation` of these bytes (Python `bytes`) may be
    other than 1: False where it finds no EXIF block, so a decoder may skip
    the turn (the chunk decoder's JPEGs: 69 -> 27 us an image)."""
    return any(_exif_at(bytes(data[:32]) + _PAD[:32]))


def exif_orientation(data):
    """The EXIF Orientation (1-8) of JPEG bytes; 1 when there is none.

    The EXIF block is looked for where cameras and editors put it: the first
    segment (APP1, "Exif" at byte 6), or the one after a standard JFIF APP0
    ("Exif" at byte 24); elsewhere it is not seen. Loop-free, and a file
    without it costs four ops: measured in tf.data on 48-px JPEGs, graph
    `while_loop`s cost about 1 ms an image, a segment walk ~60 us, this ~5.

    Args:
      data: Scalar string tensor, an encoded file (only JPEGs carry it here).

    Returns:
      int32 scalar in [1, 8].
    """
    # As `_exif_at`, in TensorFlow.
    start = tf.strings.join([tf.strings.substr(data, 0, 32), _PAD[:32]])
    first = tf.equal(tf.strings.substr(start, 6, 6), b"Exif\0\0")
    after_jfif = tf.equal(tf.strings.substr(start, 24, 6), b"Exif\0\0")

    def parse():
        head = tf.strings.join([tf.strings.substr(data, 0, _SCAN_BYTES), _PAD])
        read, size = _reader(head)
        tiff = tf.where(first, tf.constant(12, tf.int64),
                        tf.constant(30, tf.int64))
        return _ifd_orientation(head, read, size, tiff)

    return tf.cond(first | after_jfif, parse, lambda: tf.constant(1, tf.int32))


def _ifd_orientation(head, read, size, tiff):
    """The Orientation entry of IFD0 of the TIFF block at `tiff` (or 1)."""
    little = tf.equal(tf.strings.substr(head, tf.cast(tiff, tf.int32), 2), b"II")
    ifd = tiff + read(tiff + 4, 4, little)
    count = read(ifd, 2, little)
    first = tf.clip_by_value(tf.cast(ifd + 2, tf.int32), 0,
                             size - 12 * _ENTRIES)
    entries = tf.reshape(tf.cast(tf.io.decode_raw(
        tf.strings.substr(head, first, 12 * _ENTRIES), tf.uint8), tf.int64),
        [_ENTRIES, 12])

    def short(column):
        lo, hi = entries[:, column], entries[:, column + 1]
        return tf.where(little, lo + 256 * hi, 256 * lo + hi)

    match = (tf.equal(short(0), 0x0112)
             & (tf.range(_ENTRIES, dtype=tf.int64) < count))
    found = tf.where(tf.reduce_any(match),
                     tf.gather(short(8), tf.argmax(tf.cast(match, tf.int32))),
                     tf.constant(1, tf.int64))
    valid = (found >= 1) & (found <= 8)
    return tf.cast(tf.where(valid, found, 1), tf.int32)


def upright(image, orientation):
    """`image` [H, W, C] turned as its EXIF `orientation` says (int32 scalar)."""
    transpose = lambda x: tf.transpose(x, [1, 0, 2])
    branches = [
        lambda: image,                                          # 1
        lambda: tf.reverse(image, [1]),                         # 2 mirrored
        lambda: tf.image.rot90(image, 2),                       # 3
        lambda: tf.reverse(image, [0]),                         # 4 flipped
        lambda: transpose(image),                               # 5
        lambda: tf.image.rot90(image, 3),                       # 6: 90 clockwise
        lambda: tf.image.rot90(transpose(image), 2),            # 7
        lambda: tf.image.rot90(image, 1),                       # 8: 90 counter
    ]
    index = tf.clip_by_value(orientation - 1, 0, 7)
    # The 8-way switch costs ~120 us an image in tf.data even for "as
    # stored"; the cond in front of it, nothing measurable.
    result = tf.cond(tf.equal(index, 0), lambda: image,
                     lambda: tf.switch_case(index, branches))
    result.set_shape([None, None, image.shape[-1]])
    return result
