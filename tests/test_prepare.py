"""``data prepare`` on small fixture files in every raw format (tests/fixtures/raw, see
make_fixtures.py)."""

import gzip
import html
import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import AMAZON_ROOT, needs_amazon
from pauserec import data, files
from pauserec.__main__ import main as cli_main
from pauserec.cli import run
from pauserec.data import download, prepare
from pauserec.errors import UserError

RAW = Path(__file__).parent / "fixtures" / "raw"
# format, fixture folder, extra flags, raw ids of u1..u3 and of items A, B, C in that format
CASES = {
    "amazon2014": ("amazon2014", ["--category", "Mini"], ["u1", "u2", "u3"], ["A", "B", "C"]),
    "amazon2023": ("amazon2023", ["--category", "Mini"], ["U1", "U2", "U3"], ["A", "B", "C"]),
    "movielens-dat": ("ml-dat", [], ["1", "2", "3"], ["10", "20", "30"]),
    "movielens-csv": ("ml-csv", [], ["1", "2", "3"], ["10", "20", "30"]),
}
SKIPPED = {
    "amazon2014": [
        "skipped 2 malformed line(s) in reviews_Mini_5.json.gz (first: line 8:",
        "skipped 1 malformed line(s) in meta_Mini.json.gz (first: line 3:",
    ],
    "amazon2023": [
        "skipped 1 malformed line(s) in Mini.jsonl (first: line 4:",
        "skipped 1 malformed line(s) in meta_Mini.jsonl (first: line 6:",
    ],
    "movielens-dat": [
        "skipped 1 malformed line(s) in ratings.dat (first: line 6: expected 4 fields, got 3)"
    ],
    "movielens-csv": [
        "skipped 1 malformed line(s) in ratings.csv (first: line 22: expected 4 fields, got 2)"
    ],
}


