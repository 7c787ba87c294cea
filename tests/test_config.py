from dataclasses import dataclass, field

import pytest

from pauserec.config import from_dict, load_preset, parse_args
from pauserec.errors import UserError


@dataclass
class Args:
    lr: float = 1e-4
    epochs: int = 3
    name: str = "x"
    flag: bool = False
    fields: tuple[str, ...] = ("title",)
    maybe: int | None = None
    preset: str | None = field(default=None)


def test_from_dict_checks_keys_and_types():
    assert from_dict(Args, {"lr": 1, "epochs": 2}).lr == 1.0  # int -> float is lossless
    with pytest.raises(UserError, match="unknown config key.*bogus"):
        from_dict(Args, {"bogus": 1})
    with pytest.raises(UserError, match="epochs"):
        from_dict(Args, {"epochs": "three"})
    with pytest.raises(UserError, match="epochs"):
        from_dict(Args, {"epochs": 2.5})
    with pytest.raises(UserError, match="flag"):
        from_dict(Args, {"flag": 1})


def test_parse_args_flags_override_and_reject_bad_values():
    args = parse_args(
        Args, ["--lr", "3e-4", "--fields", "title,brand", "--flag", "--maybe", "none"], "t"
    )
    assert (
        args.lr == 3e-4 and args.fields == ("title", "brand") and args.flag and args.maybe is None
    )
    with pytest.raises(UserError, match="not a int"):
        parse_args(Args, ["--epochs", "two"], "t")
    with pytest.raises(UserError, match="unrecognized"):
        parse_args(Args, ["--nope", "1"], "t")


def test_presets_exist_and_unknown_ones_fail():
    assert "sid" in load_preset("quick")
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_preset_section_supplies_defaults(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text("[sid]\nepochs = 7\nlr = 0.5\n")
    args = parse_args(Args, ["--preset", str(p), "--lr", "0.1"], "t", section="sid")
    assert args.epochs == 7 and args.lr == 0.1
    p.write_text("[sid]\nepochz = 7\n")
    with pytest.raises(UserError, match="epochz"):
        parse_args(Args, ["--preset", str(p)], "t", section="sid")


def test_several_sections_merge_in_order_and_flags_still_win(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[sid]\nepochs = 7\nlr = 0.5\n[init]\nlr = 0.25\nname = "y"\n')
    args = parse_args(Args, ["--preset", str(p)], "t", section=("sid", "init"))
    assert (args.epochs, args.lr, args.name) == (7, 0.25, "y")
    assert (
        parse_args(Args, ["--preset", str(p), "--lr", "0.1"], "t", section=("sid", "init")).lr
        == 0.1
    )


def test_quick_preset_init_section_reaches_init_ckpt_but_not_sid_build():
    from pauserec.config import build
    from pauserec.model import init_ckpt
    from pauserec.sid import command as sid_command

    quick = load_preset("quick")
    args = build(init_ckpt.InitArgs, {"dataset": "ml-100k"}, "quick", init_ckpt.INIT_SECTIONS)
    assert args.init == quick["init"]["init"] and args.sid_method == quick["sid"]["sid_method"]
    assert (
        build(sid_command.SidBuildArgs, {"dataset": "ml-100k"}, "quick", "sid").sid_method
        == args.sid_method
    )


@dataclass
class Renamed:
    n_pauses: int = field(default=5, metadata={"deprecated": ("--k",)})


def test_a_deprecated_flag_still_works_and_names_its_replacement(caplog):
    with caplog.at_level("WARNING"):
        assert parse_args(Renamed, ["--n-pauses", "3"], "prog").n_pauses == 3
    assert not caplog.records  # the new name says nothing
    for argv in (["--k", "7"], ["--k=7"]):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert parse_args(Renamed, argv, "prog").n_pauses == 7
        assert "--k is deprecated" in caplog.text and "use --n-pauses" in caplog.text
