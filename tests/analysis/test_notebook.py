"""``analysis/explore.ipynb``: committed without outputs, and runs top to bottom on a sweep."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.analysis.test_plots import run_tiny_sweep
from tests.conftest import ROOT

NOTEBOOK = ROOT / "analysis" / "explore.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_notebook_runs_on_a_sweep_given_by_sweep_dir(tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_DIR", str(run_tiny_sweep(tmp_path_factory)))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the notebook draws its figures
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=120,
        resources={"metadata": {"path": str(ROOT)}},
    )  # fmt: skip
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 7  # the figures and the pandas plot of the top 3 curves
    text = "".join(o.get("text", "") for o in outputs)
    assert "optuna, 6 trials, swept ['clip', 'optim.lr']" in text
