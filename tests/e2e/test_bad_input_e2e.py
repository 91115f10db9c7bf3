"""Bad input through a real Envoy: what Envoy refuses itself, and what reaches Tollway, both in the
client's format, and the service keeps serving."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from ext_proc.stack import Stack
from tests.e2e.conftest import Providers

pytestmark = pytest.mark.e2e

OPENAI_KEY = "sk-openai-bad-input-01"
POLICY = """
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: B_OPENAI_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  sidecar: {workloads: [local-dev], models: [gpt-4o-mini]}
  admins: {workloads: ["spiffe://cluster.local/ns/ops/sa/admin"], models: ["*"]}
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    stack = Providers.stack(tmp_path_factory.mktemp("bad-input"), POLICY, {"B_OPENAI_KEY": OPENAI_KEY},
                            workload="local-dev")
    with stack:
        yield Providers(stack, "x")


@pytest.fixture(scope="module")
def buffered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    """`tollway envoy --bodies buffered`: Envoy buffers each body, Tollway answers message by message
    (the default, ``env``, sends each body right behind its headers and both are answered at once)."""
    stack = Providers.stack(tmp_path_factory.mktemp("buffered"), POLICY, {"B_OPENAI_KEY": OPENAI_KEY},
                            workload="local-dev", bodies_together=False)
    with stack:
        yield Providers(stack, "x")


def messages_sent(env: Providers) -> int:
    """Envoy's count of the ext_proc messages it sent Tollway."""
    stats = env.stack.envoy_admin("/stats?filter=ext_proc.stream_msgs_sent").text
    return int(dict(line.split(": ") for line in stats.splitlines())["http.tollway.ext_proc.stream_msgs_sent"])


def served(env: Providers) -> bool:
    """The gateway still answers a good request."""
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="x", max_retries=0)
    return bool(client.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content)  # type: ignore[arg-type]


