import numpy as np
import pytest
from PIL import Image

from tlfast import plots

HEADER = "stage,epoch,accuracy,loss,val_accuracy,val_loss\n"


def write_history(path, head=4, fine_tune=3):
    rows = [f"head,{e + 1},{0.5 + 0.05 * e},{1.0 - 0.1 * e},{0.55 + 0.04 * e},"
            f"{0.9 - 0.08 * e}" for e in range(head)]
    rows += [f"fine_tune,{e + 1},{0.75 + 0.05 * e},{0.5 - 0.1 * e},"
             f"{0.7 + 0.05 * e},{0.6 - 0.1 * e}" for e in range(fine_tune)]
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def looks_like_a_plot(png, min_size=(300, 300)):
    image = Image.open(png).convert("RGB")
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    pixels = np.asarray(image).reshape(-1, 3)
    # Text, lines and fills: many colours, mostly light background.
    assert len(np.unique(pixels, axis=0)) > 50
    assert (pixels.mean(1) > 200).mean() > 0.5
    assert png.stat().st_size > 10_000


def test_training_curves_show_both_stages(tmp_path):
    png = tmp_path / "plots" / "training_curves.png"
    fig = plots.plot_training_curves(write_history(tmp_path / "h.csv"), png)
    looks_like_a_plot(png, (800, 300))
    loss, accuracy = fig.axes
    for ax, metric in ((loss, "loss"), (accuracy, "accuracy")):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == metric
        assert metric in ax.get_title()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train", "validation"]
        train, val, boundary = ax.get_lines()
        # Stages laid end to end: 4 head + 3 fine-tune epochs.
        assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6, 7]
        assert boundary.get_xdata()[0] == 4.5
        notes = [t.get_text() for t in ax.texts]
        assert notes == ["head stage", "fine-tune stage"]
    np.testing.assert_allclose(loss.get_lines()[1].get_ydata()[:2], [0.9, 0.82])
    assert fig.get_suptitle() == "Training curves"


def test_training_curves_one_stage_without_validation(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("stage,epoch,accuracy,loss\nhead,1,0.5,1.0\nhead,2,0.6,0.8\n")
    fig = plots.plot_training_curves(path, tmp_path / "c.png")
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert (tmp_path / "c.png").stat().st_size > 5000


def test_training_curves_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="History file not found"):
        plots.plot_training_curves(tmp_path / "none.csv", tmp_path / "c.png")
    (tmp_path / "empty.csv").write_text(HEADER)
    with pytest.raises(ValueError, match="no epochs to plot"):
        plots.plot_training_curves(tmp_path / "empty.csv", tmp_path / "c.png")


def test_confusion_matrix_counts_and_labels(tmp_path):
    png = tmp_path / "cm.png"
    matrix = [[12, 3, 0], [2, 9, 4], [0, 1, 15]]
    fig = plots.plot_confusion_matrix(matrix, ["ants", "bees", "wasps"], png)
    looks_like_a_plot(png)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ants", "bees", "wasps"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ants", "bees", "wasps"]
    assert [t.get_text() for t in ax.texts] == [
        str(v) for row in matrix for v in row]
    assert "36/46" in ax.get_title()


def test_class_names_with_dollar_signs_are_plain_text(tmp_path):
    png = tmp_path / "cm.png"
    fig = plots.plot_confusion_matrix([[3, 1], [0, 4]], ["under_$5", "$5_to_$10"],
                                      png)
    looks_like_a_plot(png)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        r"under_\$5", r"\$5_to_\$10"]


def test_confusion_matrix_many_classes_and_bad_shape(tmp_path):
    n = plots.MAX_ANNOTATED_CLASSES + 1
    fig = plots.plot_confusion_matrix(np.eye(n, dtype=int) * 3,
                                      [f"c{i}" for i in range(n)],
                                      tmp_path / "big.png")
    assert not fig.axes[0].texts  # Too small to read: colours only.
    with pytest.raises(ValueError, match=r"Expected a \[2, 2\] matrix"):
        plots.plot_confusion_matrix([[1, 2, 3]], ["a", "b"], tmp_path / "x.png")
