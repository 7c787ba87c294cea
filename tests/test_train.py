"""Training stages on the tiny fixture: label masking, row-only pause pre-training, pause init
strategies, resume after a kill, divergence stop, config errors, and a run of every stage through
``main``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pauserec import cli, data, registry, tokens
from pauserec.config import to_dict
from pauserec.errors import UserError
from pauserec.model import backbone, checkpoint
from pauserec.model.prompts import IGNORE, PromptBuilder
from pauserec.teacher import rationales
from pauserec.training import corpus, loop, train, trainstate
from pauserec.training import stages as stages_mod

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

KILLER = Path(__file__).parent / "helpers" / "train_killed_at.py"


def proc_wall_before_kill(out) -> float:
    """The wall time the killed segment had saved into its state (at its last save)."""
    state = torch.load(trainstate.partial_dir(out) / trainstate.STATE_FILE, weights_only=False)
    return state["progress"]["seconds"]


FAST = (
    "--n-train 32 --epochs 1 --batch-size 8 --no-progress --device cpu --save-every 0"
    " --log-every 1 --dtype fp32"
).split()


def run_stage(stage: str, src, out, *extra: str) -> checkpoint.Checkpoint:
    train.main(["--stage", stage, "--from", str(src), "--out", str(out), *FAST, *extra])
    return checkpoint.load(out)


@pytest.fixture(scope="module")
def stages(tiny_ckpt_path, tmp_path_factory):
    """Every stage in pipeline order on the tiny fixture: {stage: checkpoint dir}."""
    root = tmp_path_factory.mktemp("stages")
    paths = {"init": tiny_ckpt_path}
    for stage, src, extra in [
        ("cpt", "init", []),
        ("sft", "cpt", []),
        ("pause-pretrain", "cpt", ["--lr", "1e-2"]),
        ("pause-sft", "sft", ["--pause-from", str(root / "pause-pretrain"), "--n-pauses", "3"]),
        ("cot-sft", "sft", ["--rationale", "template-leaky"]),
    ]:
        run_stage(stage, paths[src], root / stage, *extra)
        paths[stage] = root / stage
    return paths


def test_every_stage_writes_a_checkpoint_with_its_metadata(stages):
    init = checkpoint.read_meta(stages["init"])
    expect = {
        "cpt": ("base", 0, None, "cpt"),
        "sft": ("plain", 0, None, "sft"),
        "pause-pretrain": ("base", 0, "mean-all", "pause-pretrain"),
        "pause-sft": ("pause", 3, "pretrained", "pause-k3"),
        "cot-sft": ("cot", 0, None, "cot-template-leaky"),
    }
    for stage, (variant, n_pauses, pause_init, cell) in expect.items():
        ckpt = checkpoint.load(stages[stage])
        meta = ckpt.meta
        assert (
            meta["variant"],
            meta["stage"],
            meta["n_pauses"],
            meta["pause_init"],
            meta["cell"],
        ) == (variant, stage, n_pauses, pause_init, cell)
        assert meta["train_seed"] == 0 and ckpt.identity()["cell"] == cell
        assert meta["dataset"] == init["dataset"] and meta["sid"] == init["sid"]
        assert (
            meta["configs"][stage]["stage"] == stage
            and meta["configs"][stage]["corpus"]["used"] == 32
        )
        t = meta["timings"][stage]
        assert t["tokens"] > 0 and t["wall_s"] > 0 and t["device_hours"] > 0 and t["steps"] == 4
        assert t["device"].startswith("cpu") and t["world_size"] == 1 and t["dtype"] == "fp32"
        log = pd.read_csv(stages[stage] / trainstate.LOG_FILE)
        assert list(log["step"]) == [1, 2, 3, 4] and np.isfinite(log["loss"]).all()
        assert not trainstate.partial_dir(stages[stage]).exists()
    pause = checkpoint.read_meta(stages["pause-sft"])
    assert pause["parent"] == str(stages["sft"])
    # the whole lineage
    assert list(pause["timings"]) == ["init", "cpt", "sft", "pause-pretrain", "pause-sft"]
    assert checkpoint.read_meta(stages["cot-sft"])["rationale"]["leaky"] is True
    assert (stages["cot-sft"] / "rationales.jsonl").is_file()


def test_labels_cover_only_targets_and_rationales(tiny_ckpt):
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    ex = data.Example("u", (1, 2, 3), 4)
    target = builder.item_ids[4]
    for variant, n_pauses, rationale in [
        ("plain", 0, None),
        ("pause", 5, None),
        ("cot", 0, "drama again"),
    ]:
        c = corpus.recommendation(
            builder,
            [data.Window.of(ex)],
            variant,
            n_pauses=n_pauses,
            rationales=[rationale] if rationale else None,
        )
        enc = builder.encode(ex.history, ex.target, variant, n_pauses, rationale)
        labels, ids = c.labels[0], c.ids[0]
        for seg, y, t in zip(enc.segments, labels, ids):
            if seg in ("rationale", "target") or (
                seg == "think" and t == builder.think_close and rationale
            ):
                assert y == t, seg
            else:
                assert y == IGNORE, seg  # prompt, pause, <think> (and the pause block's </think>)
        assert [y for y in labels if y != IGNORE][-len(target) :] == target
    plain = corpus.recommendation(builder, [data.Window.of(ex)], "plain").labels[0]
    assert sum(y != IGNORE for y in plain) == tiny_ckpt.catalog.n_levels


def test_grounding_corpus_and_pause_insertion(tiny_ckpt):
    ds = data.load_dataset("ml-100k")
    g = corpus.grounding(tiny_ckpt.tokenizer, tiny_ckpt.catalog, ds.items[:10])
    assert len(g) == 20
    sid = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog).item_ids[3]
    sid2text, text2sid = (g.ids[6], g.labels[6]), (g.ids[7], g.labels[7])
    assert [y for y in text2sid[1] if y != IGNORE] == sid == text2sid[0][-len(sid) :]
    answer = [y for y in sid2text[1] if y != IGNORE]
    assert answer[-1] == tiny_ckpt.tokenizer.eos_token_id and not set(sid) & set(answer)
    # SID in the question
    assert sid2text[0][: len(sid2text[0]) - len(answer)][-len(sid) - 1 : -1] == sid
    pid = tiny_ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    p = corpus.with_pauses(g, pid, 0.1, seed=0)
    for (ids, labels), (ids0, labels0) in zip(zip(p.ids, p.labels), zip(g.ids, g.labels)):
        n = sum(t == pid for t in ids)
        assert n == max(1, round(0.1 * len(ids0))) and ids[0] == ids0[0]
        assert all(y == IGNORE for t, y in zip(ids, labels) if t == pid)
        kept = [(t, y) for t, y in zip(ids, labels) if t != pid]
        assert kept == list(zip(ids0, labels0))


@pytest.mark.numeric
def test_labelled_loss_equals_full_logits_loss_and_ignores_padding(tiny_ckpt):
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    exs = [data.Example("u", tuple(range(1, n)), n + 5) for n in (2, 4, 7)]
    c = corpus.recommendation(
        builder,
        [data.Window.of(ex) for ex in exs],
        "cot",
        rationales=["short", "a longer rationale", "x"],
    )
    model, net = tiny_ckpt.model, loop.LabelledLoss(tiny_ckpt.model)
    batch = loop.collate(c, [0, 1, 2], pad_id=0, device=torch.device("cpu"))
    assert batch["attention_mask"] is not None
    with torch.no_grad():
        loss_sum, n = net(batch["input_ids"], batch["labels"], batch["attention_mask"])
        full = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
        one_by_one = sum(
            net(
                **{
                    k: v
                    for k, v in loop.collate(c, [i], 0, torch.device("cpu")).items()
                    if k not in ("tokens", "labelled")
                }
            )[0]
            for i in range(3)
        )
    assert n == sum(sum(y != IGNORE for y in lab[1:]) for lab in c.labels)
    assert torch.allclose(loss_sum / n, full, atol=1e-5)
    assert torch.allclose(loss_sum, one_by_one, atol=1e-4)


def test_bucketed_plan_is_a_deterministic_permutation_with_less_padding():
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    for bucket in (True, False):
        batches = loop.plan(lengths, 16, seed=1, epoch=2, bucket=bucket)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        again = loop.plan(lengths, 16, seed=1, epoch=2, bucket=bucket)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    waste = {
        b: sum(
            len(x) * lengths[x].max() - lengths[x].sum() for x in loop.plan(lengths, 16, 1, 0, b)
        )
        for b in (True, False)
    }
    assert waste[True] < 0.1 * waste[False]
    assert all(len(b) >= 3 for b in loop.plan(lengths[:17], 16, 0, 0, world=3))


def untied_copy(ckpt: checkpoint.Checkpoint, path) -> str:
    """The fixture with separate input and output embeddings (a real untied checkpoint)."""
    model = ckpt.model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    checkpoint.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("tied", [True, False])
def test_pause_pretrain_trains_only_the_pause_rows(tiny_ckpt, tiny_ckpt_path, tmp_path, tied):
    src = str(tiny_ckpt_path) if tied else untied_copy(tiny_ckpt, tmp_path / "untied")
    before = checkpoint.load(src)
    after = run_stage(
        "pause-pretrain", src, tmp_path / "pp", "--lr", "1e-2", "--weight-decay", "0.1"
    )
    pid = after.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    a, b = before.model.state_dict(), after.model.state_dict()
    shared = a["lm_head.weight"].data_ptr() == a["model.embed_tokens.weight"].data_ptr()
    assert a.keys() == b.keys() and shared == tied
    for name in a:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            others = torch.ones(a[name].shape[0], dtype=torch.bool)
            others[pid] = False
            assert torch.equal(a[name][others], b[name][others]), name
            assert not torch.equal(a[name][pid], b[name][pid]), name
        else:
            assert torch.equal(a[name], b[name]), name


def test_pause_sft_init_strategies(stages):
    src = checkpoint.load(stages["pause-pretrain"])
    pid = src.tokenizer.convert_tokens_to_ids(tokens.PAUSE)
    groups = {g: torch.tensor(ids) for g, ids in backbone.token_groups(src.tokenizer).items()}
    rows = {}
    for how in registry.PAUSE_INITS:
        ckpt = checkpoint.load(stages["sft"])
        emb = ckpt.model.get_input_embeddings().weight
        untouched = emb.detach().clone()
        stages_mod.init_pause(ckpt, how, str(stages["pause-pretrain"]), seed=0)
        rows[how] = emb[pid].detach().clone()
        others = torch.arange(emb.shape[0]) != pid
        assert torch.equal(emb[others], untouched[others])
    learned = src.model.get_input_embeddings().weight[pid]
    assert torch.equal(rows["pretrained"], learned)
    emb = checkpoint.load(stages["sft"]).model.get_input_embeddings().weight.detach()
    assert torch.allclose(rows["mean-text"], emb[groups["text"]].mean(0), atol=1e-4)
    assert torch.allclose(rows["mean-sid"], emb[groups["sid"]].mean(0), atol=1e-4)
    assert not torch.allclose(rows["default"], emb[groups["text"]].mean(0), atol=1e-4)
    with pytest.raises(UserError, match="needs --pause-from"):
        stages_mod.init_pause(checkpoint.load(stages["sft"]), "pretrained")
    with pytest.raises(UserError, match="--pause-init: unknown value 'zeros'"):
        train.parse(["--stage", "pause-sft", "--from", "a", "--out", "b", "--pause-init", "zeros"])


@pytest.mark.parametrize(
    "layout",
    [[], ["--pack", "--pack-len", "256", "--batch-tokens", "1000"]],
    ids=["batch-size", "packed-token-budget"],
)
@pytest.mark.slow
def test_resume_after_kill_gives_identical_weights(stages, tmp_path, layout):
    longer = "--epochs 2 --save-every 3".split()  # after FAST: the later flag wins
    args = ["--stage", "sft", "--from", str(stages["cpt"]), *FAST, *longer, *layout]
    killed = tmp_path / "killed"
    # this checkout's package, not whichever one the venv has installed (a worktree shares main's
    # venv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, str(KILLER), "5", *args, "--out", str(killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (
        not killed.exists() and (trainstate.partial_dir(killed) / trainstate.STATE_FILE).is_file()
    )
    before = proc_wall_before_kill(killed)
    assert before > 0  # the killed segment saved the wall time it had spent
    resumed = train.main([*args, "--out", str(killed), "--resume"])
    straight = train.main([*args, "--out", str(tmp_path / "straight")])
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = (pd.read_csv(p / trainstate.LOG_FILE) for p in (killed, tmp_path / "straight"))
    assert list(log_a["step"]) == list(range(1, 9)) and np.array_equal(log_a["loss"], log_b["loss"])
    assert resumed.meta["timings"]["sft"]["steps"] == 8
    assert resumed.meta["timings"]["sft"]["wall_s"] > before  # both segments count


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_state(stages, tmp_path, capsys):
    out = tmp_path / "boom"
    boom = "--epochs 4 --lr 1e6 --warmup-ratio 0 --grad-clip 0 --save-every 1".split()
    argv = ["--stage", "sft", "--from", str(stages["cpt"]), "--out", str(out), *FAST, *boom]
    assert cli.run(train.main, argv) == 2
    err = "\n".join(
        ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Loading" not in ln
    )
    assert (
        len(err.splitlines()) == 1
        and err.startswith("error: training stopped:")
        and "lower --lr" in err
    )
    assert not out.exists()
    state = torch.load(trainstate.partial_dir(out) / trainstate.STATE_FILE, weights_only=False)
    step = state["progress"]["step"]
    assert 1 <= step < 16 and f"state (step {step})" in err
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_config_errors_are_user_errors(stages, tmp_path, capsys):
    base = ["--stage", "sft", "--from", str(stages["cpt"]), "--out", str(tmp_path / "x")]
    preset = tmp_path / "p.toml"
    for body, msg in [
        ("[train.sft]\nepochz = 3\n", "epochz"),
        ("[train.sft]\nepochs = 'three'\n", "epochs"),
        ("[train.sft]\nlr = true\n", "lr"),
    ]:
        preset.write_text(body)
        with pytest.raises(UserError, match=msg):
            train.parse([*base, "--preset", str(preset)])
    for argv, msg in [
        ([*base, "--bogus", "1"], "unrecognized"),
        (base[2:], "needs --stage"),
        ([*base, "--epochs", "two"], "not a int"),
        ([*base[:4], "--out", str(stages["cpt"])], "overlaps the input"),
        ([*base, "--lr", "nan"], "not a finite number"),
        ([*base, "--n-train", "-1"], "minimum 0"),
        ([*base, "--warmup-ratio", "2"], "maximum 1.0"),
        ([*base, "--control", "think-only"], "is a pause-sft control"),
        (["--stage", "pause-sft", *base[2:], "--n-pauses", "0"], "--control think-only"),
        (["--stage", "cot-sft", *base[2:], "--layout", "stream"], "--layout exact"),
        ([*base, "--layout", "exact", "--pack"], "never packed"),
        (["--stage", "cpt", *base[2:], "--layout", "stream"], "next-item stages"),
        ([*base, "--layout", "tree"], "unknown value 'tree'"),
        ([*base, "--train-targets", "some"], "unknown value 'some'"),
    ]:
        assert cli.run(train.main, argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err and len(err.strip().splitlines()) == 1
    preset.write_text("[train.sft]\nepochs = 7\nlr = 0.5\n")
    args = train.parse([*base, "--preset", str(preset), "--lr", "0.25"])
    assert (args.epochs, args.lr) == (7, 0.25)
    paper = train.parse(["--stage", "pause-sft", "--from", "a", "--out", "b"])
    assert (paper.n_pauses, paper.epochs, paper.lr, paper.weight_decay) == (5, 5, 5e-5, 0.01)
    # old flag
    assert (
        train.parse(["--stage", "pause-sft", "--from", "a", "--out", "b", "--k", "3"]).n_pauses == 3
    )
    assert json.loads(json.dumps(to_dict(paper)))["stage"] == "pause-sft"


@pytest.mark.slow
def test_cot_sft_reads_a_rationale_file(stages, tmp_path):
    """The path for model-written rationales: `pauserec rationales` writes them, cot-sft reads
    them."""
    path = tmp_path / "r.jsonl"
    rationales.main(
        ["--ckpt", str(stages["sft"]), "--out", str(path), "--source", "template-leaky"]
    )
    ckpt = run_stage("cot-sft", stages["sft"], tmp_path / "cot", "--rationale-file", str(path))
    assert ckpt.meta["rationale"] == {
        "source": "template-leaky",
        "leaky": True,
        "file": str(path),
        "n": 32,
    }
    used = rationales.read(tmp_path / "cot" / "rationales.jsonl")
    known = rationales.read(path)
    assert len(used) == 32 and all(known[ex] == r for ex, r in used.items())
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(UserError, match="have no rationale"):
        run_stage("cot-sft", stages["sft"], tmp_path / "cot2", "--rationale-file", str(path))


@pytest.mark.parametrize(
    "control, variant, n_pauses, cell",
    [
        ("think-only", "pause", 0, "think-only"),
        ("sft-continued", "plain", 0, "sft-continued"),
        ("filler", "pause", 3, "filler-k3"),
    ],
)
@pytest.mark.slow
def test_compute_matched_controls_use_the_pause_sft_recipe(
    stages, tmp_path, control, variant, n_pauses, cell
):
    ckpt = run_stage(
        "pause-sft", stages["sft"], tmp_path / control, "--control", control, "--n-pauses", "3"
    )
    meta = ckpt.meta
    assert (meta["variant"], meta["n_pauses"], meta["cell"], meta["control"]) == (
        variant,
        n_pauses,
        cell,
        control,
    )
    recipe = (
        "from_ckpt",
        "epochs",
        "lr",
        "n_train",
        "batch_size",
        "seed",
        "weight_decay",
        "train_targets",
    )
    ref = checkpoint.read_meta(stages["pause-sft"])["configs"]["pause-sft"]
    assert {k: meta["configs"]["pause-sft"][k] for k in recipe} == {k: ref[k] for k in recipe}
    # the same data
    assert meta["configs"]["pause-sft"]["corpus"]["used"] == ref["corpus"]["used"] == 32
    builder = PromptBuilder.for_checkpoint(ckpt)
    enc = builder.encode((1, 2), 3, variant, n_pauses)
    think = [t for t, s in zip(enc.input_ids, enc.segments) if s in ("think", "pause")]
    if control == "filler":
        filler = ckpt.tokenizer.convert_tokens_to_ids(meta["pause_token"])
        assert think[1:-1] == [filler] * 3 and filler != ckpt.tokenizer.convert_tokens_to_ids(
            tokens.PAUSE
        )
    else:
        assert len(think) == (2 if control == "think-only" else 0)


@pytest.mark.slow
def test_one_training_seed_repeats_exactly_and_two_seeds_differ(stages, tmp_path):
    a, b, c = (
        run_stage("sft", stages["cpt"], tmp_path / name, "--seed", seed)
        for name, seed in (("a", "1"), ("b", "1"), ("c", "2"))
    )
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (a.meta["train_seed"], c.meta["train_seed"]) == (1, 2)


@pytest.mark.slow
def test_paper_training_targets_are_one_per_user(stages, tmp_path):
    last = "--train-targets last --n-train 0 --max-steps 1".split()
    ckpt = run_stage("sft", stages["cpt"], tmp_path / "last", *last)
    info = ckpt.meta["configs"]["sft"]["corpus"]
    assert ckpt.meta["train_targets"] == "last" and info["available"] == info["used"] == 943


def test_layouts_train_every_target_and_validation_recall_is_logged(stages, tmp_path):
    """sft in the stream and exact layouts: the checkpoint records its layout, trains every target
    of its windows, decodes in its prompt format, and keeps the validation curve (resumable with the
    state)."""
    cfg = ["--train-targets", "windows", "--valid-every", "2", "--valid-users", "12"]
    for layout in ("stream", "exact"):
        ck = run_stage("sft", stages["cpt"], tmp_path / layout, "--layout", layout, *cfg)
        t = ck.meta["timings"]["sft"]
        assert ck.meta["layout"] == layout and ck.identity()["layout"] == layout
        # several targets per sequence
        assert t["targets"] > t["steps"] * 8 and t["targets_per_s"] > 0
        assert PromptBuilder.for_checkpoint(ck).format == (
            "stream" if layout == "stream" else "prompt"
        )
        valid = pd.read_csv(tmp_path / layout / trainstate.VALID_FILE)
        # every 2 steps and the last
        assert valid["step"].tolist() == [2, 4] and (valid["users"] == 12).all()
        assert valid["targets"].is_monotonic_increasing and valid["recall@10"].between(0, 1).all()
        # most-popular on the same users, every time
        assert valid["popular_recall@10"].nunique() == 1


def test_the_first_stage_redraws_the_init_checkpoints_random_parts_from_its_seed(tiny_ckpt_path):
    """The init checkpoint (and its SIDs) is shared by every training seed; its random parts are
    not: the new token rows, and every weight of a backbone trained from scratch, come from the
    training seed."""

    def drawn(seed: int, backbone_name: str) -> checkpoint.Checkpoint:
        ck = checkpoint.load(tiny_ckpt_path)
        ck.meta["backbone"] = backbone_name
        stages_mod.reseed(ck, seed)
        return ck

    sid = checkpoint.load(tiny_ckpt_path).tokenizer.convert_tokens_to_ids("<a_0>")
    rows = lambda ck: ck.model.get_input_embeddings().weight  # noqa: E731
    layer = lambda ck: ck.model.model.layers[0].mlp.up_proj.weight  # noqa: E731
    a, b, c = drawn(0, "tiny"), drawn(0, "tiny"), drawn(1, "tiny")
    assert torch.equal(rows(a), rows(b)) and not torch.equal(rows(a)[sid], rows(c)[sid])
    assert torch.equal(layer(a), layer(c))  # a (stand-in for a) pretrained model keeps its weights
    s0, s1 = drawn(0, "compact"), drawn(1, "compact")
    assert not torch.equal(layer(s0), layer(s1)) and torch.equal(
        layer(s0), layer(drawn(0, "compact"))
    )
    assert abs(float(layer(s1).std()) - s1.model.config.initializer_range) < 0.005