def _prepare(case, out, *extra):
    folder, flags, _, _ = CASES[case]
    fmt = case.split("-")[0]
    return prepare.main(
        [
            "--format",
            fmt,
            "--raw",
            str(RAW / folder),
            *flags,
            "--kcore",
            "3",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.mark.parametrize("case", list(CASES))
def test_every_raw_format_gives_the_same_dataset(case, tmp_path, capsys):
    ds = _prepare(case, tmp_path / "Mini")
    out = capsys.readouterr().out
    _, _, users, items = CASES[case]
    ids = json.loads((tmp_path / "Mini" / "Mini.prepare.json").read_text())
    # users by raw id, items by first appearance
    assert ids["users"] == users and ids["items"] == items
    # 5 k-core rounds leave u1..u3 with A, B, C; u2 rated B and A at the same second: file order
    # decides
    assert ds.sequences == {"0": [0, 1, 2], "1": [1, 0, 2], "2": [0, 1, 2]}
    for line in SKIPPED[case]:
        assert line in out
    assert (
        "dropped 1 repeated user-item pair(s)" in out
        and "k-core 3: 5 round(s), kept 9 of 19" in out
    )
    # the stats lines are those of `data stats` on what was written
    s = data.stats(data.load_dataset(str(tmp_path / "Mini")))
    assert data.format_stats(s) in out and "split         train 0  valid 3  test 3" in out


@pytest.mark.parametrize("case", ["amazon2014", "amazon2023"])
def test_amazon_text_is_cleaned_and_gaps_are_reported(case, tmp_path, capsys):
    ds = _prepare(case, tmp_path / "Mini")
    a, b, c = ds.items
    assert b.title == "Tom & Jerry's Soap" and b.brand == "Acme"
    assert a.title == "" and a.display_title == "untitled item 0"  # A has no metadata record
    assert c.title == ""  # C's record has no title
    assert "1 item(s) have no metadata record" in capsys.readouterr().out
    if case == "amazon2014":
        # every category path; later paths skip names already given
        assert b.categories == "Beauty, Bath, Soap"
    else:
        assert b.categories == "Bath" and b.description == "Nice. Really."


@pytest.mark.parametrize("case", ["movielens-dat", "movielens-csv"])
def test_movielens_titles_years_and_encodings(case, tmp_path):
    ds = _prepare(case, tmp_path / "Mini")
    assert [(it.title, it.year) for it in ds.items] == [
        ("Alien", "1979"),
        ("Café Society", "2016"),
        ("Good, the Bad and the Ugly, The", "1966"),
    ]
    assert ds.items[0].categories == "Drama, Comedy"


def test_gzipped_2023_files_and_movielens_archive_folders(tmp_path):
    raw = tmp_path / "raw"
    for name in ("Mini.jsonl", "meta_Mini.jsonl"):
        (raw / "a").mkdir(parents=True, exist_ok=True)
        with gzip.open(raw / "a" / f"{name}.gz", "wb") as fh:
            fh.write((RAW / "amazon2023" / name).read_bytes())
    ds = prepare.main(
        [
            "--format",
            "amazon2023",
            "--raw",
            str(raw / "a"),
            "--category",
            "Mini",
            "--kcore",
            "3",
            "--out",
            str(tmp_path / "A"),
        ]
    )
    assert ds.sequences == {"0": [0, 1, 2], "1": [1, 0, 2], "2": [0, 1, 2]}
    for name, folder in (("ml-1m", "ml-dat"), ("ml-latest-small", "ml-csv")):  # as the zips unpack
        shutil.copytree(RAW / folder, raw / "ml" / name)
    ds = prepare.main(
        [
            "--format",
            "movielens",
            "--raw",
            str(raw / "ml"),
            "--category",
            "ml-latest-small",
            "--kcore",
            "3",
            "--out",
            str(tmp_path / "M"),
        ]
    )
    assert json.loads((tmp_path / "M" / "M.prepare.json").read_text())["files"][0].endswith(
        "ratings.csv"
    )


def test_strict_names_file_and_line_and_writes_nothing(tmp_path):
    with pytest.raises(UserError, match=r"malformed line 8 in .*reviews_Mini_5\.json\.gz"):
        _prepare("amazon2014", tmp_path / "Mini", "--strict")
    with pytest.raises(UserError, match=r"malformed line 6 in .*ratings\.dat: expected 4 fields"):
        _prepare("movielens-dat", tmp_path / "Mini", "--strict")
    assert not (tmp_path / "Mini").exists() and list(tmp_path.iterdir()) == []


def test_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "Mini"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty.*--overwrite"):
        _prepare("amazon2014", out)
    with pytest.raises(UserError, match="not written by pauserec data prepare"):  # a user's folder
        _prepare("amazon2014", out, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    _prepare("amazon2014", out)
    _prepare("amazon2014", out, "--overwrite")  # an earlier run of data prepare: replaced
    assert sorted(p.name for p in out.iterdir() if p.name != files.MARKER) == [
        "Mini.inter.json",
        "Mini.item.json",
        "Mini.prepare.json",
    ]


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    base = ["data", "prepare", "--out", str(tmp_path / "x")]
    assert run(cli_main, base + ["--format", "amazon2018", "--raw", str(RAW)]) == 2
    assert run(cli_main, base + ["--format", "amazon2014", "--raw", str(RAW / "amazon2014")]) == 2
    assert (
        run(
            cli_main,
            base
            + ["--format", "amazon2014", "--raw", str(RAW / "amazon2014"), "--category", "Toys"],
        )
        == 2
    )
    assert run(cli_main, base + ["--format", "movielens", "--raw", str(RAW / "amazon2014")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(e.startswith("error: ") for e in errors)
    assert "needs --category" in errors[1] and "reviews_Toys_5.json.gz" in errors[2]
    assert "ratings.dat" in errors[3]


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    # nothing listens on port 9
    monkeypatch.setattr(download, "AMAZON_2014", "http://127.0.0.1:9/amazon")
    with pytest.raises(
        UserError, match=r"cannot download http://127\.0\.0\.1:9/amazon/reviews_Beauty_5"
    ):
        prepare.main(
            [
                "--format",
                "amazon2014",
                "--raw",
                str(tmp_path / "raw"),
                "--category",
                "Beauty",
                "--download",
                "--out",
                str(tmp_path / "Beauty"),
            ]
        )
    assert list((tmp_path / "raw").iterdir()) == []  # no partial file left behind
    assert download.urls("movielens", "ml-1m") == [
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    ]


def _naive_kcore(rows, min_user, min_item):
    rows = set(rows)
    while True:
        users = pd.Series([u for u, _ in rows]).value_counts()
        items = pd.Series([i for _, i in rows]).value_counts()
        keep = {(u, i) for u, i in rows if users[u] >= min_user and items[i] >= min_item}
        if keep == rows:
            return rows
        rows = keep


@pytest.mark.parametrize("seed", range(5))
def test_kcore_reaches_the_fixed_point(seed):
    rng = random.Random(seed)
    rows = {(f"u{rng.randrange(40)}", f"i{int(rng.paretovariate(1.2)) % 30}") for _ in range(400)}
    df = pd.DataFrame(sorted(rows), columns=["user", "item"])
    kept, _ = prepare.kcore_filter(df, 4, 3)
    assert set(zip(kept["user"], kept["item"])) == _naive_kcore(rows, 4, 3)
    assert kept.groupby("user").size().min() >= 4 and kept.groupby("item").size().min() >= 3


@needs_amazon
def test_office_round_trips_through_the_raw_2014_format(tmp_path, capsys):
    """Office (a 5-core) written back as raw Amazon 2014 files comes out of prepare unchanged."""
    ds = data.load_dataset("office", str(AMAZON_ROOT))
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [
        json.dumps(
            {
                "reviewerID": f"U{int(u):06d}",
                "asin": f"I{i:06d}",
                "unixReviewTime": 10**9 + 86400 * t,
            }
        )
        for u, seq in ds.sequences.items()
        for t, i in enumerate(seq)
    ]
    meta = [
        repr(
            {
                "asin": f"I{n:06d}",
                "title": it.title,
                "brand": it.brand,
                "description": it.description,
                "categories": [it.categories.split(", ")] if it.categories else [],
            }
        )
        for n, it in enumerate(ds.items)
    ]
    for name, lines in (("reviews_Office_5.json.gz", reviews), ("meta_Office.json.gz", meta)):
        with gzip.open(raw / name, "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    again = prepare.main(
        [
            "--format",
            "amazon2014",
            "--raw",
            str(raw),
            "--category",
            "Office",
            "--out",
            str(tmp_path / "Office"),
        ]
    )
    assert again.sequences == ds.sequences
    # text is unescaped once more on the way (Office has double-escaped entities:
    # "Universal&amp;reg;")
    assert [(it.title, it.brand, it.categories) for it in again.items] == [
        tuple(html.unescape(v) for v in (it.title, it.brand, it.categories)) for it in ds.items
    ]
    assert "k-core 5: 1 round(s), kept 53,258 of 53,258 interactions" in capsys.readouterr().out
