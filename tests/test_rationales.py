"""Rationale sources (template, local model, OpenAI-compatible endpoint) and the resumable CLI."""

from __future__ import annotations

import json
import logging

import pytest

from pauserec import data, decoding
from pauserec.cli import run
from pauserec.errors import UserError
from pauserec.model.checkpoint import Checkpoint
from pauserec.model.prompts import chat_ids
from pauserec.teacher import rationales
from servers import ScriptedServer, fail_on


@pytest.fixture(scope="module")
def train_examples() -> list[data.Example]:
    return data.split(data.load_dataset("ml-100k"))["train"]


def unleaked(catalog, examples, n):
    """Examples whose target title appears in none of the shown history titles."""
    out = [
        ex
        for ex in examples
        if not any(
            catalog.items[ex.target].display_title in catalog.items[i].display_title
            for i in ex.history
        )
    ]
    return out[:n]


def test_template_sources_keep_their_behaviour(tiny_ckpt, train_examples):
    cat, ex = tiny_ckpt.catalog, train_examples[:3]
    plain = rationales.build("template", cat, ex)
    leaky = rationales.build("template-leaky", cat, ex)
    assert [r.text for r in plain] == [rationales.template(cat, e.history) for e in ex]
    assert [r.text for r in leaky] == [
        rationales.template_leaky(cat, e.history, e.target) for e in ex
    ]
    assert [r.leaky for r in plain + leaky] == [False] * 3 + [True] * 3
    with pytest.raises(UserError, match="unknown rationale source"):
        rationales.build("oracle", cat, ex)


def test_non_leaky_prompt_never_shows_the_target(tiny_ckpt, train_examples):
    cat = tiny_ckpt.catalog
    examples = unleaked(cat, train_examples, 200)
    assert len(examples) == 200
    for ex in examples:
        title = cat.items[ex.target].display_title
        assert title not in rationales.llm_prompt(cat, ex.history)
        assert title in rationales.llm_prompt(cat, ex.history, ex.target)
        shown = [cat.items[i].display_title for i in ex.history[-rationales.MAX_TITLES :]]
        assert all(t in rationales.llm_prompt(cat, ex.history) for t in shown)


def test_clean_strips_workbench_tokens():
    text = " Likes <a_3><b_12> sci-fi.\n\n<pause> Next: </think> a <think>thriller.  "
    assert rationales.clean(text) == "Likes sci-fi. Next: a thriller."


def test_openai_source_end_to_end_on_a_loopback_server(tiny_ckpt, train_examples, tmp_path):
    cat, examples = tiny_ckpt.catalog, unleaked(tiny_ckpt.catalog, train_examples, 6)
    opts = {"model": "m", "cache_path": tmp_path / "c.jsonl", "timeout": 2}
    with ScriptedServer() as srv:
        plain = rationales.build("openai", cat, examples, base_url=srv.url, **opts)
        leaky = rationales.build("openai-leaky", cat, examples, base_url=srv.url, **opts)
        assert len(srv.requests) == 12
        again = rationales.build("openai", cat, examples, base_url=srv.url, **opts)
        assert len(srv.requests) == 12  # deterministic and cached: no new request
    assert again == plain
    assert [r.leaky for r in plain] == [False] * 6 and [r.leaky for r in leaky] == [True] * 6
    assert {r.source for r in plain} == {"openai"} and {r.source for r in leaky} == {"openai-leaky"}
    sent = srv.prompts()
    for ex, p_plain, p_leaky in zip(examples, sent[:6], sent[6:]):
        title = cat.items[ex.target].display_title
        assert title not in p_plain and title in p_leaky
    assert plain[0].text == rationales.clean("reply to: " + sent[0])


def test_local_source_is_the_models_own_greedy_text_and_is_cached(
    tiny_ckpt, train_examples, tmp_path, caplog
):
    examples = train_examples[:5]
    cache = tmp_path / "local.jsonl"
    out = rationales.build(
        "local",
        tiny_ckpt.catalog,
        examples,
        ckpt=tiny_ckpt,
        cache_path=cache,
        max_new_tokens=8,
        batch_size=2,
    )
    tok = tiny_ckpt.tokenizer
    prompt = chat_ids(
        tok, rationales.llm_prompt(tiny_ckpt.catalog, examples[3].history), rationales.SYSTEM
    )
    (direct,) = decoding.generate(
        tiny_ckpt.model,
        tok,
        [prompt],
        max_new_tokens=8,
        stop_ids=[tok.eos_token_id, tok.convert_tokens_to_ids("</think>")],
    )
    assert out[3].text == rationales.clean(tok.decode(direct, skip_special_tokens=True))
    assert [r.leaky for r in out] == [False] * 5
    lines = cache.read_text().splitlines()
    assert len(lines) == 5
    with caplog.at_level(logging.INFO, logger="pauserec.teacher.rationales"):
        again = rationales.build(
            "local", tiny_ckpt.catalog, examples, ckpt=tiny_ckpt, cache_path=cache, max_new_tokens=8
        )
    assert again == out and "5 cached, 0 to generate" in caplog.text
    assert cache.read_text().splitlines() == lines
    leaky = rationales.build(
        "local-leaky",
        tiny_ckpt.catalog,
        examples,
        ckpt=tiny_ckpt,
        cache_path=cache,
        max_new_tokens=8,
    )
    assert all(r.leaky for r in leaky) and len(cache.read_text().splitlines()) == 10


def cli(argv):
    return run(rationales.main, argv)


