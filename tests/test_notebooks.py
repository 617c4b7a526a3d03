"""The example notebooks, executed with nbclient against a live server and the local SLURM cluster."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT, start_server, stop_server
from tests.test_exports import slurm  # noqa: F401 - the fixture: the cluster runs (started if needed)

EXAMPLES = REPO_ROOT / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))


@pytest.fixture(scope="module")
def nbserver(tmp_path_factory, shared_data, slurm):  # noqa: F811
    """A real uvicorn over ../shared/data that submits exports to the local SLURM cluster."""
    from mosaics.catalog import Catalog

    home = tmp_path_factory.mktemp("notebooks")
    Catalog(home / "catalog.db").ingest(shared_data)
    running = start_server(home, env={**slurm, "JEO_EXPORT_POLL_INTERVAL": "1"})
    yield running
    stop_server(running)


def execute(name: str, server, monkeypatch) -> nbformat.NotebookNode:
    """Run a notebook top to bottom (a cell error raises) with `JEO_URL` pointing at the server."""
    monkeypatch.setenv("JEO_URL", server.url)
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, kind: str) -> int:
    """How many outputs of MIME type `kind` the code cells produced."""
    return sum(kind in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )  # fmt: skip


def test_notebooks_are_stored_without_outputs():
    assert NOTEBOOKS == ["01-explore-collections.ipynb", "02-ndvi-timeseries.ipynb", "03-slurm-export.ipynb"]
    for name in NOTEBOOKS:
        notebook = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            assert cell.cell_type != "code" or (cell.outputs == [] and cell.execution_count is None), name


def test_explore_collections(nbserver, monkeypatch):
    notebook = execute("01-explore-collections.ipynb", nbserver, monkeypatch)
    assert outputs(notebook, "application/vnd.jupyter.widget-view+json") >= 1  # the split map
    assert outputs(notebook, "image/png") == 1
    assert "sentinel-2-l2a-timeseries" in text(notebook) and "S2A_33TWM_20230818_0_L2A" in text(notebook)


def test_ndvi_timeseries(nbserver, monkeypatch):
    notebook = execute("02-ndvi-timeseries.ipynb", nbserver, monkeypatch)
    assert outputs(notebook, "image/png") == 3  # time series plot, NDVI composite, NDVI per date
    assert "EPSG:32633" in text(notebook)


@pytest.mark.slurm
def test_slurm_export(nbserver, monkeypatch):
    notebook = execute("03-slurm-export.ipynb", nbserver, monkeypatch)
    assert outputs(notebook, "image/png") == 1
    assert outputs(notebook, "application/vnd.jupyter.widget-view+json") == 2  # progress bar; the result on a map
    assert "finished SLURM jobs: ['" in text(notebook)
