"""Decoding on the tiny fixture checkpoint, with its embeddings re-drawn so scores are not
near-tied."""

import numpy as np
import pytest
import torch

from pauserec import data
from pauserec.decoding import (
    Trie,
    beam_search,
    generate,
    recommend,
    score_continuations,
    think_then_search,
)
from pauserec.model import checkpoint
from pauserec.model.prompts import PromptBuilder

pytestmark = pytest.mark.numeric  # layouts of one computation: also run under AVX2 kernels


@pytest.fixture(scope="module")
def spread(tiny_ckpt_path):
    """(checkpoint, builder, test histories of mixed lengths): a fixed random model, distinct
    scores."""
    ckpt = checkpoint.load(tiny_ckpt_path)
    with torch.no_grad():
        ckpt.model.get_input_embeddings().weight.copy_(
            torch.randn(
                ckpt.model.get_input_embeddings().weight.shape,
                generator=torch.Generator().manual_seed(0),
            )
        )
    ds = data.load_dataset("ml-100k")
    tests = data.split(ds, 20)["test"]
    histories = [ex.history[: 1 + (i * 5) % 20] for i, ex in enumerate(tests[:17])]
    return ckpt, PromptBuilder(ckpt.tokenizer, ckpt.catalog), histories


def full_logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_generate_is_greedy_and_batch_independent(spread):
    ckpt, builder, hs = spread
    prompts = [builder.encode(h).input_ids for h in hs[:5]]
    batched = generate(ckpt.model, ckpt.tokenizer, prompts, max_new_tokens=6, stop_ids=[])
    for prompt, got in zip(prompts, batched):
        ids = list(prompt)
        for _ in range(6):  # naive greedy: full forward, argmax
            ids.append(int(full_logprobs(ckpt.model, ids)[-1].argmax()))
        assert got == ids[len(prompt) :]
    first = batched[0][0]
    # stop excluded
    assert generate(ckpt.model, ckpt.tokenizer, prompts[:1], 6, stop_ids=[first]) == [[]]


def test_score_continuations_matches_full_forward(spread):
    ckpt, builder, hs = spread
    prompts = [builder.encode(h).input_ids for h in hs[:2]]
    cands = [[builder.item_ids[3], builder.item_ids[40], [5, 6], []]] * 2
    got = score_continuations(ckpt.model, prompts, cands, batch_size=3)
    for prompt, cs, scores in zip(prompts, cands, got):
        for cand, score in zip(cs, scores):
            lp = full_logprobs(ckpt.model, prompt + cand)
            want = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(cand))
            assert score == pytest.approx(want, abs=1e-4)


def test_trie_tables_known_answer():
    trie = Trie([[1, 5, 9], [1, 5, 8], [1, 6, 9], [2, 5, 9]])
    assert trie.sizes == [1, 2, 3, 4]
    assert trie.tok[0].tolist() == [[1, 2]] and trie.nxt[0].tolist() == [[0, 1]]
    assert trie.tok[1].tolist() == [[5, 6], [5, 0]] and trie.ok[1].tolist() == [
        [True, True],
        [True, False],
    ]
    # level-2 prefixes (1,5) (1,6) (2,5); their children are items, so nxt holds item indices
    assert trie.tok[2].tolist() == [[8, 9], [9, 0], [9, 0]]
    assert trie.nxt[2].tolist() == [[1, 0], [2, 0], [3, 0]]
    assert trie.ok[2].sum().item() == 4


def reference_beam_search(model, builder, prompt, beams):
    """Trie-constrained beam search written the slow, obvious way: score every child of every
    beam."""
    sids = [tuple(s) for s in builder.item_ids]
    live = [()]
    for level in range(len(sids[0])):
        kids = sorted({s[: level + 1] for s in sids if s[:level] in set(live)})
        scores = score_continuations(model, [prompt], [[list(k) for k in kids]], batch_size=1024)[0]
        order = np.argsort(-scores, kind="stable")[:beams]
        live = [kids[i] for i in order]
    return [sids.index(s) for s in live], np.sort(scores)[::-1][:beams]