def test_cli_is_resumable_after_a_persistent_fault(
    tiny_ckpt_path, tiny_ckpt, train_examples, tmp_path, capsys
):
    out = tmp_path / "r.jsonl"
    base = [
        "--ckpt",
        str(tiny_ckpt_path),
        "--source",
        "openai",
        "--split",
        "train",
        "--out",
        str(out),
        "--model",
        "m",
        "--timeout",
        "2",
        "--max-retries",
        "1",
    ]
    picked = [train_examples[i] for i in data.sample(len(train_examples), 6, 0)]
    victim = rationales.llm_prompt(tiny_ckpt.catalog, picked[3].history)
    with ScriptedServer(fail_on(victim, "500")) as srv:
        assert cli(base + ["--n", "6", "--base-url", srv.url]) == 2
    assert "prompt 3 failed after 2 attempt(s)" in capsys.readouterr().err
    assert not out.exists()
    cache = out.with_suffix(".cache.jsonl")
    assert len(cache.read_text().splitlines()) == 3
    with ScriptedServer() as srv:
        assert cli(base + ["--n", "6", "--base-url", srv.url]) == 0
        assert len(srv.requests) == 3  # only the three not yet answered
        assert cli(base + ["--n", "8", "--base-url", srv.url]) == 2  # the finished --out is kept...
        assert cli(base + ["--n", "8", "--base-url", srv.url, "--overwrite"]) == 0  # ...unless told
        assert len(srv.requests) == 5  # a larger sample extends the smaller one
    rows = rationales.read(out)
    assert list(rows) == [train_examples[i] for i in data.sample(len(train_examples), 8, 0)]
    assert all(
        r.source == "openai" and not r.leaky and r.text.startswith("reply to:")
        for r in rows.values()
    )
    assert len({json.loads(line)["key"] for line in cache.read_text().splitlines()}) == 8


def test_cli_rejects_bad_input(tiny_ckpt_path, tmp_path, capsys):
    assert (
        cli(["--ckpt", str(tiny_ckpt_path), "--out", str(tmp_path / "x.jsonl"), "--source", "gpt"])
        == 2
    )
    assert "--source: unknown value 'gpt'" in capsys.readouterr().err
    assert (
        cli(
            [
                "--ckpt",
                str(tiny_ckpt_path),
                "--out",
                str(tmp_path / "x.jsonl"),
                "--split",
                "dev",
                "--source",
                "template",
            ]
        )
        == 2
    )
    assert "--split: unknown value 'dev'" in capsys.readouterr().err
    for extra, msg in (
        (["--n", "-3"], "--n: -3 is below the allowed minimum 1"),
        (["--max-retries", "-1"], "--max-retries: -1 is below the allowed minimum 0"),
        (["--cache", str(tmp_path)], "is a directory"),
    ):
        assert cli(["--ckpt", str(tiny_ckpt_path), "--out", str(tmp_path / "x.jsonl"), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert cli(["--ckpt", str(tiny_ckpt_path), "--out", str(tmp_path), "--source", "template"]) == 2
    assert "is a directory" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_a_reply_of_only_workbench_tokens_is_retried_and_never_cached(
    tiny_ckpt, train_examples, tmp_path
):
    cache = tmp_path / "c.jsonl"
    cat, examples = tiny_ckpt.catalog, train_examples[:3]
    opts = {"cache_path": cache, "model": "m"}
    victim = rationales.llm_prompt(cat, examples[1].history)
    with (
        ScriptedServer(fail_on(victim, "tokens")) as srv,
        pytest.raises(UserError, match="empty after removing"),
    ):
        rationales.build(
            "openai", cat, examples, base_url=srv.url, max_retries=1, backoff=0.01, **opts
        )
    assert victim not in cache.read_text()  # the unusable reply is not cached: a rerun repairs it
    with ScriptedServer() as srv:
        out = rationales.build("openai", cat, examples, base_url=srv.url, **opts)
        # the repaired one and the unsent one
        assert len(srv.requests) == 2 and all(r.text for r in out)


@pytest.mark.slow
def test_openai_source_on_a_real_llama_cpp_server(
    llama_server, tiny_ckpt, train_examples, tmp_path
):
    cat, examples = tiny_ckpt.catalog, unleaked(tiny_ckpt.catalog, train_examples, 3)[1:]
    opts = {
        "model": "smollm2",
        "cache_path": tmp_path / "c.jsonl",
        "max_tokens": 24,
        "timeout": 120,
    }
    with ScriptedServer(upstream=llama_server) as proxy:
        out = rationales.build("openai", cat, examples, base_url=proxy.url, **opts)
        assert rationales.build("openai", cat, examples, base_url=proxy.url, **opts) == out
        assert len(proxy.requests) == 2
    assert all(len(r.text.split()) >= 3 and not r.leaky for r in out)
    print("llama.cpp rationales:", [r.text for r in out])


@pytest.mark.slow
def test_local_source_with_the_real_smollm2_backbone(tiny_ckpt, train_examples, tmp_path):
    from pauserec.model.backbone import load_backbone

    model, tok = load_backbone("smollm2-135m")
    ckpt = Checkpoint(model.eval(), tok, tiny_ckpt.catalog, {}, None)
    out = rationales.build(
        "local",
        ckpt.catalog,
        train_examples[:4],
        ckpt=ckpt,
        cache_path=tmp_path / "c.jsonl",
        max_new_tokens=32,
        batch_size=4,
    )
    assert all(len(r.text.split()) >= 3 for r in out), out
    print("SmolLM2 local rationales:", [r.text for r in out])
