"""Completions from any OpenAI-compatible endpoint (OpenAI, llama.cpp's server, vLLM), cached on
disk.

Used by the ``openai`` rationale source and by probes (paraphrases, LLM judges). Every finished
response is appended to a JSONL cache and flushed at once, keyed by a hash of (model, system,
prompt, params): an interrupted run loses nothing, and a rerun sends no request for a prompt already
answered. Timeouts, connection errors, 429, 5xx and malformed responses are retried with capped
exponential backoff and jitter; what still fails becomes a :class:`UserError` naming the prompt
index and the cause -- a response is never silently turned into ``""``.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from pauserec.errors import UserError

log = logging.getLogger(__name__)
ENV_BASE_URL = "PAUSEREC_OPENAI_BASE_URL"
ENV_MODEL = "PAUSEREC_OPENAI_MODEL"
ENV_API_KEY = "OPENAI_API_KEY"
RETRY_STATUS = {408, 409, 429}  # and every 5xx
RETRY_AFTER_MAX = 60.0  # seconds: the most a server's Retry-After can make us wait


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (the identity of one request)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """An append-only JSONL file of ``{"key", "response", ...}`` records, one per finished response.

    A line that does not parse (a process killed mid-write) is skipped with a warning; appends start
    on a fresh line so a torn line never swallows the next record.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fh = None
        if self.path is not None and self.path.is_file():
            self._read()

    def _read(self) -> None:
        assert self.path is not None
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                where = "last line" if n >= len(lines) - 1 else f"line {n}"
                log.warning("%s: ignoring corrupt %s (an interrupted write?)", self.path, where)
                continue
            if not isinstance(row, dict) or "key" not in row or "response" not in row:
                raise UserError(
                    f"{self.path} line {n} is not a response-cache record; is this the right file?"
                )
            self.entries[row["key"]] = row["response"]

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, key: str, response: str, **extra: Any) -> None:
        """Record one response and flush it to disk before returning."""
        with self._lock:
            self.entries[key] = response
            if self.path is None:
                return
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = (
                    self.path.is_file()
                    and self.path.stat().st_size > 0
                    and not _ends_newline(self.path)
                )
                # closed in close()
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                if torn:
                    self._fh.write("\n")
            row = {
                "key": key,
                "response": response,
                **extra,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class _Retryable(Exception):
    """One failed attempt worth repeating; ``retry_after`` is the server's requested wait, if
    any."""

    def __init__(self, cause: str, retry_after: float | None = None):
        super().__init__(cause)
        self.retry_after = retry_after


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``base * 2**attempt`` capped, with jitter
    (half to all of it); a server's Retry-After raises it, up to :data:`RETRY_AFTER_MAX`."""
    delay = min(cap, base * 2**attempt) * (0.5 + 0.5 * (rng or random).random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
    return delay


def _retry_after(headers) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    return None


def _text(response: Any) -> str:
    """The first choice's content, or :class:`_Retryable` saying what is wrong with the response."""
    if isinstance(response, str):  # the client hands back raw text when the body is not JSON
        raise _Retryable(f"malformed response: not JSON ({response[:80]!r})")
    choices = getattr(response, "choices", None)
    if not choices:
        raise _Retryable("malformed response: no choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str) or not content.strip():
        reason = getattr(choices[0], "finish_reason", None)
        raise _Retryable(f"malformed response: empty content (finish_reason={reason})")
    return content


_DEADLINES = ThreadPoolExecutor(max_workers=32, thread_name_prefix="llm-deadline")


def _attempt(
    client: Any,
    request: dict[str, Any],
    deadline: float,
    check: Callable[[str], str | None] | None = None,
) -> str:
    """One request within a total deadline (seconds; the client's own timeout is per read, so a
    server dripping bytes could hold it far longer); :class:`_Retryable` for transient failures and
    for a response ``check`` rejects, :class:`UserError` for permanent ones."""
    future = _DEADLINES.submit(_request, client, request)
    try:
        text = future.result(timeout=deadline)
    except FutureTimeout:
        future.cancel()
        raise _Retryable(f"timed out (no complete response within {deadline:g}s)") from None
    problem = check(text) if check is not None else None
    if problem:
        raise _Retryable(f"unusable response: {problem}")
    return text


def _request(client: Any, request: dict[str, Any]) -> str:
    import openai

    try:
        return _text(client.chat.completions.create(**request))
    except openai.APITimeoutError:
        raise _Retryable("timed out") from None
    except openai.APIConnectionError as err:
        raise _Retryable(f"connection error: {err.__cause__ or err}") from None
    except openai.APIStatusError as err:
        cause = f"HTTP {err.status_code}: {str(err.message)[:200]}"
        if err.status_code in RETRY_STATUS or err.status_code >= 500:
            raise _Retryable(cause, _retry_after(err.response.headers)) from None
        raise UserError(cause) from None
    except (openai.APIResponseValidationError, json.JSONDecodeError) as err:
        raise _Retryable(f"malformed response: {type(err).__name__}: {str(err)[:120]}") from None


def resolve(
    base_url: str | None, model: str | None, api_key: str | None
) -> tuple[str | None, str, str]:
    """(base_url, model, api_key) from the arguments, else ``$PAUSEREC_OPENAI_*`` /
    ``$OPENAI_API_KEY``."""
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    model = model or os.environ.get(ENV_MODEL)
    api_key = api_key or os.environ.get(ENV_API_KEY)
    if not model:
        raise UserError(f"no LLM model given: pass --model or set ${ENV_MODEL}")
    if not api_key:
        if base_url is None:
            raise UserError(
                f"no API key: set ${ENV_API_KEY}, or pass --base-url for a local server"
            )
        api_key = "none"  # local OpenAI-compatible servers accept any key
    return base_url, model, api_key


@functools.lru_cache(maxsize=8)
def _client(base_url: str | None, api_key: str, timeout: float) -> Any:
    """One client per endpoint, reused across calls (building one takes a few hundred ms).

    The client's own retries are off: :func:`_with_retries` is the only retry loop.
    """
    import openai  # an extra: only the LLM sources and judges need it, never training or evaluation

    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)


def complete(
    prompts: list[str],
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    cache_path: str | Path | None,
    system: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    extra: dict | None = None,
    timeout: float = 30,
    max_retries: int = 5,
    check: Callable[[str], str | None] | None = None,
    backoff: float = 0.5,
    backoff_cap: float = 20.0,
    seed: int = 0,
    concurrency: int = 1,
    on_result: Callable[[int, str], None] | None = None,
) -> list[str]:
    """One completion per prompt (a single user message, after ``system`` if given), in order.

    Cached prompts are answered from ``cache_path`` without a request (``None``: no cache). Each
    request is tried ``1 + max_retries`` times; a prompt that still fails raises :class:`UserError`
    after the requests already in flight have finished (and been cached). ``extra`` is merged into
    the request body (e.g. ``{"response_format": {"type": "json_object"}}``) and is part of the
    cache key; ``seed`` only seeds the backoff jitter; ``on_result(i, text)`` runs after each new
    answer is cached (``i``: the first prompt index with that text). ``check(text)`` returns why a
    response is unusable (then it is retried like a malformed one and never cached), or ``None``.
    ``timeout`` is a total deadline per request, in seconds.
    """
    if max_retries < 0 or timeout <= 0 or concurrency < 1:
        raise UserError(
            f"max_retries must be >= 0 (got {max_retries}), timeout > 0 (got {timeout}) and "
            f"concurrency >= 1 (got {concurrency})"
        )
    base_url, model, api_key = resolve(base_url, model, api_key)
    params = {"max_tokens": max_tokens, "temperature": temperature, "stop": stop, "extra": extra}
    keys = [cache_key(model, system, p, params) for p in prompts]
    with ResponseCache(cache_path) as cache:
        # key -> first prompt index needing it (duplicates share one request)
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in cache or _unusable(cache.get(key), check):  # bad cached reply: ask again
                todo.setdefault(key, i)
        log.info(
            "%d prompt(s): %d cached, %d request(s) to %s (%s)",
            len(prompts),
            sum(k not in todo for k in keys),
            len(todo),
            base_url or "OpenAI",
            model,
        )
        if todo:
            client = _client(base_url, api_key, float(timeout))
            rng = random.Random(seed)

            def one(i: int) -> None:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompts[i]}
                ]
                request = {
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "stop": stop or _omit(),
                    "extra_body": extra,
                }
                text = _with_retries(
                    lambda: _attempt(client, request, float(timeout), check),
                    i,
                    max_retries,
                    backoff,
                    backoff_cap,
                    rng,
                )
                cache.put(keys[i], text, model=model, prompt=prompts[i])
                if on_result is not None:
                    on_result(i, text)

            _run_all(one, list(todo.values()), concurrency)
        results = [cache.get(key) for key in keys]
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise UserError(
            f"LLM: no response for prompt(s) {missing[:5]} (the cache {cache_path} was changed?)"
        )
    return results  # type: ignore[return-value]


