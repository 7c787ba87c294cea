import pytest
import torch

from pauserec import tokens
from pauserec.errors import UserError
from pauserec.model import backbone


def _tiny(tied=True):
    return backbone.load_backbone(
        "tiny" if tied else "tiny-untied", corpus=["red shoes and blue hats"]
    )


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean-all", "mean-text", "default"])
def test_added_rows_follow_the_init_strategy(tied, init):
    model, tok = _tiny(tied)
    text_ids = backbone.token_groups(tok)["text"]
    emb = model.get_input_embeddings().weight
    text_mean = emb[text_ids].mean(0).detach().clone()
    ids = backbone.add_tokens(model, tok, tokens.special_tokens([3, 2]), init=init, seed=0)
    emb = model.get_input_embeddings().weight
    assert len(ids) == 3 + 2 + 3 and len(set(ids)) == len(ids)
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<a_0>", "<a_1>"]
    assert model.get_output_embeddings().weight.shape[0] == emb.shape[0]
    new = emb[ids].detach()
    if init == "default":
        assert new.std(0).mean() > 1e-3  # sampled, not collapsed to a point
    else:
        # mean (all = text here) + ~0 noise
        assert torch.allclose(new, text_mean.expand_as(new), atol=1e-3)
        assert new.var(0).max() < 1e-6
    # the untied output rows are initialised by the same strategy, from the output rows
    if not tied:
        out = model.get_output_embeddings().weight
        out_new = out[ids].detach()
        if init == "default":
            # drawn, and separately
            assert out_new.std(0).mean() > 1e-3 and not torch.allclose(out_new, new)
        else:
            assert torch.allclose(
                out_new, out[text_ids].mean(0).detach().expand_as(out_new), atol=1e-3
            )


def test_default_init_draws_from_the_word_distribution_without_touching_the_global_rng():
    model, tok = _tiny()
    text = model.get_input_embeddings().weight[backbone.token_groups(tok)["text"]].detach().clone()
    ids = backbone.add_tokens(model, tok, [f"<x_{i}>" for i in range(4000)], init="default", seed=3)
    new = model.get_input_embeddings().weight[ids].detach().clone()
    state = torch.get_rng_state()
    backbone.init_rows(model, tok, ids, "default", seed=3)  # the seed alone decides the rows
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model.get_input_embeddings().weight[ids], new)
    assert torch.allclose(new.mean(0), text.mean(0), atol=0.1 * text.std(0).max())
    ratio = new.var(0) / text.var(0)  # the word embeddings' per-dimension spread, not a point
    assert 0.8 < ratio.min() and ratio.max() < 1.25


def test_mean_sid_uses_existing_sid_rows_and_needs_some():
    model, tok = _tiny()
    with pytest.raises(UserError, match="needs existing rows"):
        backbone.add_tokens(model, tok, ["<a_0>"], init="mean-sid")
    model, tok = _tiny()
    sid_ids = backbone.add_tokens(model, tok, tokens.vocabulary([4]), init="default")
    emb = model.get_input_embeddings().weight
    (pause,) = backbone.add_tokens(model, tok, [tokens.PAUSE], init="mean-sid")
    assert torch.allclose(emb[pause], emb[sid_ids].mean(0), atol=1e-4)


def test_unknown_backbone_and_init_are_user_errors():
    with pytest.raises(UserError, match="cannot load backbone 'no/such-model-xyz'"):
        backbone.load_backbone("no/such-model-xyz")
    model, tok = _tiny()
    with pytest.raises(UserError, match="unknown init strategy"):
        backbone.add_tokens(model, tok, ["<a_0>"], init="zeros")


def test_existing_tokens_are_not_added_twice():
    model, tok = _tiny()
    backbone.add_tokens(model, tok, [tokens.PAUSE])
    n = len(tok)
    backbone.add_tokens(model, tok, [tokens.PAUSE, tokens.THINK_OPEN])
    assert len(tok) == n + 1


@pytest.mark.slow
def test_smollm2_backbone_loads_offline_and_answers():
    model, tok = backbone.load_backbone("smollm2-135m")  # cached safetensors after the first call
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_compact_backbone_is_a_small_llama_over_the_workbench_words():
    from pauserec import data
    from pauserec.model import init_ckpt, prompts

    ds = data.load_dataset("ml-100k")
    model, tok = backbone.load_backbone("compact", corpus=init_ckpt.vocabulary_texts(ds.items))
    dense = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert 0.5e6 < dense < 5e6 and model.config.tie_word_embeddings
    assert len(tok) <= backbone.SCRATCH["compact"].words + len(backbone.TINY_SPECIAL)
    # the prompt, grounding questions, rationale templates: no <unk>
    for text in prompts.fixed_texts():
        assert (
            tok.unk_token_id
            not in tok(text.format(top="drama", latest="toy", leaf="comedy"))["input_ids"]
        ), text
    rationale = prompts.RATIONALE.format(top="Comedy, Drama", latest=ds.items[0].display_title)
    assert tok.unk_token_id not in tok(rationale)["input_ids"]
    assert not backbone.language_model("compact") and backbone.language_model("tiny")
    assert backbone.language_model("smollm2-135m")
