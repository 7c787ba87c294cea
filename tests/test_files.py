"""The output policy (files.claim, files.atomic_dir): overlaps, markers, what --overwrite may
replace, and what a killed run leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pauserec import data, files
from pauserec.errors import UserError

KIND = "pauserec test"


def write(out, kind: str = KIND, **claim) -> None:
    with files.claim(out, kind=kind, **claim), files.atomic_dir(out) as tmp:
        (tmp / "result.txt").write_text("x")


def test_an_input_on_disk_overlaps_but_a_dataset_name_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with files.claim("ml-100k", kind=KIND, inputs=["ml-100k"]):  # a name with nothing on disk there
        files.write_text("ml-100k/out.txt", "x")
    with pytest.raises(UserError, match="overlaps the input ml-100k"):  # now it is a folder on disk
        with files.claim("ml-100k/sub", kind=KIND, inputs=["ml-100k"]):
            pass
    assert not (tmp_path / "ml-100k" / "sub").exists()


def test_a_dataset_name_resolves_to_its_folder_and_data_root(tmp_path, monkeypatch):
    (tmp_path / "Office").mkdir()
    assert data.source_paths("office", str(tmp_path)) == [tmp_path / "Office", tmp_path]
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.source_paths("office") == [tmp_path / "Office", tmp_path]
    ml = data.source_paths("ml-100k")
    assert ml and (ml[0] / "ml-100k.inter").is_file()  # inside the recbole wheel
    assert data.source_paths("nowhere") == []  # unknown: loading it fails later, with its message


def test_overwrite_replaces_only_an_earlier_output_of_the_same_command(tmp_path):
    out = tmp_path / "o"
    write(out)
    assert files.written_by(out) == KIND
    write(out, overwrite=True)  # the same command: replaced
    with pytest.raises(UserError, match="not written by pauserec other"):
        write(out, kind="pauserec other", overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    with pytest.raises(UserError, match="no marker"):
        write(mine, overwrite=True)
    assert (mine / "keep.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["mine", "o"]


def test_never_a_device_a_pipe_or_a_link(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to("/dev/null")
    for out in (fifo, link):
        for flags in ({}, {"overwrite": True}, {"overwrite": True, "file": True}):
            with pytest.raises(UserError, match="not a regular file or folder"):
                write(out, **flags)
    (tmp_path / "d").mkdir()
    (tmp_path / "dlink").symlink_to(tmp_path / "d")
    with pytest.raises(UserError, match="symbolic link"):
        write(tmp_path / "dlink")
    assert os.readlink(link) == "/dev/null" and os.path.islink(tmp_path / "dlink")


def test_an_empty_folder_is_replaced_in_one_rename_that_fails_if_it_filled(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o750)
    write(out)
    assert (out / "result.txt").is_file() and oct(out.stat().st_mode & 0o777) == "0o750"  # kept
    late = tmp_path / "late"
    late.mkdir()
    with pytest.raises(UserError, match="no longer empty"):
        with files.claim(late, kind=KIND), files.atomic_dir(late) as tmp:
            (tmp / "result.txt").write_text("x")
            (late / "theirs.txt").write_text("written meanwhile")
    assert os.listdir(late) == ["theirs.txt"]
    assert sorted(os.listdir(tmp_path)) == ["late", "o"]  # no temp folder left behind


def test_what_a_killed_run_left_is_removed_by_the_next_run(tmp_path):
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip()
    stale = [tmp_path / f".o.{dead}.abc123.tmp", tmp_path / f".o.{dead}.old"]
    for p in stale:
        p.mkdir()
        (p / "half.bin").write_bytes(b"x")
    (tmp_path / f".o.json.{dead}.xyz.tmp").write_text("half")  # a write_json cut short
    (tmp_path / ".o.lock").write_text(dead)
    live = tmp_path / f".o.{os.getppid()}.abc.tmp"  # a running process's: kept
    live.mkdir()
    write(tmp_path / "o")
    files.write_json(tmp_path / "o.json", {})
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "o", "o.json"])


def test_a_held_lock_names_its_holder(tmp_path):
    with files.claim(tmp_path / "o", kind=KIND):
        assert (tmp_path / ".o.lock").read_text() == str(os.getpid())
        with pytest.raises(UserError, match=f"PID {os.getpid()}"):
            with files.claim(tmp_path / "o", kind=KIND):
                pass
    assert not (tmp_path / ".o.lock").exists()


def test_read_json_is_one_line_on_nesting_nan_and_bad_bytes(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        files.read_json(deep)
    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps({"a": float("nan")}))
    assert files.read_json(nan)["a"] != files.read_json(nan)["a"]  # NaN, allowed by default
    with pytest.raises(UserError, match="NaN is not a number"):
        files.read_json(nan, allow_nan=False)
    (tmp_path / "bytes.json").write_bytes(b"\xff{}")
    with pytest.raises(UserError, match="not UTF-8"):
        files.read_json(tmp_path / "bytes.json")
