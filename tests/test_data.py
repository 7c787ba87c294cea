import pytest

from conftest import AMAZON_ROOT, needs_amazon
from pauserec import data
from pauserec.errors import UserError


def _check_split(ds, max_history=20):
    parts = data.split(ds, max_history)
    train_targets: dict[str, set] = {}
    for ex in parts["train"]:
        train_targets.setdefault(ex.user, set()).add(ex.target)
    for name in ("valid", "test"):
        assert len(parts[name]) == len(ds.sequences)
        for ex in parts[name]:
            assert ex.target not in train_targets.get(ex.user, set()), (
                f"{name} target leaks into training"
            )
    valid = {ex.user: ex for ex in parts["valid"]}
    for ex in parts["test"]:
        # validation target is the test history's last item
        assert valid[ex.user].target == ex.history[-1]
    for part in parts.values():
        for ex in part:
            assert ex.target not in ex.history
            assert 1 <= len(ex.history) <= max_history
    return parts


def test_movielens_loads_from_the_recbole_wheel():
    ds = data.load_dataset("ml-100k")
    s = data.stats(ds)
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert ds.items[0].title == "Toy Story" and ds.items[0].year == "1995"
    assert "Animation" in ds.items[0].categories


def test_leave_one_out_has_no_leakage_on_movielens():
    ds = data.load_dataset("ml-100k")
    parts = _check_split(ds)
    seq = ds.sequences["1"]
    test = next(ex for ex in parts["test"] if ex.user == "1")
    assert test.target == seq[-1] and test.history == tuple(seq[-21:-1])
    # training targets are exactly seq[1:-2] for every user
    assert len(parts["train"]) == sum(len(s) - 3 for s in ds.sequences.values())


@needs_amazon
@pytest.mark.parametrize("name", ["office", "beauty", "toys"])
def test_amazon_datasets_split_cleanly(name):
    ds = data.load_dataset(name, str(AMAZON_ROOT))
    _check_split(ds)
    assert not any("&amp;" in it.title for it in ds.items)  # HTML entities are unescaped
    untitled = [it for it in ds.items if not it.title]
    assert all(it.display_title.startswith("untitled item") for it in untitled)


def test_data_root_env_and_missing_dataset(lcrec, tmp_path, monkeypatch):
    seqs = {"u1": [0, 1, 2, 3], "u2": [2, 3, 4]}
    lcrec(seqs, name="Office")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    ds = data.load_dataset("office")
    assert len(ds.items) == 5 and ds.items[0].title == "Item & thing 0"
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match="dataset 'beauty' not found"):
        data.load_dataset("beauty")
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        data.load_dataset("nope")


def test_bad_datasets_give_clear_errors(lcrec):
    with pytest.raises(UserError, match="user u2 has 2 interaction"):
        data.load_dataset(str(lcrec({"u1": [0, 1, 2], "u2": [1, 2]})))
    d = lcrec({"u1": [0, 1, 2]}, name="Corrupt")
    (d / "Corrupt.item.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt JSON in .*Corrupt.item.json"):
        data.load_dataset(str(d))
    (d / "Corrupt.item.json").unlink()
    with pytest.raises(UserError, match=r"no \*\.item\.json"):
        data.load_dataset(str(d))
    d = lcrec({"u1": [0, 1, 9]}, items={"0": {"title": "a"}, "1": {"title": "b"}}, name="Dangling")
    with pytest.raises(UserError, match="unknown item"):
        data.load_dataset(str(d))
