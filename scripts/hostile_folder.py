r"""A photo folder assembled by someone hostile, and tlfast-train on it.

    python scripts/hostile_folder.py --source=../shared/assets/datasets/hymenoptera \
        --work_dir=/tmp/tlfast-hostile --weights=../shared/assets/weights/mobilenet_v1_0.25_224_no_top.weights.h5

Copies --source, adds to its first class folder every kind of file that
must never be read as a photo (a FIFO, a link to /dev/zero, links and a
class-folder link out of the folder, a decompression bomb hidden in an
animated GIF, forged and size-less headers, a file larger than its pixels)
and real photos in less common encodings (progressive and CMYK JPEG,
16-bit, grey and RGBA PNG, palette GIF, BMP, lossless and alpha WebP).
Then runs `tlfast-train` on it under `/usr/bin/time` and checks that every
hostile file was skipped with its reason, every photo was used, and the
peak RSS. Writes the result as JSON (--output). `tests/test_faults.py` adds
the same files to a tiny folder.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def _encode(image, fmt, **kwargs):
    """Encodes a uint8 array or a PIL image."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _photo(seed, size=(96, 128)):
    """A smooth, many-coloured image (no placeholder look), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]]
    base = np.stack([x * 2, y * 2, (x + y)], -1) % 256
    return np.clip(base + rng.integers(-20, 20, (*size, 3)), 0, 255).astype(np.uint8)


def add_hostile_files(folder, outside, bomb_frames=41, bomb_side=2000):
    """Writes hostile entries into `folder`; the private files into `outside`.

    Returns:
      {file name: a fragment of the reason it must be skipped with}.
    """
    from PIL import Image

    os.makedirs(outside, exist_ok=True)
    secret = os.path.join(outside, "id_rsa.jpg")
    with open(secret, "wb") as f:
        f.write(_encode(_photo(99), "JPEG"))
    os.makedirs(os.path.join(outside, "album"), exist_ok=True)
    with open(os.path.join(outside, "album", "x.jpg"), "wb") as f:
        f.write(_encode(_photo(98), "JPEG"))
    os.mkfifo(os.path.join(folder, "fifo.jpg"))
    os.symlink("/dev/zero", os.path.join(folder, "zero.jpg"))
    os.symlink(secret, os.path.join(folder, "secret.jpg"))
    os.symlink(os.path.join(outside, "album"), os.path.join(folder, "album"))
    # A decompression bomb: every frame of a GIF is decoded at canvas size.
    frames = [Image.new("L", (bomb_side, bomb_side), (i * 37) % 256)
              for i in range(bomb_frames)]
    frames[0].save(os.path.join(folder, "bomb.gif"), save_all=True,
                   append_images=frames[1:], duration=10)
    png = bytearray(_encode(_photo(1, (20, 20)), "PNG"))
    png[16:24] = (100_000).to_bytes(4, "big") * 2  # Claims 100000 x 100000.
    with open(os.path.join(folder, "forged.png"), "wb") as f:
        f.write(bytes(png))
    with open(os.path.join(folder, "sizeless.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + b"\0" * 4000)
    with open(os.path.join(folder, "padded.png"), "wb") as f:
        f.write(_encode(_photo(2, (10, 10)), "PNG") + b"\0" * (17 * 2**20))
    return {"fifo.jpg": "not a regular file (a FIFO",
            "zero.jpg": "outside the data folder",
            "secret.jpg": "outside the data folder",
            "album": "outside the data folder",
            "bomb.gif": "frames exceeds the limit",
            "forged.png": "100000x100000 pixels exceeds the limit",
            "sizeless.jpg": "does not state the image size",
            "padded.png": "file too large for its pixels"}


def add_uncommon_photos(folder, seed=0):
    """Real photos in less common encodings; returns their file names."""
    from PIL import Image

    image = _photo(seed)
    rgba = np.dstack([image, np.full(image.shape[:2], 180, np.uint8)])
    files = {
        "progressive.jpg": _encode(image, "JPEG", progressive=True),
        "cmyk.jpg": _encode(Image.fromarray(image).convert("CMYK"), "JPEG"),
        "grey.png": _encode(image[..., 0], "PNG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette.gif": _encode(Image.fromarray(image).convert(
            "P", palette=Image.ADAPTIVE), "GIF"),
        "plain.bmp": _encode(image, "BMP"),
        "lossless.webp": _encode(image, "WEBP", lossless=True),
        "alpha.webp": _encode(rgba, "WEBP"),
    }
    files["sixteen_bit.png"] = _encode(
        Image.fromarray(image[..., 0].astype(np.uint16) * 257), "PNG")
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    return sorted(files)


def main(argv):
    from absl import flags

    flags.DEFINE_string("source", None, "A real photo folder to copy.")
    flags.DEFINE_string("work_dir", "/tmp/tlfast-hostile", "Scratch folder.")
    flags.DEFINE_string("weights", "none", "Backbone weights.")
    flags.DEFINE_string("output", "benchmarks/results/hostile_folder.json",
                        "Result JSON.")
    flags.FLAGS(argv)
    f = flags.FLAGS
    shutil.rmtree(f.work_dir, ignore_errors=True)
    data = os.path.join(f.work_dir, "data")
    shutil.copytree(f.source, data)
    first = sorted(os.listdir(os.path.join(data, "train")))[0]
    target = os.path.join(data, "train", first)
    hostile = add_hostile_files(target, os.path.join(f.work_dir, "outside"))
    uncommon = add_uncommon_photos(target)
    out = os.path.join(f.work_dir, "run")
    command = ["/usr/bin/time", "-f", "peak_rss_kb=%M", sys.executable, "-m",
               "tlfast.train", f"--data_dir={data}", f"--output_dir={out}",
               f"--cache_dir={os.path.join(f.work_dir, 'cache')}",
               "--backbone=mobilenet_025", f"--weights={f.weights}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = int(done.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    skipped = {os.path.basename(s["path"]): s["reason"] for s in metrics["skipped"]}
    split = open(os.path.join(out, "split.csv"), encoding="utf-8").read()
    result = {
        "returncode": done.returncode, "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak / 1024), "val_accuracy": metrics["val_accuracy"],
        "hostile_skipped_with_reason": {
            name: fragment in skipped.get(name, "")
            for name, fragment in hostile.items()},
        "uncommon_photos_used": {name: f"/{name}" in split for name in uncommon},
        "other_skipped": {k: v for k, v in skipped.items() if k not in hostile},
    }
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(f.output) or ".", exist_ok=True)
    with open(f.output, "w", encoding="utf-8") as out_file:
        json.dump(result, out_file, indent=1)
    ok = (done.returncode == 0 and all(result["hostile_skipped_with_reason"].values())
          and all(result["uncommon_photos_used"].values()) and peak < 3 * 2**20)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
