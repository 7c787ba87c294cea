"""Real HTTP servers on loopback for the LLM-client tests.

* :class:`ScriptedServer` speaks ``/v1/chat/completions`` and injects a scripted fault per request
  (timeout, 429, 500, malformed JSON, no choices, empty content, a dropped connection, a reply of
  only workbench tokens, a body dripped a byte at a time), answering the
  rest itself or forwarding them to a real upstream server. It counts and records every request.
* :func:`llama_cpp_server` runs ``python -m llama_cpp.server`` on the SmolLM2 GGUF;
  :func:`llama_server` is the session fixture around it (skipped only when llama_cpp is not
  installed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

FAULTS = (
    "timeout",
    "429",
    "500",
    "503",
    "400",
    "badjson",
    "nochoices",
    "nocontent",
    "empty",
    "drop",
    "tokens",
    "drip",
)
T = TypeVar("T")
Script = Callable[[int, str], "str | None"]  # (request number, prompt) -> fault or None for success


@dataclass
class Request:
    n: int
    prompt: str  # the last user message
    fault: str | None
    time: float
    body: dict  # the request's JSON body


def fail_on(text: str, fault: str = "500") -> Script:
    """A persistent fault: every request whose prompt contains ``text`` gets ``fault``."""
    return lambda n, prompt: fault if text in prompt else None


def scripted(*faults: str | None) -> Script:
    """Faults for requests 0, 1, 2, ... in order; every later request succeeds."""
    return lambda n, prompt: faults[n] if n < len(faults) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _completion(content: str | None, choices: bool = True) -> dict:
    choice = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": content},
    }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [choice] if choices else [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedServer:
    """A ThreadingHTTPServer on 127.0.0.1 with scripted faults; use as a context manager."""

    def __init__(
        self,
        script: Script | None = None,
        upstream: str | None = None,
        hang: float = 2.0,
        retry_after: str = "1",
    ):
        self.script = script or (lambda n, prompt: None)
        self.upstream = upstream.rstrip("/") if upstream else None
        self.hang, self.retry_after = hang, retry_after
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def prompts(self, fault: str | None = "any") -> list[str]:
        """Prompts of the recorded requests (``fault=None``: only the ones answered
        successfully)."""
        return [r.prompt for r in self.requests if fault == "any" or r.fault == fault]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _record(self, prompt: str, body: dict) -> str | None:
        with self._lock:
            n = len(self.requests)
            fault = self.script(n, prompt)
            assert fault is None or fault in FAULTS, fault
            self.requests.append(Request(n, prompt, fault, time.monotonic(), body))
        return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each reply waits ~40 ms for a delayed ACK

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes | dict, headers: dict | None = None) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
                prompt = users[-1] if users else ""
                fault = server._record(prompt, body)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._reply(fault, prompt, body)

            def _reply(self, fault: str | None, prompt: str, body: dict) -> None:
                error = {"error": {"message": f"injected {fault}", "type": "server_error"}}
                if fault == "timeout":
                    server._stop.wait(server.hang)  # past the client's timeout; it has gone by now
                    self._send(200, _completion(f"late reply to: {prompt}"))
                elif fault == "drip":  # every read is quick, the whole reply takes ``hang`` seconds
                    data = json.dumps(_completion(f"dripped reply to: {prompt}")).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        if server._stop.wait(server.hang / len(data)):
                            return
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                elif fault == "tokens":
                    self._send(200, _completion("<pause> <a_1><b_2></think>"))
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault in ("429", "500", "503", "400"):
                    headers = {"Retry-After": server.retry_after} if fault == "429" else {}
                    self._send(int(fault), error, headers)
                elif fault == "badjson":
                    self._send(200, b'{"id": "chatcmpl-test", "choices": [{"message": {"conte')
                elif fault in ("nochoices", "nocontent", "empty"):
                    content = {"nocontent": None, "empty": ""}.get(fault, "x")
                    self._send(200, _completion(content, choices=fault != "nochoices"))
                elif server.upstream:
                    self._forward(body)
                else:
                    self._send(200, _completion(f"reply to: {prompt}"))

            def _forward(self, body: dict) -> None:
                req = urllib.request.Request(
                    server.upstream + "/chat/completions",
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        self._send(resp.status, resp.read())
                except urllib.error.HTTPError as err:
                    self._send(err.code, err.read())

        return Handler


def twice_through_a_proxy(upstream: str, run: Callable[[str, str], T], requests: int) -> T:
    """``run(url, out)`` for ``out`` ``"a"`` then ``"b"`` through a :class:`ScriptedServer` in front
    of ``upstream``: the first run makes ``requests`` requests, the rerun none (its cache answers).
    Returns the rerun's result."""
    with ScriptedServer(upstream=upstream) as proxy:
        for out in ("a", "b"):
            result = run(proxy.url, out)
            assert len(proxy.requests) == requests
    return result


def cached_replies(cache: Path) -> list[str]:
    """The replies an LLM cache file (JSON lines) holds, in order."""
    return [json.loads(x)["response"] for x in cache.read_text().splitlines()]


@contextlib.contextmanager
def llama_cpp_server(gguf: Path, startup_timeout: float = 180.0) -> Iterator[str]:
    """``python -m llama_cpp.server`` on 127.0.0.1 serving ``gguf``; yields its ``/v1`` base URL."""
    port = free_port()
    logfile = (  # noqa: SIM115
        tempfile.NamedTemporaryFile(prefix="llama_server.", suffix=".log", delete=False)
    )
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "1",
        "--n_threads_batch",
        "1",
        "--model_alias",
        "smollm2",
        "--verbose",
        "false",
    ]
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                tail = Path(logfile.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama_cpp.server did not answer {url}/models in {startup_timeout:.0f}s"
                )
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        logfile.close()
        Path(logfile.name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """A real llama.cpp OpenAI-compatible server on the SmolLM2 GGUF, for the whole session."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')")
    from pauserec.model.backbone import gguf_file

    with llama_cpp_server(gguf_file("smollm2-135m")) as url:
        yield url
