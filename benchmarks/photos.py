"""Synthetic photo folders for the benchmarks, made in parallel (no flags here)."""

import multiprocessing
import os
import shutil
import time


def _write_one(args):
    """Writes one synthetic photo: smooth colour fields plus noise (JPEG)."""
    import numpy as np
    from PIL import Image

    path, seed, side = args
    rng = np.random.default_rng(seed)
    h, w = side * 3 // 4, side
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.3, 3)
    channels = [127 + 100 * np.sin(x / (w / (2 + c)) + y / (h / 3) + phase[c])
                for c in range(3)]
    image = np.stack(channels, -1) + rng.normal(0, 12, (h, w, 3))
    if seed % 2:  # The second class: a brighter, warmer cast.
        image[..., 0] += 40
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        path, "JPEG", quality=90)


def make_folder(root, num_images, side, processes):
    """root/{cats,dogs}/<i>.jpg, made in parallel; returns the seconds taken."""
    start = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    jobs = []
    for i in range(num_images):
        folder = os.path.join(root, ("cats", "dogs")[i % 2])
        os.makedirs(folder, exist_ok=True)
        jobs.append((os.path.join(folder, f"{i:06d}.jpg"), i, side))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_write_one, jobs, chunksize=64)
    return time.perf_counter() - start