def test_beam_search_matches_reference_and_exhaustive(spread):
    ckpt, builder, hs = spread
    prompt = builder.encode(hs[3]).input_ids
    got = recommend(ckpt.model, builder, [hs[3]], beams=6, top_k=6)
    want, want_scores = reference_beam_search(ckpt.model, builder, prompt, 6)
    assert got.items[0].tolist() == want
    np.testing.assert_allclose(got.scores[0], want_scores, atol=1e-4)
    # beams >= items at every level: beam search is exhaustive, so it returns exhaustive scoring's
    # top-K
    full = recommend(ckpt.model, builder, hs[:2], beams=len(ckpt.catalog), top_k=10)
    exhaustive = score_continuations(
        ckpt.model,
        [builder.encode(h).input_ids for h in hs[:2]],
        [builder.item_ids] * 2,
        batch_size=1024,
    )
    for u in range(2):
        assert full.items[u].tolist() == np.argsort(-exhaustive[u], kind="stable")[:10].tolist()


@pytest.mark.parametrize("variant", ["plain", "pause", "cot"])
def test_identical_across_batch_sizes_and_inside_catalog(spread, variant):
    ckpt, builder, hs = spread
    hs = hs[:7] if variant == "cot" else hs  # cot generates first; keep it short
    runs = [
        recommend(
            ckpt.model,
            builder,
            hs,
            variant=variant,
            n_pauses=3,
            batch_size=bs,
            cot_max_new_tokens=4,
        )
        for bs in (1, 3, 16)
    ]
    for r in runs[1:]:
        assert np.array_equal(r.items, runs[0].items)
        np.testing.assert_allclose(r.scores, runs[0].scores, atol=1e-4)
    r = runs[0]
    assert r.items.shape == (len(hs), 10) and r.invalid_rate == 0.0
    assert ((r.items >= 0) & (r.items < len(ckpt.catalog))).all()
    assert all(len(set(row)) == len(row) for row in r.items.tolist())  # distinct items per user
    assert (np.diff(r.scores, axis=1) <= 1e-6).all() and (r.scores <= 0).all()
    assert (r.rationales is not None) == (variant == "cot")


def test_prompt_variant_changes_the_answer_and_rationales_are_teacher_forced(spread):
    ckpt, builder, hs = spread
    plain = recommend(ckpt.model, builder, hs[:4])
    pause = recommend(ckpt.model, builder, hs[:4], variant="pause", n_pauses=5)
    assert not np.array_equal(plain.scores, pause.scores)
    forced = recommend(
        ckpt.model, builder, hs[:2], variant="cot", rationales=["likes drama", "likes war"]
    )
    assert forced.rationales == ["likes drama", "likes war"]
    prompt = builder.encode(hs[0], variant="cot", rationale="likes drama").input_ids
    exhaustive = score_continuations(ckpt.model, [prompt], [builder.item_ids], batch_size=1024)[0]
    # that prompt
    np.testing.assert_allclose(forced.scores[0], exhaustive[forced.items[0]], atol=1e-4)


def test_generation_config_cannot_shrink_beams(spread):
    ckpt, builder, hs = spread
    before = recommend(ckpt.model, builder, hs[:4], beams=12, top_k=12)
    gc = ckpt.model.generation_config
    gc.do_sample, gc.top_k, gc.top_p, gc.temperature, gc.num_beams = True, 2, 0.1, 5.0, 1
    after = recommend(ckpt.model, builder, hs[:4], beams=12, top_k=12)
    assert np.array_equal(before.items, after.items) and np.isfinite(after.scores).all()


def test_mask_segments_hides_history(spread):
    ckpt, builder, hs = spread
    hidden = recommend(ckpt.model, builder, hs[5:8], mask_segments={"history", "sep"})
    assert not np.array_equal(hidden.scores, recommend(ckpt.model, builder, hs[5:8]).scores)
    # with every history token hidden, only the prompt length still differs between users
    same_len = [hs[5], tuple(reversed(hs[5]))]
    again = recommend(ckpt.model, builder, same_len, mask_segments={"history", "sep"})
    assert np.array_equal(again.items[0], again.items[1])


