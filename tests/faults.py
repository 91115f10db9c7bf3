"""Faults and load, shared by the fault tests (``tests/e2e/test_faults.py``) and the soak (``tests/soak.py``).

- :func:`gateway`: a stack (real Envoy, ``tollway serve`` with two workers, the fake provider for
  OpenAI and Anthropic, each checking its own key, and optionally a real ``redis-server``) under
  a policy with a budget, rate limits (a concurrency cap included), a guardrail and an alias
  that falls back from OpenAI to Anthropic, so that every request claims and settles.
- :func:`call`: one request through an official SDK (``openai`` or ``anthropic``, JSON or
  streamed), and what its client saw: the status, whether an error body was in that SDK's
  format, whether a stream ended cleanly, how long it took.
- :class:`Driver`: calls at a fixed rate (open loop: a slow gateway does not slow the rate down).
- :func:`ledger_check`: every request the fake provider received (by ``x-request-id``, which
  Envoy keeps on every try) against the request log: lost (no record) and doubled (two or more).
- :class:`RedisServer`: a ``redis-server`` of the caller's own, to stop, pause and restart.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import redis

from ext_proc.ledger.log import log_files, read_records
from ext_proc.policy.compiled import key_digest
from ext_proc.stack import Stack, free_port
from tests.fixtures import FAULT_CASSETTES

KEY = "tw-faults-0123456789abcdefghijklmnopqrstuvwxyzABCD"
PROVIDER_KEYS = {"F_OPENAI_KEY": "sk-openai-faults-0001", "F_ANTHROPIC_KEY": "sk-ant-faults-0002"}
MESSAGES = [{"role": "user", "content": "Summarise our call; reach me at jane.doe@example.com"}]


def policy(on_unavailable: str = "closed", note: str = "") -> str:
    """The faults' policy (``note`` makes an edit that changes nothing but the version)."""
    return f"""# {note}
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: F_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: F_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai}}
  claude-haiku: {{provider: anthropic, model: claude-3-5-haiku-20241022}}
routing:
  aliases:
    chat:
      targets:
        - {{provider: openai, model: gpt-4o-mini}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  app:
    keys: [{{id: app-ci, sha256: {key_digest(KEY)}}}]
    models: [chat, gpt-4o-mini, claude-haiku]
budgets:
  app-daily: {{team: app, usd: "100000", tokens: 1000000000000, period: day}}
rate_limits:
  app: {{team: app, requests_per_minute: 1000000, tokens_per_minute: 100000000, concurrent: 200}}
guardrails:
  rules:
    - {{name: pii, detectors: [email], action: redact}}
shared_state: {{on_unavailable: {on_unavailable}}}
"""