def raw(env: Providers, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", env.stack.listen_port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data:
            return 0, b""  # the connection was closed: no answer at all
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(head.split(b" ", 2)[1]), body


def test_a_body_over_the_limit_is_a_413_in_the_clients_format(env: Providers, buffered: Providers) -> None:
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"a" * (65 << 20) + b'"}]}'
    # Bodies together (the default): Envoy streams the body, Tollway stops reading it at 64 MiB.
    answer = httpx.post(env.base_url + "/v1/chat/completions", content=big, timeout=60,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "request_too_large" and "64 MiB" in error["message"]
    assert served(env)
    # Bodies buffered: Envoy's buffer limit, the same 64 MiB, its 413 in JSON.
    answer = httpx.post(buffered.base_url + "/v1/chat/completions", content=big, timeout=60,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert "Payload Too Large" in answer.json()["error"]["message"]
    assert served(buffered)


@pytest.mark.parametrize("bad", [b"x-test: a\x00b", b"x-t\x01est: a", b"x-test: a\x1bb", b"x-test: a\rb"])
def test_control_characters_in_headers_never_reach_a_provider(env: Providers, bad: bytes) -> None:
    """Envoy's HTTP/1 parser drops the connection on a control character, and takes a bare CR out
    of a value (Tollway would refuse any that got through: tests/unit/test_bad_input.py)."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": HI})
    status, _ = raw(env, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    + bad + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status in (0, 400, 200)
    if status == 200:
        seen = httpx.get(env.mock + "/_mock/requests").json()[-1]["headers"]
        assert ["x-test", "ab"] in seen and not any("\r" in value for _, value in seen)
    assert served(env)
    assert served(env)


@pytest.mark.parametrize("stream", [False, True])
def test_an_http_1_0_client_is_served(env: Providers, stream: bool) -> None:
    """Envoy's default 426 for HTTP/1.0 is made at the codec, and with an ext_proc filter in the chain
    such a reply never leaves (the connection closed, nothing sent): HTTP/1.0 is accepted instead.
    The answer ends with the connection (no chunked encoding in 1.0), a stream too."""
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": HI, "stream": stream})
    with socket.create_connection(("127.0.0.1", env.stack.listen_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)  # no Host: HTTP/1.0 need not send one
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), data[:300]
    if stream:
        assert answer.rstrip().endswith(b"data: [DONE]") and b'"delta"' in answer
    else:
        assert orjson.loads(answer)["choices"][0]["message"]["content"]
    assert served(env)


@pytest.mark.parametrize("model", ["../../v1/admin", "gpt-4o-mini%2F..%2Fx", "gpt-4o-mini#x", "gpt-4o-mini@evil.com"])
def test_a_model_name_that_could_steer_the_upstream_is_a_400(env: Providers, model: str) -> None:
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=HI)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_model"
    assert env.provider_saw(refused.value.response.headers.get("x-tollway-request-id")) == []


def test_forged_identity_headers_change_nothing(env: Providers) -> None:
    """A client claiming a workload identity (an XFCC header) or Tollway's own labels is still the sidecar."""
    client = openai.OpenAI(base_url=env.base_url + "/v1", api_key="x", max_retries=0)
    forged = {"x-forwarded-client-cert": 'By=spiffe://x;URI=spiffe://cluster.local/ns/ops/sa/admin',
              "x-tollway-team": "admins", "x-tollway-cluster": "openai", "x-envoy-max-retries": "5"}
    with pytest.raises(openai.NotFoundError):  # team sidecar may not use gpt-4o; admins could
        client.chat.completions.create(model="gpt-4o", messages=HI, extra_headers=forged)  # type: ignore[arg-type]
    raw_answer = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI,
                                                                   extra_headers=forged)  # type: ignore[arg-type]
    record = env.record(raw_answer.headers.get("x-tollway-request-id"))
    assert (record["team"], record["workload"], record["attempts"]) == ("sidecar", "local-dev", 1)
    (seen,) = env.provider_saw(raw_answer.headers.get("x-tollway-request-id"))
    assert not any(name.startswith("x-tollway") or name == "x-forwarded-client-cert" for name in seen["headers"])
    # Envoy's own headers from a client: its retry mark (the per-try filter's) never reaches the
    # provider, its retry policy is not Envoy's (a 500 is answered once, not sent and billed twice).
    envoys = {"x-envoy-is-timeout-retry": "true", "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "90000"}
    raw_answer = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI,
                                                                   extra_headers=envoys)  # type: ignore[arg-type]
    (seen,) = env.provider_saw(raw_answer.headers.get("x-tollway-request-id"))
    assert not set(envoys) & set(seen["headers"])
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI,  # type: ignore[arg-type]
                                       extra_headers={**envoys, "x-mock-status": "500"})
    assert len(env.provider_saw(failed.value.response.headers.get("x-tollway-request-id"))) == 1


def test_wrong_content_type_and_invalid_json_are_refused_in_the_clients_format(env: Providers) -> None:
    answer = httpx.post(env.base_url + "/v1/messages", content=b'{"model": "m"}', headers={
        "content-type": "text/plain", "anthropic-version": "2023-06-01"})
    assert answer.status_code == 415 and answer.json()["type"] == "error"
    answer = httpx.post(env.base_url + "/v1/chat/completions", content=b'{"model": "m", "model": "n"}',
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "twice" in answer.json()["error"]["message"]


def test_a_body_of_many_small_arrays_or_messages_is_a_413_before_it_is_parsed(env: Providers) -> None:
    """10 MB of nested arrays took the worker's loop 4.3 s and 837 MB; 500,000 one-word messages
    5 s: every other request on the worker timed out. Both are refused at once, in the client's format."""
    nested = b"[" * 120 + b"]" * 120 + b","
    body = (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": ['
            + nested * (10_000_000 // len(nested)) + b"[]]}}")
    started = time.monotonic()
    answer = httpx.post(env.base_url + "/v1/chat/completions", content=body, timeout=30,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 413 and time.monotonic() - started < 3
    error = answer.json()["error"]
    assert error["code"] == "request_too_large" and "500,000 arrays and objects" in error["message"]
    one = {"role": "user", "content": "x"}
    many = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [one] * 100_001})
    answer = httpx.post(env.base_url + "/v1/messages", content=many, timeout=30, headers={
        "content-type": "application/json", "anthropic-version": "2023-06-01"})
    assert answer.status_code == 413 and answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == "request_too_large" and "100,001" in answer.json()["error"]["message"]
    assert served(env)


def test_a_slow_upload_outlasts_envoys_message_timeout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Envoy sends the body behind its headers and Tollway answers the headers once the body is
    whole (ext_proc/server/coalesce.py): a body still arriving after Envoy's message timeout gets
    that timer extended, so a slow client is served, not cut off with a 504."""
    stack = Providers.stack(tmp_path_factory.mktemp("slow-upload"), POLICY, {"B_OPENAI_KEY": OPENAI_KEY},
                            workload="local-dev", message_timeout="1s", bodies_together=True)
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": HI})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    with stack, socket.create_connection(("127.0.0.1", stack.listen_port), timeout=10) as sock:
        sock.sendall(head + body[:20])
        time.sleep(1.6)  # past the 1 s message timeout
        sock.sendall(body[20:])
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert data.split(b" ", 2)[1] == b"200", data[:300]


@pytest.mark.parametrize("bodies", ["env", "buffered"])
def test_large_bodies_each_way_arrive_whole(bodies: str, request: pytest.FixtureRequest) -> None:
    """A 6 MiB prompt reaches the provider intact and a long answer the client, whether Envoy
    buffers the bodies or streams them to Tollway in many chunks (held until whole)."""
    env: Providers = request.getfixturevalue(bodies)
    text = "lorem ipsum dolor sit amet " * (6 * 1024 * 1024 // 27)
    answer = httpx.post(env.base_url + "/v1/chat/completions", timeout=60,
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
                        headers={"content-type": "application/json", "x-mock-chunks": "200000"})
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert len(body["choices"][0]["message"]["content"]) > 1_000_000  # the long answer, whole
    (seen,) = env.provider_saw(answer.headers["x-tollway-request-id"])
    assert orjson.loads(seen["body"])["messages"][0]["content"] == text



@pytest.mark.parametrize("bodies", ["env", "buffered"])
def test_a_large_prompt_over_http_2_arrives_whole(bodies: str, request: pytest.FixtureRequest) -> None:
    """A 3 MiB prompt from an HTTP/2 client (the client's flow-control windows, not the kernel's
    buffers, carry it to Envoy) reaches the provider whole, in both body modes: past the 1 MiB a
    client connection's buffers hold, Envoy keeps reading the stream for the request's own limit."""
    env: Providers = request.getfixturevalue(bodies)
    text = "lorem ipsum dolor sit amet " * (3 * 1024 * 1024 // 27)
    with httpx.Client(http1=False, http2=True, base_url=env.base_url, timeout=30) as client:
        answer = client.post("/v1/chat/completions", json={"model": "gpt-4o-mini",
                                                           "messages": [{"role": "user", "content": text}]})
    assert answer.http_version == "HTTP/2" and answer.status_code == 200, answer.text[:300]
    (seen,) = env.provider_saw(answer.headers["x-tollway-request-id"])
    assert orjson.loads(seen["body"])["messages"][0]["content"] == text


class EndlessProvider:
    """A provider whose every streamed answer never ends: 1 KiB chat chunks, 16 KiB every 4 ms
    (4 MB/s, which Tollway keeps up with: the client is the slow one), or slower when the
    connection does not take them. ``sent`` counts the bytes each answer got out (a blocked write
    stops it: what Envoy took and has not passed on, plus the kernel's socket buffers)."""

    EVENT = b"data: " + orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                                      "choices": [{"index": 0, "delta": {"content": "y" * 1000},
                                                   "finish_reason": None}]}) + b"\n\n"

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent: list[int] = []
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            if head.startswith(b"GET"):  # the stack's readiness check
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                return
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            index = len(self.sent)
            self.sent.append(0)
            chunk = b"%x\r\n" % (len(self.EVENT) * 16) + self.EVENT * 16 + b"\r\n"
            try:
                while not self.stop.is_set():
                    conn.sendall(chunk)
                    self.sent[index] += len(chunk)
                    time.sleep(0.004)
            except OSError:
                pass

    def close(self) -> None:
        """Stop, its threads gone (a thread left running makes a later test's zygote refuse to fork:
        closing a listening socket does not wake a thread blocked in its accept, shutting it does)."""
        self.stop.set()
        for sock in (self.server, *self.conns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server.close()
        for thread in self.threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in self.threads)


def test_a_client_that_stops_reading_a_stream_makes_envoy_hold_little_of_it(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Envoy stops reading the provider once about its connection buffer limit (1 MiB) waits for a
    client that does not read: two such clients of a never-ending stream hold a few MiB in Envoy,
    not the 64 MiB each the request bodies' limit allows (which they did when that limit was the
    connection's: about 100 MiB of Envoy's memory per client, measured)."""
    provider = EndlessProvider()
    stack = Stack(tmp_path_factory.mktemp("slow-reader") / "stack", mock=False, mock_port=provider.port,
                  mocked=frozenset({"openai"}))
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": HI})
    clients = []
    try:
        with stack:
            def allocated() -> int:
                return int(orjson.loads(stack.envoy_admin("/memory").text)["allocated"])

            before = allocated()
            for _ in range(2):
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.connect(("127.0.0.1", stack.listen_port))
                client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                               b"content-length: %d\r\n\r\n" % len(body) + body)
                clients.append(client)
            # Until the provider's writes block (nothing sent for a second), at most 15 s.
            deadline, last, still = time.monotonic() + 15, None, 0
            while time.monotonic() < deadline and still < 4:
                time.sleep(0.25)
                now = list(provider.sent)
                still, last = (still + 1 if now == last and len(now) == 2 else 0), now
            assert last is not None and len(last) == 2, "the provider did not get both streams"
            held = allocated() - before
            paused = stack.envoy_admin("/stats", params={
                "filter": "^cluster.openai.upstream_flow_control_paused_reading_total$"}).text
            assert max(last) < 16 << 20, f"the provider sent {last} bytes: Envoy kept reading"
            assert held < 24 << 20, f"Envoy holds {held >> 20} MiB more for two clients that do not read"
            assert int(paused.split(": ")[1]) > 0  # Envoy paused its reading of the provider
    finally:
        for client in clients:
            client.close()
        provider.close()


def test_bodies_together_are_two_exchanges_and_buffered_ones_four(env: Providers, buffered: Providers) -> None:
    """Together (the default): an HTTP/1 body reaches Envoy's filters as its data and an empty last
    chunk, so six messages, answered in two writes; Envoy then passes the bodies on without
    content-length, whatever Tollway sets: the buffer filter behind Tollway's gives the request
    its length back (the provider gets a sized request), the client's answer comes chunked.
    Buffered: headers, then the whole body, each way, each answered on its own; lengths kept."""
    stream = env.openai().chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    for stack, messages in ((buffered, 4), (env, 6)):
        before = messages_sent(stack)
        answer = httpx.post(stack.base_url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HI})
        assert answer.status_code == 200 and answer.json()["choices"]
        assert messages_sent(stack) - before == messages
        (seen,) = stack.provider_saw(answer.headers["x-tollway-request-id"])
        assert seen["headers"]["content-length"] == str(len(seen["body"].encode()))
        assert "transfer-encoding" not in seen["headers"]
        if stack is buffered:
            assert int(answer.headers["content-length"]) == len(answer.content)
        else:
            assert answer.headers["transfer-encoding"] == "chunked"


def test_bodies_past_a_workers_memory_are_a_503_the_sdk_retries(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A worker holds at most ``--body-memory`` MiB of request bodies at once (ext_proc/server/bodies.py):
    while a slow upload holds 0.9 MiB of a 1 MiB limit, another request's body is refused with 503
    ``overloaded`` and retry-after, in the client's format, never sent on; the SDK's retry is served
    once the upload is done, and the refusal is on the request log."""
    stack = Providers.stack(tmp_path_factory.mktemp("body-memory"), POLICY, {"B_OPENAI_KEY": OPENAI_KEY},
                            workload="local-dev", workers=1, serve_args=("--body-memory", "1"))
    text = "a" * (900 << 10)
    slow = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(slow)}\r\n\r\n").encode()
    small = [{"role": "user", "content": "b" * (200 << 10)}]
    with stack, socket.create_connection(("127.0.0.1", stack.listen_port), timeout=10) as sock:
        env = Providers(stack, "x")
        sock.sendall(head + slow[:-10])  # all but its last bytes: the worker holds them
        time.sleep(0.5)
        client = env.openai()
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=small)  # type: ignore[arg-type]
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["code"] == "overloaded"  # type: ignore[index]
        refused_id = refused.value.response.headers["x-tollway-request-id"]
        assert env.provider_saw(refused_id) == []

        def finish() -> None:
            time.sleep(0.3)
            sock.sendall(slow[-10:])

        finisher = threading.Thread(target=finish)
        finisher.start()
        retrying = openai.OpenAI(base_url=env.base_url + "/v1", api_key="x", max_retries=5, timeout=10)
        answer = retrying.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=small)  # type: ignore[arg-type]
        assert answer.parse().choices[0].message.content
        finisher.join()
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.split(b" ", 2)[1] == b"200", data[:300]
    records = [orjson.loads(line) for line in stack.record_log.read_text().splitlines()]
    (record,) = [r for r in records if r.get("request_id") == refused_id]
    assert (record["outcome"], record["status"], record["error"]) == ("rejected", 503, "overloaded")