def test_unconstrained_reports_invalid_sids(spread):
    ckpt, builder, hs = spread
    prompts = [builder.encode(h).input_ids for h in hs[:3]]
    toks, _, _ = beam_search(ckpt.model, prompts, Trie(builder.item_ids), 10, constrained=False)
    free = recommend(ckpt.model, builder, hs[:3], beams=10, constrained=False)
    lookup = {tuple(s): i for i, s in enumerate(builder.item_ids)}
    want = [[lookup.get(tuple(t), -1) for t in user] for user in toks.tolist()]
    assert free.items.tolist() == want
    assert free.invalid_rate == pytest.approx(float((free.items < 0).mean()))
    assert free.invalid_rate > 0  # a random model is not restricted to catalog SIDs
    trie_top = recommend(ckpt.model, builder, hs[:3], beams=10)
    # the random model is far surer of word tokens than of any SID, so the free path scores higher
    assert (free.scores[:, 0] > trie_top.scores[:, 0]).all()


def test_bad_arguments_are_user_errors(spread):
    from pauserec.errors import UserError

    ckpt, builder, hs = spread
    with pytest.raises(UserError):
        recommend(ckpt.model, builder, hs[:1], top_k=30, beams=20)
    with pytest.raises(UserError):
        recommend(ckpt.model, builder, hs[:1], variant="loud")


def test_cot_search_continues_from_the_rationales_cache(spread):
    """Generated CoT: searching on the generation's KV cache gives what re-reading prompt +
    rationale gives, even when the rows of a batch stop thinking at different steps (finished rows
    feed no keys)."""
    from pauserec.decoding import generate_state

    ckpt, builder, hs = spread
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in hs[:6]]
    stops = {builder.think_close, ckpt.tokenizer.eos_token_id}
    (toks, items, score), made = think_then_search(
        ckpt.model, builder, starts, Trie(builder.item_ids), 10, 6
    )
    alone = [generate_state(ckpt.model, [s], 6, stops)[0][0] for s in starts]
    assert made == alone  # batching does not change any row's rationale
    full = [s + m + [builder.think_close] for s, m in zip(starts, made)]
    ref_toks, ref_items, ref_score = beam_search(ckpt.model, full, Trie(builder.item_ids), 10)
    assert torch.equal(items, ref_items) and torch.equal(toks, ref_toks)
    torch.testing.assert_close(score, ref_score, atol=1e-4, rtol=1e-4)
    recs = recommend(ckpt.model, builder, hs[:6], variant="cot", beams=10, cot_max_new_tokens=6)
    assert recs.rationales == [ckpt.tokenizer.decode(m).strip() for m in made]


def test_cot_search_when_every_row_stops_thinking_at_once(tiny_ckpt_path):
    """A model that closes the think block at once: empty rationales, and the search continues from
    the prompt's own cache exactly as re-reading prompt + </think> would."""
    from pauserec.decoding import generate_state

    ckpt = checkpoint.load(tiny_ckpt_path)
    with torch.no_grad():  # distinct item scores, as in the spread fixture
        w = ckpt.model.get_input_embeddings().weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
    builder = PromptBuilder(ckpt.tokenizer, ckpt.catalog)
    hs = [ex.history[-3:] for ex in data.split(data.load_dataset("ml-100k"), 20)["test"][:4]]
    starts = [builder.encode(h, variant="cot", rationale=[]).input_ids[:-1] for h in hs]
    first = {m[0] for m in generate_state(ckpt.model, starts, 1, set())[0]}
    with torch.no_grad():  # tied head: </think> now outscores what the random model would say first
        w[builder.think_close] = 1.5 * w[first.pop()]
    assert not first  # (every row would have said the same token)
    (toks, items, score), made = think_then_search(
        ckpt.model, builder, starts, Trie(builder.item_ids), 8, 5
    )
    assert made == [[]] * 4
    ref = beam_search(
        ckpt.model, [s + [builder.think_close] for s in starts], Trie(builder.item_ids), 8
    )
    assert torch.equal(items, ref[1])
    torch.testing.assert_close(score, ref[2], atol=1e-4, rtol=1e-4)