def _unusable(text: str | None, check: Callable[[str], str | None] | None) -> bool:
    """A cached response that is not text, or that ``check`` rejects (an empty rationale written by
    an older version, or by hand), is asked for again."""
    if not isinstance(text, str):
        return True
    problem = check(text) if check is not None else None
    if problem:
        log.warning("cached response not used: %s", problem)
    return problem is not None


def _omit():
    import openai

    return openai.omit


def _with_retries(
    call: Callable[[], str],
    index: int,
    max_retries: int,
    backoff: float,
    cap: float,
    rng: random.Random,
) -> str:
    for attempt in range(max_retries + 1):
        try:
            return call()
        except _Retryable as err:
            if attempt == max_retries:
                raise UserError(
                    f"LLM request for prompt {index} failed after {attempt + 1} attempt(s): {err}"
                ) from None
            delay = backoff_delay(attempt, backoff, cap, err.retry_after, rng)
            log.warning(
                "prompt %d: %s; retry %d/%d in %.2fs", index, err, attempt + 1, max_retries, delay
            )
            time.sleep(delay)
        except UserError as err:
            raise UserError(f"LLM request for prompt {index} failed: {err}") from None
    raise AssertionError("unreachable")


def _run_all(fn: Callable[[int], None], indices: Iterable[int], concurrency: int) -> None:
    """``fn(i)`` for each index; on the first error, start nothing new, let running calls finish."""
    indices = list(indices)
    if concurrency <= 1:
        for i in indices:
            fn(i)
        return
    pool = ThreadPoolExecutor(max_workers=concurrency)
    futures = [pool.submit(fn, i) for i in indices]
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    finally:  # also on Ctrl-C: drop queued calls, let the running ones finish (and be cached)
        pool.shutdown(wait=True, cancel_futures=True)
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception()]
    if errors:
        raise errors[0]