_FRAMING_BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": HI})
_CHUNKED = hex(len(_FRAMING_BODY))[2:].encode() + b"\r\n" + _FRAMING_BODY + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("request_bytes", [
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: gzip, chunked\r\n\r\n" + _CHUNKED,
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5\r\n"
    b"transfer-encoding: chunked\r\n\r\n" + _CHUNKED,
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\nzz\r\n" + _FRAMING_BODY + b"\r\n0\r\n\r\n",
    b"post /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_FRAMING_BODY)).encode() + b"\r\n\r\n" + _FRAMING_BODY,
], ids=["te-gzip-chunked", "cl-and-te", "bad-chunk-size", "lowercase-method"])
def test_a_framing_error_envoy_refuses_is_the_clients_not_a_providers(env: Providers, request_bytes: bytes) -> None:
    """Envoy's HTTP/1 codec refuses the request's framing (a 400, or a 501 whose reply is lost:
    envoy#29440), before any provider is asked: the record says the client's request was refused
    (``rejected``, ``bad_request_framing``), not that the provider failed (``provider_unavailable``)."""
    before = len(env.records())
    for _ in range(2):  # (a 501 as a fresh Envoy's first request reaches no ext_proc stream: no record)
        with socket.create_connection(("127.0.0.1", env.stack.listen_port), timeout=10) as sock:
            sock.sendall(request_bytes)
            while sock.recv(65536):
                pass
        assert served(env)
    deadline = time.monotonic() + 10
    refused: list[dict[str, object]] = []
    while not refused and time.monotonic() < deadline:
        time.sleep(0.1)
        refused = [record for record in env.records()[before:] if record["status"] != 200]
    assert refused and all(record["outcome"] == "rejected" and record["error"] == "bad_request_framing"
                           and record["provider"] is None for record in refused), refused


