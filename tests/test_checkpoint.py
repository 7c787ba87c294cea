import json
import shutil
import subprocess
import sys

import pytest
import torch

from pauserec import cli, tokens
from pauserec.errors import UserError
from pauserec.model import checkpoint, init_ckpt


def test_round_trip_gives_equal_logits(tiny_ckpt, tmp_path):
    ids = torch.tensor(
        [tiny_ckpt.tokenizer.convert_tokens_to_ids(list(tiny_ckpt.catalog.items[0].sid))]
    )
    before = tiny_ckpt.model(ids).logits
    checkpoint.save(tiny_ckpt, tmp_path / "copy")
    again = checkpoint.load(tmp_path / "copy")
    assert torch.equal(before, again.model(ids).logits)
    assert (
        again.meta["stage"] == "init" and again.meta["format_version"] == checkpoint.FORMAT_VERSION
    )
    assert [it.sid for it in again.catalog.items] == [it.sid for it in tiny_ckpt.catalog.items]


def test_checkpoint_holds_every_token_and_metadata(tiny_ckpt):
    vocab = tiny_ckpt.tokenizer.get_vocab()
    for t in tiny_ckpt.catalog.sid_tokens() + [tokens.PAUSE, tokens.THINK_OPEN, tokens.THINK_CLOSE]:
        assert t in vocab
    # SID strings tokenise to exactly one token per level
    sid = tiny_ckpt.catalog.items[5].sid_string
    assert (
        len(tiny_ckpt.tokenizer.encode(sid, add_special_tokens=False)) == tiny_ckpt.catalog.n_levels
    )
    meta = tiny_ckpt.meta
    assert meta["dataset"]["name"] == "ml-100k" and meta["backbone"] == "tiny"
    assert meta["sid"]["report"]["unique_after_dedup"] == len(tiny_ckpt.catalog)
    assert meta["timings"]["init"]["sid_build_s"] > 0 and meta["timings"]["init"]["wall_s"] > 0
    ident = tiny_ckpt.identity()
    assert (
        ident["cell"] == "init" and ident["dataset"] == "ml-100k" and len(ident["ckpt_hash"]) == 16
    )
    assert set(ident) == set(checkpoint.IDENTITY)


@pytest.mark.parametrize(
    "victim", ["pauserec.json", "items.jsonl", "model.safetensors", "tokenizer.json", "config.json"]
)
def test_missing_files_are_named(tiny_ckpt_path, tmp_path, victim):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt_path, bad)
    (bad / victim).unlink()
    with pytest.raises(UserError, match="missing"):
        checkpoint.load(bad)


def test_unknown_format_and_mismatched_catalog(tiny_ckpt_path, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt_path, bad)
    meta = json.loads((bad / "pauserec.json").read_text())
    (bad / "pauserec.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="unknown format version 99"):
        checkpoint.load(bad)
    v1 = {
        **{k: v for k, v in meta.items() if k not in ("n_pauses", "cell")},
        "format_version": 1,
        "k": 3,
    }
    (bad / "pauserec.json").write_text(json.dumps(v1))
    old = checkpoint.read_meta(bad)  # a version-1 checkpoint is read as version 2
    assert old["n_pauses"] == 3 and "k" not in old and old["cell"] == "init"
    (bad / "pauserec.json").write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.warns(UserWarning, match="surprise"):
        checkpoint.read_meta(bad)
    (bad / "pauserec.json").write_text(json.dumps(meta))
    rows = (bad / "items.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    row["sid"][0] = "<a_999>"
    (bad / "items.jsonl").write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    with pytest.raises(UserError, match="tokenizer does not match the catalog"):
        checkpoint.load(bad)


def test_failed_save_leaves_no_partial_output(tiny_ckpt, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_ckpt.catalog, "write", boom)
    with pytest.raises(RuntimeError):
        checkpoint.save(tiny_ckpt, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_init_ckpt_bad_input_exits_2_without_output(tmp_path, capsys):
    out = tmp_path / "x"
    for argv, msg in [
        (["--backbone", "nope/nope-xyz", "--dataset", "ml-100k"], "cannot load backbone"),
        (["--backbone", "tiny", "--dataset", "nope"], "unknown dataset"),
        (["--backbone", "tiny", "--sid-levels", "two"], "not a int"),
        (["--backbone", "tiny", "--colour", "red"], "unrecognized"),
    ]:
        assert cli.run(init_ckpt.main, argv + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.slow  # a process per command
def test_cli_entry_point_prints_one_line_errors(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pauserec", "data", "stats", "--dataset", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error:") and "Traceback" not in run.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "pauserec", "data", "stats"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "users         943" in ok.stdout
