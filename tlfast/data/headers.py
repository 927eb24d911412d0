"""What an image file's header says, read safely: format, size, frame count.

The decompression-bomb guard of every route that decodes pixels (the scan,
the TFDS builder's records): before a byte is decoded, the file must be a
regular file (not a FIFO, device or socket: reading those hangs or never
ends), no larger than its pixels can explain, and its header must state a
size whose pixels (times frames, for an animated GIF: TensorFlow decodes
every frame) stay within `max_pixels`. A file whose header does not state
its size is refused, not decoded to find out.

    data = read_image_file(path, max_pixels)   # raises Refused(reason)
"""

import collections
import os
import stat
import struct

import numpy as np

# Enough for any header we parse: JPEG's size comes after its EXIF, XMP and
# ICC blocks (64 KiB each at most, a handful in a phone photo).
HEADER_BYTES = 2**20
# Encoded bytes a pixel can take: 16-bit RGBA PNG stored uncompressed is 8,
# plus room for metadata. Beyond that a file hides more than its pixels.
BYTES_PER_PIXEL = 8
METADATA_BYTES = 16 * 2**20
DECODABLE = ("jpeg", "png", "gif", "bmp", "webp")
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


ImageFile = collections.namedtuple(
    "ImageFile", "data format height width frames size mtime_ns")


class Refused(Exception):
    """A file that must not be decoded; `str(e)` is the reason."""


