"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real kernel)."""

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("TLFAST_NOTEBOOK_OUTPUT", str(tmp_path / "run"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "validation accuracy:" in text and "->" in text
    # The phases' progress lines reached the notebook (no logging set up).
    assert "[head]" in text
    assert any("iframe" in o.get("data", {}).get("text/html", "")
               for o in outputs)
    assert (tmp_path / "run" / "report.html").is_file()
    assert os.path.getsize(tmp_path / "run" / "model.keras") > 0
