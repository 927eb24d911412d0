"""report.html: one self-contained page per run (or evaluation) to look at.

Written into the run folder by `tlfast-train` (and into its report folder by
`tlfast-evaluate`) from the files already there: the training curves, the
confusion matrix, a per-class table, the most confident errors as
thumbnails, the skipped files with their reasons, and the run's settings
and timings. Everything is inside the one file (images as data URIs, CSS
inline, no script, nothing fetched), so it opens from disk, offline, on a
phone. Every text that came from the data (class and file names, reasons)
is HTML-escaped: a folder from someone else cannot inject markup.
"""

import base64
import html
import os

from tlfast import atomic
from tlfast import run_folder

REPORT = "report.html"
THUMBNAIL = 112  # Pixels, the longer side.
_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;color:#1a1a1a}h1{font-size:1.5em}h2{font-size:1.15em;
margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;
margin:6px 0}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}img.plot{max-width:100%;
height:auto}.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{width:132px;
font-size:12px;word-break:break-all}.tile img{width:112px;height:112px;
object-fit:contain;background:#f4f4f4;display:block}.big{font-size:2em;
font-weight:600}code{font-size:12px}
"""


def _e(text):
    return html.escape(str(text), quote=True)


def _data_uri(path, mime):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(path, max_pixels):
    """A small JPEG data URI of an image file (through the scan's guard)."""
    import tensorflow as tf

    from tlfast.data import headers
    from tlfast.data import pipeline

    try:
        data = headers.read_image_file(path, max_pixels).data
        image = pipeline.decode_rgb(tf.constant(data))
    except (headers.Refused, tf.errors.OpError):
        return None
    scale = THUMBNAIL / max(int(image.shape[0]), int(image.shape[1]), 1)
    size = (max(1, round(int(image.shape[0]) * min(scale, 1.0))),
            max(1, round(int(image.shape[1]) * min(scale, 1.0))))
    small = tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)
    jpeg = tf.io.encode_jpeg(small, quality=85).numpy()
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')}"


def _per_class_table(evaluation):
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=n>{s['precision']:.3f}</td>"
        f"<td class=n>{s['recall']:.3f}</td><td class=n>{s['f1']:.3f}</td>"
        f"<td class=n>{s['support']}</td></tr>"
        for name, s in evaluation.get("per_class", {}).items())
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th>"
            f"<th>F1</th><th>images</th></tr>{rows}</table>")


def _errors_gallery(evaluation, max_pixels, limit=24):
    tiles = []
    for error in evaluation.get("most_confident_errors", [])[:limit]:
        uri = _thumbnail(error["path"], max_pixels)
        image = f'<img src="{uri}" alt="">' if uri else "<div>(unreadable)</div>"
        tiles.append(
            f'<div class=tile>{image}<b>{_e(error["predicted"])}</b> '
            f'{error["probability"]:.2f}<br>true: {_e(error["true"])}<br>'
            f'<code>{_e(os.path.basename(error["path"]))}</code></div>')
    if not tiles:
        return "<p>No misclassified validation image.</p>"
    return f"<div class=tiles>{''.join(tiles)}</div>"


def _skipped(skipped):
    if not skipped:
        return "<p>None.</p>"
    rows = "".join(f"<tr><td><code>{_e(s['path'])}</code></td>"
                   f"<td>{_e(s['reason'])}</td></tr>" for s in skipped)
    return f"<table><tr><th>file</th><th>why</th></tr>{rows}</table>"


def _summary(evaluation):
    """The line under the headline: top-k, or the multi-label scores."""
    n = evaluation.get("num_examples", 0)
    if evaluation.get("multi_label"):
        return (f"<p>{n} validation images, {len(evaluation.get('per_class', {}))}"
                f" labels; a label is predicted from probability "
                f"{evaluation.get('threshold', 0.5):.2f} (chosen on validation): "
                f"micro F1 {evaluation.get('micro_avg', {}).get('f1', 0):.4f}, "
                f"all labels right on {evaluation.get('exact_match', 0):.1%} of "
                "the images</p>")
    return (f"<p>{n} validation images, top-{_e(evaluation.get('top_k'))} "
            f"accuracy {evaluation.get('top_k_accuracy', 0):.4f}</p>")


