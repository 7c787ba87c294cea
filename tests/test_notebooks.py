"""The walkthrough notebooks execute end to end against tiny checkpoints, so they never rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pauserec.training import train

pytestmark = pytest.mark.slow  # trains models, starts processes or kernels

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_runs(tiny_ckpt_path, tmp_path_factory) -> dict[str, str]:
    """Tiny sft, pause-sft and cot-sft checkpoints trained for a few steps by the real trainer."""
    root = tmp_path_factory.mktemp("nb")
    common = ["--preset", "quick", "--n-train", "16", "--batch-size", "8", "--device", "cpu"]
    paths = {"sft": root / "sft", "pause": root / "pause", "cot": root / "cot"}
    train.main(
        ["--stage", "sft", "--from", str(tiny_ckpt_path), "--out", str(paths["sft"]), *common]
    )
    train.main(
        [
            "--stage",
            "pause-sft",
            "--from",
            str(paths["sft"]),
            "--out",
            str(paths["pause"]),
            "--pause-init",
            "mean-text",
            *common,
        ]
    )
    train.main(
        ["--stage", "cot-sft", "--from", str(paths["sft"]), "--out", str(paths["cot"]), *common]
    )
    return {
        "PAUSEREC_CKPT": str(paths["pause"]),
        "PAUSEREC_PAUSE_CKPT": str(paths["pause"]),
        "PAUSEREC_COT_CKPT": str(paths["cot"]),
        "PAUSEREC_NB_USERS": "4",
        "PAUSEREC_CKPTS": f"{tiny_ckpt_path},{paths['sft']}",
    }


def test_notebooks_are_committed_without_outputs():
    assert len(NOTEBOOKS) == 5
    assert (
        sum(
            "figure" in c.get("metadata", {}).get("tags", [])
            for p in NOTEBOOKS
            # the figure cells the test checks
            for c in nbformat.read(p, as_version=4).cells
        )
        >= 6
    )
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tiny_runs, monkeypatch):
    for key, value in tiny_runs.items():
        monkeypatch.setenv(key, value)
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent.parent)}},
    ).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)
    for cell in book.cells:  # a figure shows as a picture, once -- not as "<Figure size ...>"
        if "figure" in cell.get("metadata", {}).get("tags", []):
            pngs = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
            assert len(pngs) == 1, (path.name, cell["source"][:80], cell["outputs"])
