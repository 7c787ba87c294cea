"""``data export --format recbole``: RecBole's own reading of the files gives back our split
exactly."""

from collections import defaultdict

import numpy as np
import pytest

from pauserec import data
from pauserec.data import export
from pauserec.errors import UserError


def recbole_split(inter_path, max_len: int) -> dict[str, list[tuple[str, tuple[str, ...], str]]]:
    """What RecBole 1.2 does with ``eval_args: {split: {LS: valid_and_test}, order: TO}`` for a
    sequential model: stable sort by timestamp, per user every prefix -> next item (history <=
    MAX_ITEM_LIST_LENGTH; SequentialDataset.data_augmentation), then per user the last example is
    test, the one before it valid (Dataset.leave_one_out)."""
    lines = inter_path.read_text().splitlines()
    assert lines[0].split("\t") == ["user_id:token", "item_id:token", "timestamp:float"]
    rows = [line.split("\t") for line in lines[1:]]
    order = np.argsort(np.array([float(t) for _, _, t in rows]), kind="stable")
    seqs: dict[str, list[str]] = defaultdict(list)
    for i in order:
        seqs[rows[i][0]].append(rows[i][1])
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for user, seq in seqs.items():
        examples = [(user, tuple(seq[max(0, t - max_len) : t]), seq[t]) for t in range(1, len(seq))]
        out["train"] += examples[:-2]
        out["valid"].append(examples[-2])
        out["test"].append(examples[-1])
    return out


def _as_tokens(ds, examples):
    ids = [it.item_id for it in ds.items]
    return sorted((ex.user, tuple(ids[i] for i in ex.history), ids[ex.target]) for ex in examples)


@pytest.mark.parametrize("max_history", [20, 3])
def test_recbole_export_reproduces_our_split(max_history, tmp_path, capsys):
    ds = data.load_dataset("ml-100k")
    yaml = export.main(
        ["--dataset", "ml-100k", "--out", str(tmp_path / "rb"), "--max-history", str(max_history)]
    )
    ours = data.split(ds, max_history)
    theirs = recbole_split(tmp_path / "rb" / "ml-100k" / "ml-100k.inter", max_history)
    for part in ("train", "valid", "test"):
        assert sorted(theirs[part]) == _as_tokens(ds, ours[part]), part
    text = yaml.read_text()
    assert "split: {LS: valid_and_test}" in text and "order: TO" in text
    assert (
        f"MAX_ITEM_LIST_LENGTH: {max_history}" in text
        and f"data_path: {(tmp_path / 'rb').resolve()}" in text
    )
    assert "run_recbole(model='SASRec', dataset='ml-100k'" in capsys.readouterr().out


def test_item_file_has_one_row_per_item_without_stray_tabs(lcrec, tmp_path):
    d = lcrec(
        {"u1": [0, 1, 2, 3], "u2": [2, 3, 4]},
        items={
            str(i): {
                "title": f"Tab\there {i}",
                "categories": "Office Products, Paper",
                "brand": "Acme Co",
            }
            for i in range(5)
        },
    )
    export.main(["--dataset", str(d), "--out", str(tmp_path / "rb")])
    rows = (tmp_path / "rb" / "mini" / "mini.item").read_text().splitlines()
    assert rows[0] == export.ITEM_HEADER and len(rows) == 6
    assert rows[1].split("\t") == ["0", "Tab here 0", "Office_Products Paper", "Acme Co", ""]


def test_export_refuses_existing_out_and_unknown_format(tmp_path):
    (tmp_path / "rb").mkdir()
    (tmp_path / "rb" / "x").write_text("mine")
    with pytest.raises(UserError, match="non-empty"):
        export.main(["--out", str(tmp_path / "rb")])
    with pytest.raises(UserError, match=r"--format: unknown value .daisyrec. \(known: recbole\)"):
        export.main(["--format", "daisyrec", "--out", str(tmp_path / "other")])
    with pytest.raises(UserError, match="not written by pauserec data export"):  # the user's folder
        export.main(["--out", str(tmp_path / "rb"), "--overwrite"])
    assert (tmp_path / "rb" / "x").read_text() == "mine"
    export.main(["--out", str(tmp_path / "other")])
    export.main(["--out", str(tmp_path / "other"), "--overwrite"])  # an earlier export: replaced
    assert (tmp_path / "other" / "recbole.yaml").is_file()