def file_kind(mode):
    """What a non-regular file is, in words (for skip reasons)."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def not_regular_reason(mode):
    return (f"not a regular file ({file_kind(mode)}): only image files are "
            "read; remove it from the folder")


def read_image_file(path, max_pixels):
    """The bytes of an image file, checked before anything is decoded.

    Opened non-blocking (a FIFO cannot hang the read) and checked with
    `fstat` on the open file, so a file swapped after a listing cannot slip
    through.

    Args:
      path: The file.
      max_pixels: Decoded pixels allowed (width x height x frames).

    Returns:
      An `ImageFile`: the bytes, the format name, (height, width, frames)
      from the header, and the size and mtime of the file that was read.

    Raises:
      Refused: With the reason: unreadable, not a regular file, empty, not
        a decodable image, too large, or a size the header does not state.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise Refused(f"cannot read file: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(not_regular_reason(st.st_mode))
        with os.fdopen(os.dup(fd), "rb") as f:
            # No more than the file holds: read(n) allocates n bytes first
            # (a 1 MiB buffer per 2 KB photo was half the scan's read time).
            header = f.read(min(HEADER_BYTES, st.st_size + 1))
            fmt, size = check_header(header, max_pixels)
            limit = size[0] * size[1] * size[2] * BYTES_PER_PIXEL + METADATA_BYTES
            if st.st_size > limit:
                raise Refused(
                    f"file too large for its pixels: {st.st_size} bytes for a "
                    f"{size[1]}x{size[0]} {fmt} (at most {limit} expected)")
            data = header + f.read(limit + 1 - len(header))
    except OSError as e:
        raise Refused(f"cannot read file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # Grew since the fstat.
        raise Refused("file grew while it was read; run again once it is stable")
    if fmt == "gif":
        size = check_gif_frames(data, max_pixels)
    return ImageFile(data, fmt, *size, len(data), st.st_mtime_ns)


def check_header(header, max_pixels):
    """Format and (height, width, 1) of an image from its first bytes.

    Raises:
      Refused: Not a decodable image, size not stated, or too many pixels.
    """
    if not header:
        raise Refused("empty file (0 bytes)")
    fmt = sniff_format(header[:32])
    if fmt is None:
        raise Refused("not an image (unrecognised file header)")
    if fmt not in DECODABLE:
        raise Refused(f"unsupported image format '{fmt}' (convert it to JPEG "
                      "or PNG)")
    size = _header_size(fmt, header)
    if size is None or min(size) < 1:
        raise Refused(
            f"the {fmt} header does not state the image size (truncated or "
            "forged?): refused unread (decompression-bomb guard)")
    _check_pixels(size[0], size[1], 1, max_pixels)
    return fmt, (size[0], size[1], 1)


def _check_pixels(height, width, frames, max_pixels):
    if height * width * frames > max_pixels:
        what = f"{width}x{height} pixels" + (
            f" x {frames} frames" if frames > 1 else "")
        raise Refused(f"image too large: {what} exceeds the limit of "
                      f"{max_pixels} (decompression-bomb guard; raise "
                      "--max_pixels to allow it)")


def _skip_sub_blocks(data, i):
    """Index after a GIF sub-block chain starting at `i` (its size byte)."""
    while True:
        n = data[i]
        i += 1 + n
        if n == 0:
            return i


def check_gif_frames(data, max_pixels):
    """(height, width, frames) of a whole GIF; refuses too many pixels.

    TensorFlow's GIF decoder decodes every frame at the canvas size, even
    when only the first is kept: 41 frames of 8000x8000 in a 6.4 MB file
    cost 3.4 GB. Counted from the block structure, without decoding.

    Raises:
      Refused: A structure that cannot be walked, or frames x canvas over
        `max_pixels`.
    """
    width, height = struct.unpack("<HH", data[6:10])
    frames, i = 0, 13
    try:
        if data[10] & 0x80:  # Global colour table.
            i += 3 * 2 ** ((data[10] & 0x07) + 1)
        while data[i] != 0x3B:  # Trailer.
            if data[i] == 0x21:  # Extension: label, then sub-blocks.
                i = _skip_sub_blocks(data, i + 2)
            elif data[i] == 0x2C:  # Image descriptor.
                frames += 1
                packed = data[i + 9]
                i += 10
                if packed & 0x80:  # Local colour table.
                    i += 3 * 2 ** ((packed & 0x07) + 1)
                i = _skip_sub_blocks(data, i + 1)  # After the LZW code size.
            else:
                raise IndexError
    except IndexError:
        if not frames:
            raise Refused("corrupt or truncated gif: its block structure "
                          "cannot be read") from None
        # A truncated last frame: the decoder says whether it is usable.
    _check_pixels(height, width, frames, max_pixels)
    return height, width, max(frames, 1)


def sniff_format(header):
    """Names the image format from the first bytes of a file.

    Args:
      header: At least the first 32 bytes of the file.

    Returns:
      "jpeg", "png", "gif", "bmp", "webp", or the name of a known format TF
      cannot decode ("tiff", "heic", ...), or None when unrecognised.
    """
    if header[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if header[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if header[:2] == b"BM":
        return "bmp"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if header[4:8] == b"ftyp":
        return "heic/avif"
    if header[:4] == b"%PDF":
        return "pdf"
    return None


def _webp_size(data):
    """(height, width) from the first chunk of a WebP file (RFC 9649)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # Lossy.
        w, h = struct.unpack("<HH", data[26:30])
        return h & 0x3FFF, w & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # Lossless.
        bits = struct.unpack("<I", data[21:25])[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # Extended: the canvas size.
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return h, w
    return None


def bmp_reason(data):
    """Why TF would decode a BMP wrongly (palette images), or None."""
    try:
        header_size, = struct.unpack("<I", data[14:18])
        if header_size < 40:  # OS/2 core header: left to the decoder.
            return None
        bits, = struct.unpack("<H", data[28:30])
        if bits > 8:
            return None
        if bits < 8:
            return (f"{bits}-bit BMP: TensorFlow cannot decode it (convert it "
                    "to PNG)")
        used = struct.unpack("<I", data[46:50])[0] or 256
        start = 14 + header_size
        palette = np.frombuffer(data[start:start + 4 * used], np.uint8)
        palette = palette.reshape(-1, 4)[:, :3]
    except (struct.error, ValueError):
        return None  # Malformed: the decoder says how.
    # TF reads the colour indices as grey levels: right only for a grey
    # palette whose entry i is (i, i, i).
    if np.array_equal(palette, np.repeat(np.arange(len(palette))[:, None], 3, 1)):
        return None
    return ("palette BMP (8-bit colour table): TensorFlow would read its "
            "colour indices as grey levels (convert it to PNG)")


def webp_reason(data):
    """Animated WebP, which TensorFlow does not decode, or None."""
    if data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x02:
        return ("animated WebP: TensorFlow decodes only still WebP images "
                "(convert it to GIF, or its first frame to PNG)")
    return None


# JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which
# carry the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data):
    """(height, width) from a JPEG's frame header, walking its segments."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # Fill byte.
            i += 1
            continue
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return h, w
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # No length field.
            i += 2
            continue
        length, = struct.unpack(">H", data[i + 2:i + 4])
        i += 2 + length
    return None


def _header_size(fmt, data):
    """(height, width) from the header, or None when it does not say."""
    try:
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "png":
            w, h = struct.unpack(">II", data[16:24])
            return h, w
        if fmt == "gif":
            w, h = struct.unpack("<HH", data[6:10])
            return h, w
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(h), abs(w)
        if fmt == "webp":
            return _webp_size(data)
    except struct.error:
        return None
    return None