def gateway(work: Path, *, redis_url: str | None = None, on_unavailable: str = "closed",
            serve_args: tuple[str, ...] = (), **options: Any) -> Stack:
    """The stack the faults are injected into (see the module docstring); not started."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "policy.yaml"
    path.write_text(policy(on_unavailable))
    args = ("--hold-ttl", "3", "--reload-interval", "0.2", *serve_args)
    if redis_url:
        args = ("--redis", redis_url, *args)
    keys = tuple(arg for key in PROVIDER_KEYS.values() for arg in ("--api-key", key))
    options.setdefault("workers", 2)
    return Stack(work / "stack", policy=path, service_env=PROVIDER_KEYS, mocked=frozenset({"openai", "anthropic"}),
                 mock_args=(*keys, "--record-requests", "1000000", "--cassettes", str(FAULT_CASSETTES)),
                 stand_ins_get_keys=True, serve_args=args, **options)


# -- one call ------------------------------------------------------------------------------------

KINDS = (("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True))


@dataclass
class Call:
    """What one client saw."""

    sdk: str
    stream: bool
    model: str
    started: float  # monotonic
    seconds: float = 0.0
    status: int | None = None  # None: no HTTP answer (connection refused or reset before the head)
    request_id: str | None = None
    clean: bool = False  # a 2xx answer read to its end (a stream to its last event, no error event)
    error: str | None = None  # the exception the SDK raised, and the error code or type it carried
    format_ok: bool | None = None  # an error answer: its body in this SDK's error format
    detail: str = ""  # an error answer's message
    faults: tuple[str, ...] = ()  # what the request asked the fake provider to do wrong

    def __repr__(self) -> str:
        return (f"<{self.sdk} {'stream' if self.stream else 'json'} at {self.started:.2f}: {self.outcome} "
                f"{self.error or ''} in {self.seconds:.2f}s{' (SDK format)' if self.format_ok else ''}>")

    @property
    def outcome(self) -> str:
        if self.clean:
            return "ok"
        if self.status is not None and self.status >= 400:
            return str(self.status)
        return "cut" if self.status else "no answer"


def _error_body(exc: openai.APIStatusError | anthropic.APIStatusError) -> object:
    """An error answer's JSON body; for an error event in a 2xx stream, the event's (the anthropic
    SDK raises APIStatusError on one, with the stream's response, whose body it never read: its
    ``json()`` raises ResponseNotRead)."""
    if exc.response.status_code < 400:
        return exc.body
    try:
        return exc.response.json()
    except ValueError:
        return None


def _sdk_format(sdk: str, body: object) -> bool:
    """Whether an error's JSON body is in that SDK's error format."""
    if not isinstance(body, dict):
        return False
    if sdk == "anthropic":
        return (body.get("type") == "error" and isinstance(body.get("error"), dict)
                and isinstance(body["error"].get("type"), str) and isinstance(body["error"].get("message"), str))
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


def call(base_url: str, sdk: str, stream: bool, *, model: str | None = None, headers: dict[str, str] | None = None,
         key: str = KEY, timeout: float = 20.0, faults: tuple[str, ...] = ()) -> Call:
    """One request through the official SDK (no retries): what its client saw."""
    model = model or ("claude-haiku" if sdk == "anthropic" else "chat")
    result = Call(sdk, stream, model, time.monotonic(), faults=faults)
    extra = headers or {}
    try:
        if sdk == "openai":
            oclient = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=timeout)
            if stream:
                chunks = oclient.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40,  # type: ignore[arg-type]
                                                         stream=True, extra_headers=extra)
                result.status, result.request_id = chunks.response.status_code, _id(chunks.response)
                result.clean = sum(1 for _ in chunks) > 0
            else:
                raw = oclient.chat.completions.with_raw_response.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                                                       max_tokens=40, extra_headers=extra)
                result.status, result.request_id = raw.status_code, raw.headers.get("x-tollway-request-id")
                result.clean = bool(raw.parse().choices)
        else:
            aclient = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)
            if stream:
                events = aclient.messages.create(model=model, messages=MESSAGES, max_tokens=40, stream=True,  # type: ignore[arg-type]
                                                 extra_headers=extra)
                result.status, result.request_id = events.response.status_code, _id(events.response)
                kinds = [event.type for event in events]
                result.clean = bool(kinds) and kinds[-1] == "message_stop"
            else:
                raw_message = aclient.messages.with_raw_response.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                                                        max_tokens=40, extra_headers=extra)
                result.status = raw_message.status_code
                result.request_id = raw_message.headers.get("x-tollway-request-id")
                result.clean = bool(raw_message.parse().content)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        result.status, result.request_id = exc.status_code, _id(exc.response)
        body = _error_body(exc)
        result.format_ok = _sdk_format(sdk, body)
        result.error = f"{type(exc).__name__}: {_code(body)}"
        result.detail = str(exc.message)
    except Exception as exc:  # connection refused or reset, a stream cut, an error event in a stream
        result.error = type(exc).__name__
    result.seconds = time.monotonic() - result.started
    return result


def _id(response: httpx.Response) -> str | None:
    return response.headers.get("x-tollway-request-id")


def _code(body: object) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type"))
    return "?"


# -- load at a fixed rate ---------------------------------------------------------------------------


@dataclass
class Driver:
    """Calls ``pick()`` at ``rate`` per second from a pool of ``concurrency`` threads, until stopped."""

    base_url: str
    rate: float
    pick: Callable[[int], dict[str, Any]]  # call number -> call()'s keyword arguments (sdk, stream, ...)
    concurrency: int = 32
    calls: list[Call] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pool: concurrent.futures.ThreadPoolExecutor | None = None
    _futures: list[concurrent.futures.Future[None]] = field(default_factory=list)

    def start(self) -> Driver:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._tick, name="load-ticker", daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        assert self._pool is not None
        began = time.monotonic()
        number = 0
        while not self._stop.is_set():
            due = began + number / self.rate
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._futures.append(self._pool.submit(self._one, number))
            number += 1

    def _one(self, number: int) -> None:
        self.calls.append(call(self.base_url, **self.pick(number)))

    def stop(self, timeout: float = 60.0) -> list[Call]:
        """Stop issuing calls and wait for those in flight; every call made."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        concurrent.futures.wait(self._futures, timeout=timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return list(self.calls)


def mixed(number: int, faults: Callable[[int], dict[str, str]] | None = None) -> dict[str, Any]:
    """The ``number``-th call of a mix: both SDKs, JSON and streams, in turn."""
    sdk, stream = KINDS[number % len(KINDS)]
    headers = faults(number) if faults else {}
    return {"sdk": sdk, "stream": stream, "headers": headers, "faults": tuple(sorted(headers))}


