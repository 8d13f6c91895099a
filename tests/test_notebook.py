"""docs/lab.ipynb runs headless from top to bottom in a real kernel (nbclient, ipykernel): it
starts a cluster, runs its exercise, checks its answer and shows the trace view inline."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "lab.ipynb"
#: seconds a cell may take (the cluster's run is the longest: ~5 s on 2 cores)
CELL_TIMEOUT_S = 120

pytestmark = pytest.mark.timeout(240)


def test_the_lab_notebook_runs_headless(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # its cwd
    # execute() starts the kernel and always shuts it down (and its processes) when done
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "every node received pages" in text, text
    assert "result: MATCH" in text and "every invariant held" in text, text
    frames = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(frames) == 2 and all("<iframe srcdoc=" in f and "dsm-data" in f for f in frames)
    assert (tmp_path / "lab-run" / "matmul.html").stat().st_size > 10_000
