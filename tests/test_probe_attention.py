"""probes.attention: bridge vs HF eager, the CLI contract, and known answers planted in a tiny
model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import probe_argv
from pauserec import cli, files, tokens
from pauserec.evaluation import evaluate
from pauserec.model.prompts import PromptBuilder
from probes import activations as act
from probes import attention, interventions
from probes.relevance import by_position, within_user_corr


def args(**kw) -> attention.Args:
    return attention.Args(
        **{"n_users": 12, "n_perm": 20, "batch_size": 4, "seed": 0, "variant": "pause", **kw}
    )


@pytest.mark.numeric
def test_bridge_patterns_and_residuals_match_hf_eager(tiny_ckpt_path):
    from pauserec.model import checkpoint

    ckpt = checkpoint.load(tiny_ckpt_path, attn_implementation="eager")
    builder = PromptBuilder(ckpt.tokenizer, ckpt.catalog)
    examples = evaluate.examples_for(ckpt, n_users=3)
    ids, _ = act.pad_right(
        [builder.encode(ex.history, ex.target, "pause", 3).input_ids for ex in examples]
    )
    hf = act.hf_attentions(ckpt.model, ids)  # asserts n_layers patterns came back
    n_layers = ckpt.model.config.num_hidden_layers
    assert hf.shape[:3] == (n_layers, 3, ckpt.model.config.num_attention_heads)
    bridge = act.boot_bridge(ckpt.model, ckpt.tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(
            ids, names_filter=lambda n: n.endswith(("hook_pattern", "hook_resid_post"))
        )
    for layer in range(n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], hf[layer])
    resid = act.residual_stream(ckpt.model, ids)  # (n_layers + 1, batch, pos, d_model), raw
    for layer in range(n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], resid[layer + 1])
    with torch.no_grad():
        hidden = ckpt.model(ids, output_hidden_states=True).hidden_states
    # HF's last is normed
    torch.testing.assert_close(act.final_norm(ckpt.model)(resid[-1]), hidden[-1])
    assert not torch.allclose(resid[-1], hidden[-1])


def test_auto_probes_a_base_checkpoint_with_its_plain_prompt(tiny_ckpt):
    assert tiny_ckpt.variant == "base"
    # as evaluate decodes it
    assert attention.resolve_variant(tiny_ckpt, args(variant="auto"))[0] == "plain"


def test_main_writes_tidy_results(tiny_ckpt_path, tmp_path):
    out = tmp_path / "att"
    flags = "--n-users 8 --n-perm 10 --dtype fp32 --variant pause"
    df = attention.main(probe_argv(tiny_ckpt_path, out, flags))
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["probe"] == "attention"
        and meta["dtype"] == "fp32"
        and meta["checkpoints"][0]["cell"] == "init"
    )
    assert sorted(p.name for p in out.iterdir()) == [files.MARKER, "meta.json", "results.csv"]
    assert len(pd.read_csv(out / "results.csv")) == len(df)
    # a base checkpoint probed with 5 pauses
    assert set(df["prompt"]) == {"pause"} and set(df["prompt_pauses"]) == {5}
    mass = df[df["metric"].isin(["attn_mass", "attn_mass_sid"])]
    sums = mass.groupby(["metric", "layer", "head", "pos"])["value"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)  # every query's attention is split over the segments
    assert set(mass["segment"]) == set(attention.SEGMENTS)
    pause = mass[mass["metric"] == "attn_mass"].set_index(["segment"])["value"]
    # causal; sees itself
    assert (pause.loc["target"] == 0).all() and (pause.loc["pause"] > 0).all()
    sid = mass[(mass["metric"] == "attn_mass_sid")]
    assert (sid[(sid["pos"] == 0) & (sid["segment"] == "target")]["value"] == 0).all()
    assert (sid[(sid["pos"] > 0) & (sid["segment"] == "target")]["value"] > 0).all()
    lens = df[df["metric"] == "lens_rank"]
    assert (
        len(lens) == 8 * 5 * 2
        and lens["value"].between(1, len(set(c[0] for c in _catalog_sids(tiny_ckpt_path)))).all()
    )
    assert {"relevance_corr", "relevance_corr_partial_baseline", "lens_first_top1_layer"} <= set(
        df["metric"]
    )


def test_cot_and_plain_prompts_have_no_pause_queries(tiny_ckpt):
    cot = attention.compute(tiny_ckpt, args(n_users=4, variant="cot"))
    assert not (cot["metric"] == "attn_mass").any() and not (cot["metric"] == "lens_rank").any()
    rationale = cot[(cot["metric"] == "attn_mass_sid") & (cot["segment"] == "rationale")]["value"]
    assert (rationale > 0).all()  # the template rationale sits between the history and the SID
    plain = attention.compute(tiny_ckpt, args(n_users=4, variant="plain"))
    assert (
        set(plain["prompt_pauses"]) == {0}
        and (plain[plain["segment"] == "pause"]["value"] == 0).all()
    )


def _catalog_sids(path):
    from pauserec.model.catalog import Catalog

    return [it.sid for it in Catalog.read(path / "items.jsonl").items]


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    code = cli.run(attention.main, [str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err


def test_lens_at_the_last_layer_is_the_models_own_ranking(tiny_ckpt):
    torch.manual_seed(0)
    _random_sid_rows(tiny_ckpt)
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    examples = evaluate.examples_for(tiny_ckpt, n_users=6)
    encs = attention.encode_all(builder, examples, "pause", 3)
    lens = attention.lens_targets(builder, examples)
    rec = attention.record(tiny_ckpt, encs, lens, 3, batch_size=4)
    # (users, 3 + n_levels)
    last = torch.cat(rec.ranks[tiny_ckpt.model.config.num_hidden_layers - 1])
    for u, e in enumerate(encs):
        with torch.no_grad():
            logits = tiny_ckpt.model(torch.tensor([e.input_ids])).logits[0]
        for j in range(lens.target.shape[1]):  # SID step j is predicted at prompt_len - 1 + j
            row = logits[e.prompt_len - 1 + j]
            cands = lens.level0 if j == 0 else lens.cands[u][j]
            assert int(last[u, 3 + j]) == 1 + int((row[cands] > row[lens.target[u, j]]).sum())


@torch.no_grad()
def _random_sid_rows(ckpt) -> None:
    """Distinct SID output rows of one norm (a fresh init-ckpt has them all near one mean
    vector)."""
    w = ckpt.model.get_output_embeddings().weight
    ids = ckpt.tokenizer.convert_tokens_to_ids(ckpt.catalog.sid_tokens())
    w[ids] = (
        torch.nn.functional.normalize(torch.randn(len(ids), w.shape[1]), dim=1)
        * w.norm(dim=1).mean()
    )


@torch.no_grad()
def _attend_to_pauses(ckpt, layer: int, strength: float = 5.0) -> None:
    """Make every head of ``layer`` attend to ``<pause>`` keys: an always-on feature (embedding
    dim 0) drives the queries, a pause-only feature (dim 1) the keys, both on the slowest rotary
    pair."""
    model, cfg = ckpt.model, ckpt.model.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    slow = d_head // 2 - 1  # rotate_half pairs (i, i + d_head/2); the last pair barely rotates
    emb = model.get_input_embeddings().weight
    emb[:, :2] = 0.0
    emb[:, 0] = 1.0
    emb[ckpt.tokenizer.convert_tokens_to_ids(tokens.PAUSE), 1] = 1.0
    attn = model.model.layers[layer].self_attn
    attn.q_proj.weight.zero_()
    attn.k_proj.weight.zero_()
    for h in range(cfg.num_attention_heads):
        attn.q_proj.weight[h * d_head + slow, 0] = strength
    for g in range(cfg.num_key_value_heads):
        attn.k_proj.weight[g * d_head + slow, 1] = strength


def test_planted_attention_onto_pauses_is_reported_as_mass_one(tiny_ckpt):
    _attend_to_pauses(tiny_ckpt, layer=1)
    df = attention.compute(tiny_ckpt, args(n_pauses=4))
    mass = df[df["segment"] == "pause"].groupby(["metric", "layer"])["value"].agg(["min", "mean"])
    assert mass.loc[("attn_mass", 1), "min"] > 0.99 and mass.loc[("attn_mass_sid", 1), "min"] > 0.99
    assert mass.loc[("attn_mass_sid", 0), "mean"] < 0.5  # the untouched layer is not
    late = df[(df["metric"] == "attn_mass_late") & (df["layer"] == 1)].set_index("segment")["value"]
    assert late["pause"] > 0.99


@pytest.mark.parametrize("layer", [0, 1])
def test_planted_logit_lens_signal_is_found_at_its_layer(tiny_ckpt, layer):
    torch.manual_seed(0)
    _random_sid_rows(tiny_ckpt)
    model, tok = tiny_ckpt.model, tiny_ckpt.tokenizer
    examples = evaluate.examples_for(tiny_ckpt, n_users=400)
    code = max(
        set(c := [tiny_ckpt.catalog.items[ex.target].sid[0] for ex in examples]), key=c.count
    )
    examples = [ex for ex in examples if tiny_ckpt.catalog.items[ex.target].sid[0] == code][:8]
    direction = (
        model.get_output_embeddings().weight[tok.convert_tokens_to_ids(code)].detach().clone()
    )
    pause_id, seen = tok.convert_tokens_to_ids(tokens.PAUSE), {}
    hooks = [
        model.get_input_embeddings().register_forward_hook(lambda m, a, o: seen.update(ids=a[0])),
        model.model.layers[layer].register_forward_hook(
            lambda m, a, o: o + 100.0 * (seen["ids"] == pause_id)[..., None] * direction
        ),
    ]
    try:  # the hooks travel with the model copy inside the TransformerLens bridge
        df = attention.compute(tiny_ckpt, args(n_pauses=3), examples=examples)
    finally:
        for h in hooks:
            h.remove()
    top1 = df[df["metric"] == "lens_top1"].groupby("layer")["value"].mean()
    assert top1[layer] == 1.0 and (top1[:layer] < 0.5).all()
    first = df[df["metric"] == "lens_first_top1_layer"]["value"]
    assert len(first) == 3 and (first == layer).all()


def test_relevance_correlation_known_answers():
    rng = np.random.default_rng(0)
    valid = np.ones((200, 10), bool)
    valid[:50, 7:] = False
    rel = rng.integers(0, 3, (200, 10)).astype(float)
    assert within_user_corr(rel[None] * 2 + 1, rel, valid)[0] == pytest.approx(1.0)
    assert abs(within_user_corr(rng.normal(size=(1, 200, 10)), rel, valid)[0]) < 0.1
    # attention that only follows position looks "relevant" when relevance follows recency too...
    lengths = valid.sum(1, keepdims=True)
    recency = lengths - 1 - np.arange(10)[None]
    att = (np.exp(-recency.astype(float)) + 0.1 * (np.arange(10)[None] == 0)) * valid
    rel = (recency < 2) + rng.normal(0, 0.5, (200, 10))
    assert within_user_corr(att[None], rel, valid)[0] > 0.3
    # ...and the position-adjusted (partial) correlation sees through it, yet keeps a real signal
    cell = lengths * 10 + np.arange(10)[None]

    def partial(a, r):
        return within_user_corr(by_position(a, cell, valid), by_position(r, cell, valid), valid)[0]

    assert abs(partial(att[None], rel)) < 0.1
    assert partial(att[None] + 0.5 * rel[None], rel) > 0.5


def test_interventions_pair_users_and_restore_the_pause_row(tiny_ckpt):
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    examples = evaluate.examples_for(tiny_ckpt, n_users=6)
    weight = tiny_ckpt.model.get_input_embeddings().weight
    before = weight.detach().clone()
    rows = pd.DataFrame(
        interventions.run(
            tiny_ckpt, builder, examples, "pause", 2, beams=10, batch_size=4, n_boot=200, seed=0
        )
    )
    assert torch.equal(weight, before)
    assert set(rows["intervention"]) == set(interventions.CONDITIONS)
    per = rows[rows["metric"] == "recall@10"].pivot(
        index="user_id", columns="intervention", values="value"
    )
    delta = rows[rows["metric"] == "intervention_delta_recall@10"].pivot(
        index="user_id", columns="intervention", values="value"
    )
    assert np.allclose(delta["no-pause"], per["no-pause"] - per["none"])
    lp = rows[rows["metric"] == "target_logprob"].pivot(
        index="user_id", columns="intervention", values="value"
    )
    assert (lp < 0).all().all() and lp.shape == (6, len(interventions.CONDITIONS))
    s = rows[rows["metric"].str.endswith(("_mean", "_lo", "_hi"))].set_index(
        ["intervention", "metric"]
    )["value"]
    for cond in interventions.CONDITIONS[1:]:
        lo, mean, hi = (s[(cond, f"intervention_delta_ndcg@10_{x}")] for x in ("lo", "mean", "hi"))
        assert lo <= mean <= hi
    with pytest.raises(RuntimeError), interventions.pause_row(tiny_ckpt, "zeros"):
        assert weight[builder.pause_id].abs().sum() == 0
        raise RuntimeError("boom")
    assert torch.equal(weight, before)


@torch.no_grad()
@pytest.mark.numeric
def test_target_logprob_matches_decode_scoring_with_and_without_masked_pauses(tiny_ckpt):
    """Teacher-forced scoring in one pass equals decode's step-by-step path (KV cache, key mask)."""
    from pauserec.decoding import prefill, score_continuations

    model = tiny_ckpt.model
    builder = PromptBuilder(tiny_ckpt.tokenizer, tiny_ckpt.catalog)
    examples = evaluate.examples_for(tiny_ckpt, n_users=4)
    plain = interventions.target_logprob(tiny_ckpt, builder, examples, "none", 3, batch_size=3)
    masked = interventions.target_logprob(
        tiny_ckpt, builder, examples, "mask-pause", 3, batch_size=3
    )
    for u, ex in enumerate(examples):
        e = builder.encode(ex.history, ex.target, "pause", 3)
        prompt, target = e.input_ids[: e.prompt_len], e.input_ids[e.prompt_len :]
        assert plain[u] == pytest.approx(
            score_continuations(model, [prompt], [[target]])[0][0], abs=1e-4
        )
        keys = [0 if s == "pause" else 1 for s in e.segments[: e.prompt_len]]
        logits, cache, attn = prefill(model, [prompt], [keys])  # pauses hidden, positions unchanged
        total = float(torch.log_softmax(logits[0], -1)[target[0]])
        for j, tok in enumerate(target[:-1]):
            attn = torch.cat([attn, attn.new_ones((1, 1))], 1)
            out = model(
                input_ids=torch.tensor([[tok]]),
                attention_mask=attn,
                cache=cache,
                use_cache=True,
                position_ids=torch.tensor([[len(prompt) + j]]),
            )
            total += float(torch.log_softmax(out.logits[0, -1].float(), -1)[target[j + 1]])
            cache = out.cache
        assert masked[u] == pytest.approx(total, abs=1e-4)


@pytest.mark.slow
def test_smollm2_bridge_matches_eager_and_probe_runs(tmp_path):
    """The real backbone: TransformerLens patterns equal HF eager ones; the probe runs end to
    end."""
    from pauserec.model import checkpoint, init_ckpt

    path = tmp_path / "init"
    init_ckpt.main(["--backbone", "smollm2-135m", "--dataset", "ml-100k", "--out", str(path)])
    ckpt = checkpoint.load(path, attn_implementation="eager")
    builder = PromptBuilder(ckpt.tokenizer, ckpt.catalog)
    ex = evaluate.examples_for(ckpt, n_users=1)[0]
    ids = torch.tensor([builder.encode(ex.history[-5:], ex.target, "pause", 3).input_ids])
    hf = act.hf_attentions(ckpt.model, ids)
    assert hf.shape[0] == 30
    bridge = act.boot_bridge(ckpt.model, ckpt.tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in (0, 14, 29):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.attn.hook_pattern"], hf[layer], atol=1e-4, rtol=1e-3
        )
    df = attention.compute(ckpt, args(n_users=4, n_perm=5))
    assert df[df["metric"] == "attn_mass"]["layer"].nunique() == 30
