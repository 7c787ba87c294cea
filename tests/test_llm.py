"""The OpenAI-compatible client against real loopback servers: scripted faults and llama.cpp's
server."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import time

import pytest

from pauserec.errors import UserError
from pauserec.teacher import llm
from servers import ScriptedServer, fail_on, scripted

FAST = {"model": "test-model", "timeout": 0.5, "backoff": 0.01, "backoff_cap": 0.05}


def cache_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_answers_in_order_and_rerun_sends_no_request(tmp_path):
    cache = tmp_path / "c.jsonl"
    prompts = ["alpha", "beta", "alpha", "gamma"]
    with ScriptedServer() as srv:
        out = llm.complete(prompts, base_url=srv.url, cache_path=cache, **FAST)
        assert out == ["reply to: alpha", "reply to: beta", "reply to: alpha", "reply to: gamma"]
        # the duplicate shares one request
        assert sorted(srv.prompts()) == ["alpha", "beta", "gamma"]
        assert llm.complete(prompts, base_url=srv.url, cache_path=cache, **FAST) == out
        assert len(srv.requests) == 3  # the rerun was answered from the cache
    assert [r["prompt"] for r in cache_rows(cache)] == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    "fault", ["timeout", "429", "500", "503", "drop", "badjson", "nochoices", "nocontent", "empty"]
)
def test_each_transient_fault_is_retried_then_succeeds(tmp_path, fault):
    cache = tmp_path / "c.jsonl"
    with ScriptedServer(scripted(fault), retry_after="0") as srv:
        assert llm.complete(["hello"], base_url=srv.url, cache_path=cache, **FAST) == [
            "reply to: hello"
        ]
        assert [r.fault for r in srv.requests] == [fault, None]
    # cached once, not twice
    assert [r["response"] for r in cache_rows(cache)] == ["reply to: hello"]


def test_a_run_of_mixed_faults_is_survived(tmp_path):
    faults = ("timeout", "429", "500", "badjson", "nochoices", "empty", "drop")
    with ScriptedServer(scripted(*faults), retry_after="0") as srv:
        out = llm.complete(
            ["q"],
            base_url=srv.url,
            cache_path=tmp_path / "c.jsonl",
            max_retries=len(faults),
            **FAST,
        )
        assert out == ["reply to: q"]
        assert len(srv.requests) == len(faults) + 1


def test_retry_after_is_honoured(tmp_path):
    with ScriptedServer(scripted("429"), retry_after="1") as srv:
        llm.complete(["x"], base_url=srv.url, cache_path=None, **FAST)
        first, second = srv.requests
        assert second.time - first.time >= 0.95  # our own backoff would have waited <= 0.05 s


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("500", "HTTP 500"),
        ("timeout", "timed out"),
        ("empty", "empty content"),
        ("nochoices", "no choices"),
        ("badjson", "malformed response"),
    ],
)
def test_persistent_fault_is_a_clear_error_and_keeps_earlier_results(tmp_path, fault, cause):
    cache = tmp_path / "c.jsonl"
    prompts = [f"p{i}" for i in range(5)]
    with (
        ScriptedServer(fail_on("p2", fault)) as srv,
        pytest.raises(UserError, match=rf"prompt 2 failed after 3 attempt\(s\): .*{cause}"),
    ):
        llm.complete(prompts, base_url=srv.url, cache_path=cache, max_retries=2, **FAST)
    assert srv.prompts() == ["p0", "p1", "p2", "p2", "p2"]
    # nothing from the failed prompt
    assert [r["prompt"] for r in cache_rows(cache)] == ["p0", "p1"]
    with ScriptedServer() as healthy:  # resume: nothing redone, nothing lost
        out = llm.complete(prompts, base_url=healthy.url, cache_path=cache, **FAST)
        assert healthy.prompts() == ["p2", "p3", "p4"]
    assert out == [f"reply to: {p}" for p in prompts]
    assert [r["prompt"] for r in cache_rows(cache)] == prompts


def test_client_errors_are_not_retried(tmp_path):
    with (
        ScriptedServer(fail_on("", "400")) as srv,
        pytest.raises(UserError, match="prompt 0.*HTTP 400"),
    ):
        llm.complete(["x"], base_url=srv.url, cache_path=tmp_path / "c.jsonl", **FAST)
    assert len(srv.requests) == 1


def test_concurrent_batch_interrupted_by_a_fault_resumes_without_redoing(tmp_path):
    cache = tmp_path / "c.jsonl"
    prompts = [f"p{i:02d}" for i in range(16)]
    with ScriptedServer(fail_on("p05", "500")) as srv, pytest.raises(UserError, match="prompt 5"):
        llm.complete(
            prompts, base_url=srv.url, cache_path=cache, max_retries=1, concurrency=4, **FAST
        )
    done = [r["prompt"] for r in cache_rows(cache)]
    assert "p05" not in done and len(done) == len(set(done)) and set(done) <= set(prompts)
    assert set(srv.prompts(None)) == set(done)  # every successful answer was cached
    with ScriptedServer() as healthy:
        out = llm.complete(prompts, base_url=healthy.url, cache_path=cache, concurrency=4, **FAST)
        assert sorted(healthy.prompts()) == sorted(set(prompts) - set(done))
    assert out == [f"reply to: {p}" for p in prompts]
    assert sorted(r["prompt"] for r in cache_rows(cache)) == prompts


def test_keyboard_interrupt_mid_batch_loses_nothing(tmp_path):
    cache = tmp_path / "c.jsonl"
    prompts = [f"p{i}" for i in range(6)]

    def stop_after_third(i: int, text: str) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with ScriptedServer() as srv, pytest.raises(KeyboardInterrupt):
        llm.complete(
            prompts, base_url=srv.url, cache_path=cache, on_result=stop_after_third, **FAST
        )
    assert [r["prompt"] for r in cache_rows(cache)] == ["p0", "p1", "p2"]
    with ScriptedServer() as srv:
        llm.complete(prompts, base_url=srv.url, cache_path=cache, **FAST)
        assert srv.prompts() == ["p3", "p4", "p5"]


KILLER = """
import os, signal, sys
from pauserec.teacher import llm
def die(i, text):
    if i == 2:
        os.kill(os.getpid(), signal.SIGKILL)