@pytest.mark.parametrize(("path", "upgrade"), [("/v1/chat/completions", b"foo"), ("/v1/messages", b"tls/1.3"),
                                              ("/v1/chat/completions", b"websocket, foo"),
                                              ("/v1/chat/completions", b"websocketx")])
def test_an_upgrade_envoy_does_not_serve_is_a_400_in_the_clients_format_with_a_record(
        env: Providers, path: str, upgrade: bytes) -> None:
    """Envoy refuses an upgrade it has no config for (anything but websocket) itself, before any
    filter runs: it was a bare 403 with no body, and a record without the request's id. Now a 400
    in the client's format, and the record carries the id the answer names."""
    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI})
    request = (f"POST {path} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n").encode() + b"upgrade: " + upgrade + b"\r\n\r\n" + body
    before = len(env.records())
    with socket.create_connection(("127.0.0.1", env.stack.listen_port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"0\r\n\r\n") and (chunk := sock.recv(65536)):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400"
    request_id = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"x-tollway-request-id:"))
    error = orjson.loads(rest[rest.index(b"{"):rest.rindex(b"}") + 1])
    if path == "/v1/messages":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "upgrade" in (error["error"]["message"]).lower()
    deadline = time.monotonic() + 10
    records: list[dict[str, object]] = []
    while not records and time.monotonic() < deadline:
        time.sleep(0.1)
        records = [record for record in env.records()[before:] if record["request_id"] == request_id]
    assert [(r["status"], r["outcome"], r["error"]) for r in records] == [(400, "rejected", "upgrade_failed")]
    assert served(env)
