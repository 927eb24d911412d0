"""PNG plots of a run: training curves and the confusion matrix.

Figures are drawn on matplotlib's Agg canvas directly, never through
`pyplot`: no display is needed, and no global pyplot state (current figure,
backend) is touched, so plotting is safe inside any host program.
"""

import csv
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlfast import atomic

STAGE_TITLES = {"head": "head", "fine_tune": "fine-tune"}
# Beyond this many classes cell counts are unreadable; colours still tell.
MAX_ANNOTATED_CLASSES = 30


def _save(fig, png_path, fit_canvas=False):
    FigureCanvasAgg(fig)
    # A "tight" bounding box grows the canvas to fit labels that
    # `tight_layout` could not (long class names), at the price of drawing
    # the figure once more; fixed-size contents do without it.
    with atomic.open_atomic(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100,
                    bbox_inches="tight" if fit_canvas else None)
    return fig


def read_history(history_csv_path):
    """Reads history.csv (stage, epoch, accuracy, loss, val_accuracy, ...).

    Returns:
      A list of row dicts, metric values as floats (NaN when empty).

    Raises:
      FileNotFoundError: No such file.
      ValueError: No rows, or no "stage"/"epoch" columns.
    """
    if not os.path.isfile(history_csv_path):
        raise FileNotFoundError(
            f"History file not found: '{history_csv_path}'. Expected the "
            "history.csv that tlfast-train writes into its output_dir.")
    with open(history_csv_path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    if not rows or "stage" not in fields or "epoch" not in fields:
        raise ValueError(
            f"'{history_csv_path}' has no epochs to plot: expected a header "
            "with stage, epoch and metric columns and at least one row. "
            f"Received: columns={fields}, rows={len(rows)}")
    out = []
    for row in rows:
        values = {k: float(v) if v not in ("", None) else float("nan")
                  for k, v in row.items() if k not in ("stage", "epoch")}
        out.append({"stage": row["stage"], **values})
    return out


def plot_training_curves(history_csv_path, png_path):
    """Plots loss and accuracy per epoch, train and validation, all stages.

    Stages ("head", then "fine_tune") are laid one after another on a
    common epoch axis, with a dotted vertical line where each new stage
    starts.

    Args:
      history_csv_path: history.csv from a training run.
      png_path: Output PNG.

    Returns:
      The `matplotlib.figure.Figure` (already saved).
    """
    rows = read_history(history_csv_path)
    epochs = np.arange(1, len(rows) + 1)
    starts = [(i + 1, row["stage"]) for i, row in enumerate(rows)
              if i == 0 or row["stage"] != rows[i - 1]["stage"]]
    fig = Figure(figsize=(11, 4.2))
    for position, metric in enumerate(("loss", "accuracy"), start=1):
        ax = fig.add_subplot(1, 2, position)
        for key, label, style in ((metric, "train", "-"),
                                  ("val_" + metric, "validation", "--")):
            if key in rows[0]:
                # Markers help on a few epochs and clutter many.
                ax.plot(epochs, [r[key] for r in rows], style, label=label,
                        marker="o" if len(rows) <= 40 else None, markersize=3)
        for start, stage in starts:
            if start > 1:
                ax.axvline(start - 0.5, color="grey", linestyle=":")
            ax.annotate(f"{STAGE_TITLES.get(stage, stage)} stage",
                        (start - 0.5, 1.0), xytext=(4, -4),
                        textcoords="offset points",
                        xycoords=("data", "axes fraction"), va="top",
                        fontsize=9, color="dimgrey",
                        bbox={"facecolor": "white", "edgecolor": "none",
                              "alpha": 0.8, "pad": 1})
        ax.set_xlim(0.5, len(rows) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Training curves")
    fig.tight_layout()
    return _save(fig, png_path)


def plot_lr_find(rates, losses, suggested, png_path):
    """Loss against learning rate (log scale), the suggestion marked."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(rates, losses)
    ax.axvline(suggested, color="tab:red", linestyle="--",
               label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title("Head learning-rate sweep")
    ax.legend()
    fig.tight_layout()
    return _save(fig, png_path)


def plot_confusion_matrix(matrix, class_names, png_path):
    """Plots a confusion matrix of counts, annotated in each cell.

    Args:
      matrix: int [C, C] counts; row = true class, column = predicted.
      class_names: C tick labels.
      png_path: Output PNG.

    Returns:
      The `matplotlib.figure.Figure` (already saved).

    Raises:
      ValueError: The matrix is not [C, C] for C class names.
    """
    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(
            f"Expected a [{n}, {n}] matrix for {n} class names. Received: "
            f"matrix.shape={matrix.shape}")
    side = min(max(4.5, 0.45 * n + 2.5), 40)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="count")
    # "$" would start matplotlib's math markup (and fail on an odd count).
    class_names = [str(name).replace("$", r"\$") for name in class_names]
    ax.set_xticks(range(n), labels=class_names, rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    ax.set_title(f"Confusion matrix ({correct}/{total} correct)")
    if n <= MAX_ANNOTATED_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        fontsize=9 if n <= 12 else 7,
                        color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    return _save(fig, png_path, fit_canvas=True)