llm.complete([f"p{i}" for i in range(6)], base_url=sys.argv[1], model="m", cache_path=sys.argv[2],
             on_result=die)
"""


def test_a_killed_process_loses_no_finished_response(tmp_path):
    cache = tmp_path / "c.jsonl"
    with ScriptedServer() as srv:
        proc = subprocess.run([sys.executable, "-c", KILLER, srv.url, str(cache)], timeout=60)
        assert proc.returncode == -signal.SIGKILL
        # flushed as they came
        assert [r["prompt"] for r in cache_rows(cache)] == ["p0", "p1", "p2"]
        llm.complete(
            [f"p{i}" for i in range(6)],
            base_url=srv.url,
            cache_path=cache,
            **{**FAST, "model": "m"},
        )
        # each prompt asked once in all
        assert srv.prompts() == ["p0", "p1", "p2", "p3", "p4", "p5"]


def test_torn_last_line_is_ignored_with_a_warning(tmp_path, caplog):
    cache = tmp_path / "c.jsonl"
    with ScriptedServer() as srv:
        llm.complete(["a", "b"], base_url=srv.url, cache_path=cache, **FAST)
        with open(cache, "a") as fh:
            fh.write('{"key": "abc", "respon')  # a kill mid-write
        with caplog.at_level(logging.WARNING, logger="pauserec.teacher.llm"):
            out = llm.complete(["a", "b", "c"], base_url=srv.url, cache_path=cache, **FAST)
        assert out == ["reply to: a", "reply to: b", "reply to: c"]
        assert srv.prompts() == ["a", "b", "c"]  # only "c" was new on the second call
    assert "ignoring corrupt last line" in caplog.text
    lines = cache.read_text().splitlines()
    # appended on a fresh line, not glued to the torn one
    assert json.loads(lines[-1])["prompt"] == "c"
    assert len(llm.ResponseCache(cache)) == 3


def test_cache_key_covers_model_system_and_params(tmp_path):
    cache = tmp_path / "c.jsonl"
    with ScriptedServer() as srv:
        base = {**FAST, "base_url": srv.url, "cache_path": cache}
        llm.complete(["x"], **base)
        llm.complete(["x"], **{**base, "model": "other"})
        llm.complete(["x"], **base, system="be brief")
        llm.complete(["x"], **base, max_tokens=7)
        llm.complete(["x"], **base, temperature=0.5)
        llm.complete(["x"], **base, extra={"seed": 3})
        llm.complete(["x"], **base)
        assert len(srv.requests) == 6
        assert srv.requests[-1].body["seed"] == 3 and srv.requests[2].body["messages"][0] == {
            "role": "system",
            "content": "be brief",
        }
        assert srv.requests[0].body["max_tokens"] == 128 and srv.requests[3].body["max_tokens"] == 7


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"user": "1", "text": "hi"}\n')
    with pytest.raises(UserError, match="not a response-cache record"):
        llm.ResponseCache(path)


def test_endpoint_and_model_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(llm.ENV_API_KEY, raising=False)
    with ScriptedServer() as srv:
        monkeypatch.setenv(llm.ENV_BASE_URL, srv.url)
        monkeypatch.setenv(llm.ENV_MODEL, "env-model")
        assert llm.complete(["x"], cache_path=None) == ["reply to: x"]
    monkeypatch.delenv(llm.ENV_MODEL)
    with pytest.raises(UserError, match="no LLM model"):
        llm.complete(["x"], cache_path=None)
    monkeypatch.delenv(llm.ENV_BASE_URL)
    with pytest.raises(UserError, match="no API key"):
        llm.complete(["x"], model="m", cache_path=None)


def test_backoff_grows_is_capped_jittered_and_respects_retry_after():
    rng = random.Random(0)
    for attempt in range(10):
        d = llm.backoff_delay(attempt, base=0.5, cap=4.0, rng=rng)
        full = min(4.0, 0.5 * 2**attempt)
        assert full / 2 <= d <= full
    assert llm.backoff_delay(0, 0.5, 4.0, retry_after=3.0, rng=rng) == 3.0
    assert llm.backoff_delay(0, 0.5, 4.0, retry_after=1e6, rng=rng) == llm.RETRY_AFTER_MAX


@pytest.mark.slow
def test_real_llama_cpp_server_completes_and_caches(llama_server, tmp_path):
    cache = tmp_path / "c.jsonl"
    prompts = ["Name a colour.", "Name a fruit.", "Name an animal."]
    opts = {"model": "smollm2", "cache_path": cache, "max_tokens": 16, "timeout": 60}
    with ScriptedServer(upstream=llama_server) as proxy:  # counts the requests that reach llama.cpp
        t = time.perf_counter()
        out = llm.complete(prompts, base_url=proxy.url, **opts)
        elapsed = time.perf_counter() - t
        assert len(proxy.requests) == 3
        assert all(isinstance(s, str) and s.strip() for s in out)
        assert llm.complete(prompts, base_url=proxy.url, **opts) == out
        assert len(proxy.requests) == 3  # zero new requests on the rerun
    print(f"llama.cpp: 3 completions in {elapsed:.2f}s: {out}")


def test_timeout_is_a_total_deadline_even_when_bytes_keep_dripping(tmp_path):
    """A server that sends a byte every few ms never trips a per-read timeout; the deadline still
    holds."""
    with ScriptedServer(scripted("drip"), hang=6.0) as srv:
        start = time.monotonic()
        out = llm.complete(
            ["p"], base_url=srv.url, cache_path=tmp_path / "c.jsonl", **{**FAST, "timeout": 1.0}
        )
        took = time.monotonic() - start
    assert out == ["reply to: p"] and took < 4.0  # the dripped attempt was abandoned after ~1 s
    assert [r.fault for r in srv.requests] == ["drip", None]
