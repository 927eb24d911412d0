"""tlfast.report: report.html, self-contained, escaped, and shown by a browser."""

import glob
import os
import re
import shutil
import subprocess

import pytest

from conftest import make_folder
from conftest import tiny_train_config
from test_backbones import register_tiny_backbone
from tlfast import report
from tlfast import training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import keras

    tmp_path = tmp_path_factory.mktemp("report")
    register_tiny_backbone()
    root = make_folder(tmp_path / "data", {"ants": 8, "bees": 8}, size=(40, 40))
    (root / "bees" / "notes.txt").write_text("not an image")
    keras.utils.set_random_seed(0)
    config = tiny_train_config(tmp_path, root, epochs=2)
    training.run_training(config)
    return config.output_dir


def test_a_run_writes_one_self_contained_page(trained):
    page = open(os.path.join(trained, "report.html"), encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 2  # Curves, confusion.
    assert "data:image/jpeg;base64," in page  # Error thumbnails.
    assert "notes.txt" in page and "unsupported file extension" in page
    assert not re.search(r"(src|href)=\"(https?:|file:|/)", page)  # Nothing fetched.
    assert "<script" not in page


def test_names_from_the_data_are_escaped(tmp_path):
    evil = '<script>alert(1)</script>'
    evaluation = {
        "num_examples": 1, "top_k": 1, "top_k_accuracy": 1.0, "accuracy": 1.0,
        "per_class": {evil: {"precision": 1, "recall": 1, "f1": 1, "support": 1}},
        "most_confident_errors": [{"path": f"/x/{evil}.jpg", "true": evil,
                                   "predicted": "b", "probability": 0.9}],
    }
    path = report.write_report(str(tmp_path), evaluation=evaluation, metrics={
        "skipped": [{"path": f'/x/"><img src=x onerror=alert(1)>.jpg',
                     "reason": evil}]})
    page = open(path, encoding="utf-8").read()
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium here (Debian: apt-get install chromium; "
                ".ci/run installs it when it can)")


def test_chromium_shows_the_page_without_errors(trained, tmp_path):
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0"]
    url = "file://" + os.path.join(trained, "report.html")
    shot = tmp_path / "report.png"
    done = subprocess.run([browser, *flags, "--window-size=900,1800",
                           f"--screenshot={shot}", url], capture_output=True,
                          text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    console = [l for l in done.stderr.splitlines() if "CONSOLE" in l
               or "Uncaught" in l or "Not allowed to load" in l]
    assert not console, console
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    assert len(re.findall(r"<img ", dom)) >= 3
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # Plots and photos drawn.