# -- the ledger ---------------------------------------------------------------------------------


def provider_requests(stack: Stack) -> collections.Counter[str]:
    """How many tries of each request (by x-request-id) the fake provider received."""
    seen: collections.Counter[str] = collections.Counter()
    for request in httpx.get(f"http://127.0.0.1:{stack.mock_port}/_mock/requests", timeout=30).json():
        request_id = next((v for k, v in request["headers"] if k.lower() == "x-request-id"), None)
        if request_id:
            seen[request_id] += 1
    return seen


def records(stack: Stack) -> list[dict[str, Any]]:
    """Every record in the request log (and its rotated files)."""
    return list(read_records(log_files(str(stack.record_log))))


@dataclass
class LedgerCheck:
    """The request log against what reached the provider."""

    reached: int  # requests the provider received (at least one try)
    recorded: int  # records in the log
    lost: list[str]  # reached the provider, no record
    doubled: list[str]  # more than one record
    by_id: dict[str, dict[str, Any]]  # the record of each request id

    @property
    def exact(self) -> bool:
        return not self.lost and not self.doubled


def ledger_check(stack: Stack, wait: float = 10.0, since: Iterable[str] = ()) -> LedgerCheck:
    """Compare (see :class:`LedgerCheck`), waiting up to ``wait`` s for batched records to land.

    ``since``: request ids to leave out (requests of an earlier test on the same stack).
    """
    skip = set(since)
    deadline = time.monotonic() + wait
    while True:
        reached = {i for i in provider_requests(stack) if i not in skip}
        found = [r for r in records(stack) if r.get("request_id") not in skip]
        count = collections.Counter(r.get("request_id") for r in found)
        lost = sorted(i for i in reached if count[i] == 0)
        doubled = sorted(str(i) for i, n in count.items() if n > 1)
        if (not lost and not doubled) or time.monotonic() > deadline:
            return LedgerCheck(len(reached), len(found), lost, doubled, {r["request_id"]: r for r in found})
        time.sleep(0.2)


def records_for(stack: Stack, ids: Iterable[str | None], wait: float = 5.0) -> dict[str, dict[str, Any]]:
    """The records of these requests, waiting up to ``wait`` s for the batched writer."""
    wanted = set(ids)
    assert None not in wanted, "a response without x-tollway-request-id"
    deadline = time.monotonic() + wait
    while True:
        found = {r["request_id"]: r for r in records(stack) if r.get("request_id") in wanted}
        if len(found) == len(wanted) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def seen_ids(stack: Stack) -> set[str]:
    """Every request id known so far (provider and log): what a later check leaves out."""
    return set(provider_requests(stack)) | {str(r.get("request_id")) for r in records(stack)}


# -- the service's admin ----------------------------------------------------------------------------


def admin(stack: Stack, path: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{stack.service_admin_port}{path}", timeout=5)
    return response.json() if path != "/metrics" else response.text


def metric(text: str, name: str) -> float | None:
    """A sample's value in a Prometheus text page (None: absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def open_reservations(stack: Stack, redis_port: int | None = None) -> int:
    """What budgets hold right now (``/v1/budgets``), plus every rate-limit counter in Redis."""
    held = sum(row["held"] for row in admin(stack, "/v1/budgets")["budgets"])
    if redis_port is not None:
        from ext_proc.state.limits import TOTALS
        from ext_proc.state.limits import keys as limit_keys

        store = redis.Redis(port=redis_port)
        totals = store.register_script(TOTALS)
        for key in store.scan_iter(match="tollway:limits:{*}:held"):
            counter = key.decode().split("{", 1)[1].rsplit("}", 1)[0]
            held += int(totals(keys=limit_keys("tollway:limits", counter))[1])
    return held


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def rss_kib(pids: Iterable[int]) -> int:
    """The resident memory of these processes together (VmRSS), KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def kill_workers(stack: Stack, how_many: int | None = None, sig: int = signal.SIGKILL) -> list[int]:
    """Signal the service's workers (all, or the first ``how_many``); their pids."""
    workers = stack.service_pids()[1:]
    chosen = workers if how_many is None else random.sample(workers, min(how_many, len(workers)))
    for pid in chosen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return chosen


def kill_service(stack: Stack) -> None:
    """SIGKILL the whole service (the supervising process and its workers) and reap it."""
    proc = stack.procs["tollway"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


# -- Redis --------------------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of the caller's own (no persistence), to stop, pause and start under load."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()  # restarted under load: a port no outgoing connection can take meanwhile
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.work.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.work)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """Stop answering without closing a connection (SIGSTOP): a hung Redis."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
