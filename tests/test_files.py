"""The output policy's overlap rule: inputs on disk may not overlap --out; names that are not paths never do."""

from __future__ import annotations

import pytest

from pauserec import files
from pauserec.errors import UserError


def test_an_input_on_disk_overlaps_but_a_dataset_name_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with files.claim("ml-100k", inputs=["ml-100k"]):  # a dataset by name: nothing on disk to protect
        files.write_text("ml-100k/out.txt", "x")
    with pytest.raises(UserError, match="overlaps the input ml-100k"):  # now it is a folder on disk
        with files.claim("ml-100k/sub", inputs=["ml-100k"]):
            pass
    assert not (tmp_path / "ml-100k" / "sub").exists()