def _plot(folder, name, alt):
    uri = _data_uri(os.path.join(folder, name), "image/png")
    return f'<img class=plot src="{uri}" alt="{_e(alt)}">' if uri else ""


def _settings(run, metrics):
    rows = {**(run.resolved or {}),
            **{k: v for k, v in (run.config or {}).items()
               if k in ("data_dir", "tfds_name", "augment", "epochs",
                        "fine_tune_epochs", "class_weight", "weights")}}
    timings = metrics.get("timings_s") or {}
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                    for k, v in sorted(rows.items()))
    times = "".join(f"<tr><td>{_e(k)}</td><td class=n>{v:.2f} s</td></tr>"
                    for k, v in timings.items() if isinstance(v, (int, float)))
    return f"<table>{cells}</table><h2>Timings</h2><table>{times}</table>"


def write_report(directory, *, evaluation, metrics=None, run=None,
                 title="tlfast run", max_pixels=None):
    """Writes `<directory>/report.html`; returns its path.

    Args:
      directory: A run folder, or an evaluation's report folder.
      evaluation: The evaluation report dict (`tlfast.evaluate`).
      metrics: The run's metrics.json dict (accuracy, stages, skipped,
        timings), or None for an evaluation.
      run: The run's `run_folder.RunRecord`, or None.
      title: The page's title.
      max_pixels: The decompression-bomb guard for the thumbnails.
    """
    from tlfast.config import DEFAULT_MAX_PIXELS

    metrics = metrics or {}
    run = run or run_folder.RunRecord({})
    max_pixels = max_pixels or run.setting("max_pixels", DEFAULT_MAX_PIXELS)
    accuracy = metrics.get("val_accuracy", evaluation.get("accuracy", 0.0))
    stages = metrics.get("stages") or {}
    stage_lines = "".join(
        f"<li>{_e(name)}: {s.get('val_accuracy', 0):.4f} (best epoch "
        f"{_e(s.get('best_epoch'))}{'' if s.get('kept', True) else ', not kept'})</li>"
        for name, s in stages.items())
    skipped = metrics.get("skipped", evaluation.get("skipped", []))
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><div class=big>accuracy {accuracy:.4f}</div>"
        f"{_summary(evaluation)}<ul>{stage_lines}</ul>"
        f"<h2>Training curves</h2>{_plot(directory, run_folder.CURVES, 'training curves')}"
        + ("" if evaluation.get("multi_label") else
           f"<h2>Confusion matrix</h2>{_plot(directory, 'confusion_matrix.png', 'confusion matrix')}") +
        f"<h2>Per {'label' if evaluation.get('multi_label') else 'class'}</h2>"
        f"{_per_class_table(evaluation)}"
        f"<h2>Most confident errors</h2>{_errors_gallery(evaluation, max_pixels)}"
        f"<h2>Skipped files ({len(skipped)})</h2>{_skipped(skipped)}"
        f"<h2>Settings</h2>{_settings(run, metrics)}"
        "</body></html>\n")
    path = os.path.join(directory, REPORT)
    atomic.write_text(path, page)
    return path


def write_run_report(folder, metrics, run_info):
    """report.html of a training run, from its files and `metrics` (the
    metrics.json to be) and `run_info` (run.json's content)."""
    # A TFDS run has no evaluation from files: {}.
    return write_report(folder.path, evaluation=folder.read_evaluation(),
                        metrics=metrics, run=run_folder.RunRecord(run_info),
                        title=f"tlfast run: {os.path.basename(os.path.abspath(folder.path))}")
