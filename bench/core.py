"""``make bench-core``: CPU per request of Tollway's core alone, in process, no I/O.

For each case the same serialized ext_proc messages Envoy sends (request headers with the demo
key, the request body, the response headers, the response body: whole, or as SSE chunks) go
through :class:`ext_proc.server.servicer.ExtProcCall` — decode, the session, encode — with the
example policy and the real accountant (tokenizer, price table), and the records it emits are
collected in memory. Reported: microseconds of process CPU per request (median of repeats), then
what the service's telemetry adds to that: ``+metrics`` counts every record into the worker's
tally (:mod:`ext_proc.server.metrics`); ``+traces`` also traces the default head sample (5 % of the
requests whose caller sent no ``traceparent``), and ``+traces 100%`` every request: the span built
and handed to OpenTelemetry's batch processor, which exports over OTLP/HTTP to a sink on loopback
from its own thread (counted: it is this process's CPU). Without an OTLP endpoint there is no
tracer and the session collects nothing, which is the first column. Last, when a case and its
``-guarded`` twin both ran, what the guardrails add, measured in pairs run alternately (the goal
of issue 13: at most 150 µs on the 2 KB chat request).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb  # noqa: E402

from ext_proc import memo  # noqa: E402
from ext_proc.mock import responses  # noqa: E402
from ext_proc.server.accounting import warm_up  # noqa: E402
from ext_proc.server.metrics import Names, Tally  # noqa: E402
from ext_proc.server.reload import PolicyController, PolicyHolder, Publication  # noqa: E402
from ext_proc.server.servicer import ExtProcCall, Service  # noqa: E402
from ext_proc.server.telemetry import TelemetryConfig, Tracer  # noqa: E402

POLICY = ROOT / "policies" / "example.yaml"
DEMO_KEY = "tw-local-demo-key-not-secret"
# Each request's newest message ends in its own number (MARK replaced per request): the guardrails
# and the token count answer from the worker's memory only what a request re-sends (ext_proc.memo),
# as a conversation does; a benchmark that sent one body again and again would measure that memory.
MARK = b"#NNNNNNNNN"
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark in one short sentence. (" + MARK.decode() + ")"}]
# A typical 2 KB chat request: a system prompt, two earlier turns and a question about a pasted text.
_PASTE = ("Our quarterly review covers the migration of the billing service to the new cluster, the on-call "
          "rotation changes and the customer escalations from October. The migration finished two weeks late "
          "because the schema change needed a second maintenance window; no data was lost and the rollback plan "
          "was never used. Escalations fell by a third after the new runbooks, but response times at night are "
          "still above target. Next quarter we want to retire the legacy queue, finish the audit-log export and "
          "move the nightly reports off the primary database. ")
MESSAGES_2K = [
    {"role": "system", "content": "You are a concise assistant for an engineering team. Answer in plain English, "
                                  "cite the text you were given, and say when you are unsure."},
    {"role": "user", "content": "Can you help me summarise a report? I will paste it next."},
    {"role": "assistant", "content": "Of course. Paste the report and tell me who the summary is for."},
    {"role": "user", "content": "It is for the leadership meeting; send questions to ops-lead@example.com. "
                                "Here it is:\n\n" + _PASTE * 2 + "\nPlease give three bullet points and one risk. ("
                                + MARK.decode() + ")"},
]


def _conversation() -> list[dict[str, str]]:
    """A conversation in its seventh turn (about 14 KB): a system prompt, six exchanges, each user
    turn pasting a different arrangement of the report, and a new question."""
    sentences = _PASTE.split(". ")
    out = [MESSAGES_2K[0]]
    for turn in range(6):
        paste = ". ".join(sentences[(turn + k) % len(sentences)] for k in range(len(sentences) * 3))
        out.append({"role": "user", "content": f"Part {turn + 1} of the notes, from ops-lead@example.com:\n\n{paste}"})
        out.append({"role": "assistant", "content": f"Noted part {turn + 1}. " + " ".join(sentences[turn:turn + 3])})
    out.append({"role": "user", "content": "Which of these risks should leadership hear about first, and why? ("
                                           + MARK.decode() + ")"})
    return out


MESSAGES_CONVERSATION = _conversation()
# The guardrails measured: PII redacted both ways, credentials blocked, prompt injection blocked.
GUARDRAILS = """guardrails:
  rules:
    - {name: secrets, detectors: [credentials], action: block}
    - {name: pii, detectors: [pii], action: redact}
    - {name: injection, detectors: [prompt_injection], action: block}
"""
# Budgets and rate limits measured: a monthly budget in USD and tokens and per-minute limits on the
# demo team, far from their limits (admission and settlement on every request, nothing refused).
def bare_policy() -> str:
    """The example policy without its budgets, rate limits and guardrails (the sections at its end)."""
    example = POLICY.read_text()
    return example[:example.index("\n# --- Budgets and rate limits")] + "\n"


LIMITS = """budgets:
  demo-monthly: {team: demo, usd: "1000000", tokens: 1000000000000, period: month}
rate_limits:
  demo: {team: demo, requests_per_minute: 100000000, tokens_per_minute: 100000000, concurrent: 10000}
"""


class Records:
    """Stands in for the RecordWriter: keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def started(self, record: dict[str, Any]) -> None:
        """The write-ahead note of a request going upstream (the real writer journals it)."""


def _headers(pairs: list[tuple[str, str]]) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))


def _attributes(values: dict[str, str]) -> dict[str, Any]:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update(values)
    return {"envoy.filters.http.ext_proc": struct}


def messages(case: str) -> list[bytes]:
    """The serialized ProcessingRequests of one request of ``case`` (``-guarded``: the same request)."""
    case = case.removesuffix("-guarded").removesuffix("-limits").removesuffix("-full")
    model = {"chat": "gpt-4o-mini", "chat-stream": "gpt-4o-mini", "translated": "claude-haiku",
             "translated-stream": "claude-haiku", "alias": "chat", "chat-2k": "gpt-4o-mini",
             "chat-2k-stream": "gpt-4o-mini", "chat-conversation": "gpt-4o-mini"}[case]
    stream = case.endswith("-stream")
    chosen = MESSAGES_2K if "-2k" in case else MESSAGES_CONVERSATION if case == "chat-conversation" else MESSAGES
    body = json.dumps({"model": model, "messages": chosen, "stream": stream}).encode()
    out = [
        pb.ProcessingRequest(request_headers=_headers([
            (":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "127.0.0.1:10000"),
            ("content-type", "application/json"), ("authorization", f"Bearer {DEMO_KEY}"),
            ("x-request-id", "0f0e0d0c-0b0a-0908-0706-050403020100"), ("content-length", str(len(body)))])),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
    ]
    anthropic = case.startswith("translated")
    upstream_model = "claude-3-5-haiku-20241022" if anthropic else "gpt-4o-mini"
    attributes = {"upstream.request_attempt_count": 1}
    if case == "alias":
        attributes["xds.upstream_host_metadata"] = ('filter_metadata { key: "tollway" value { fields { key: "slot" '
                                                    'value { string_value: "0" } } } }')
    content_type = "text/event-stream" if stream else "application/json"
    out.append(pb.ProcessingRequest(response_headers=_headers([(":status", "200"), ("content-type", content_type)]),
                                    attributes=_attributes(attributes)))
    gen = responses.generate({"model": upstream_model}, id="bench0001", created=1_700_000_000, chunks=8,
                             prompt_tokens=24)
    if stream:
        chunks = responses.anthropic_message_events(gen) if anthropic else responses.openai_chat_events(gen, True)
        for chunk in chunks:
            out.append(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=False)))
        out.append(pb.ProcessingRequest(response_body=pb.HttpBody(body=b"", end_of_stream=True)))
    else:
        answer = responses.anthropic_message_json(gen) if anthropic else responses.openai_chat_json(gen)
        out.append(pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True)))
    return [m.SerializeToString() for m in out]


_NUMBERS = itertools.count(1)


def numbered(case: str, n: int) -> Iterator[list[bytes]]:
    """``n`` requests of ``case``, each with its newest message numbered anew (never sent before in
    this process): the same length, so only the bytes of the number differ. Each is made when it is
    asked for (a copy of the body, under a microsecond per 2 KB, counted): its bytes are as fresh in
    the CPU's caches as those of a body just read from a socket."""
    data = messages(case)
    head, body, rest = data[0], data[1], data[2:]
    assert body.count(MARK) == 1
    for _ in range(n):
        yield [head, body.replace(MARK, _letters(next(_NUMBERS))), *rest]


def _letters(number: int) -> bytes:
    """``number`` as ten letters (a digit run would be a phone number's candidate, checked and
    dropped: about 14 µs of the phone detector that a typical message does not cost)."""
    out = bytearray(b"#")
    for _ in range(len(MARK) - 1):
        number, digit = divmod(number, 26)
        out.append(ord("a") + digit)
    return bytes(out)


def first_chunk(service: Service, case: str, n: int) -> float:
    """CPU µs from the request body to the first streamed chunk answered (what delays the first token)."""
    total = 0.0
    for data in numbered(case, n):
        head, rest = data[:1], data[1:4]
        call = ExtProcCall(service)
        for message in head:
            call.message(message)
        started = time.process_time()
        for message in rest:
            call.message(message)
        total += time.process_time() - started
        for message in data[4:]:
            call.message(message)
        call.end()
    return total / n * 1e6


def run(service: Service, case: str, n: int) -> float:
    for data in numbered(case, 50):  # warm-up: caches, first-use paths
        call = ExtProcCall(service)
        for message in data:
            call.message(message)
        call.end()
    started = time.process_time()
    for data in numbered(case, n):
        call = ExtProcCall(service)
        for message in data:
            call.message(message)
        call.end()
    return (time.process_time() - started) / n * 1e6


def published(path: Path) -> PolicyHolder:
    """A worker's view of ``path``'s policy, as tollway serve's parent publishes it."""
    publication = Publication()
    assert PolicyController(str(path), publication).start()
    return PolicyHolder(publication)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per repeat (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; the median is reported (default 5)")
    parser.add_argument("--cases", default="chat,chat-limits,chat-stream,chat-stream-limits,alias,translated,"
                                          "translated-stream,chat-2k,chat-2k-guarded,chat-2k-stream,"
                                          "chat-2k-stream-guarded,chat-conversation,chat-conversation-guarded,chat-full,chat-2k-full,"
                                          "chat-2k-stream-full")
    args = parser.parse_args()
    # Inside an event loop, as in the server (the budget counters report in the background).
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        os.environ.setdefault(variable, "sk-bench-not-a-key")
    # The example policy without its budgets, rate limits and guardrails: the core alone; then
    # with one of them; "-full" cases run the example as shipped (everything on).
    bare = bare_policy()
    bare_file = Path(tempfile.mkdtemp()) / "bare.yaml"
    bare_file.write_text(bare)
    holder = published(bare_file)
    assert holder.current is not None and not holder.current.guardrails and not holder.current.limits
    guarded_file = bare_file.with_name("guarded.yaml")
    guarded_file.write_text(bare + GUARDRAILS)
    guarded_holder = published(guarded_file)
    assert guarded_holder.current is not None and guarded_holder.current.guardrails
    limited_file = bare_file.with_name("limited.yaml")
    limited_file.write_text(bare + LIMITS)
    limited_holder = published(limited_file)
    assert limited_holder.current is not None and limited_holder.current.limits
    full_holder = published(POLICY)
    assert full_holder.current is not None and full_holder.current.guardrails and full_holder.current.limits
    records = Records()
    accountant = warm_up()
    service = Service(records, holder, "local-dev", accountant=accountant)  # type: ignore[arg-type]
    guarded = Service(records, guarded_holder, "local-dev", accountant=accountant)  # type: ignore[arg-type]
    limited = Service(records, limited_holder, "local-dev", accountant=accountant)  # type: ignore[arg-type]
    full = Service(records, full_holder, "local-dev", accountant=accountant)  # type: ignore[arg-type]
    tracer, sink = _tracer()
    tally = Tally(Names(lambda: holder.current))
    print(f"{'case':24} {'µs/request':>10}   (median of {args.repeats} x {args.n}; min..max)   "
          f"{'+metrics':>9} {'+traces':>8} {'+traces 100%':>13}")
    for case in args.cases.split(","):
        chosen = (guarded if case.endswith("-guarded") else limited if case.endswith("-limits")
                  else full if case.endswith("-full") else service)
        base = [run(chosen, case, args.n) for _ in range(args.repeats)]
        chosen.on_record = tally.record
        counted = [run(chosen, case, args.n) for _ in range(args.repeats)]
        chosen.on_trace = tracer.finish
        tracer.ratio = 0.05
        sampled = [run(chosen, case, args.n) for _ in range(args.repeats)]
        tracer.ratio = 1.0
        traced = [run(chosen, case, args.n) for _ in range(args.repeats)]
        tracer.provider.force_flush()
        chosen.on_record = chosen.on_trace = None
        samples = base
        record = records.records[-1]
        assert record["outcome"] == "ok" and record["output_tokens"] and record["cost_usd_micros"] is not None, record
        if case.endswith("-guarded"):
            assert record["guardrails"] == ["pii"], record  # the pasted email was redacted
        if case.endswith("-limits"):
            assert len(record["limits"]) == 5, record  # usd, tokens; requests, tokens, a concurrency slot
        extra = ""
        if "-stream" in case:
            first = statistics.median(first_chunk(chosen, case, args.n // 4) for _ in range(args.repeats))
            extra = f"   first chunk after {first:.1f} µs"
        median = statistics.median(samples)
        plus = (f"{statistics.median(counted) - median:+9.1f} {statistics.median(sampled) - median:+8.1f} "
                f"{statistics.median(traced) - median:+13.1f}")
        print(f"{case:24} {median:10.1f}   ({min(samples):.1f}..{max(samples):.1f})   {plus}{extra}")
        records.records.clear()
    tracer.close()
    print(f"spans exported to the OTLP sink: {sink.spans}")
    cases = args.cases.split(",")
    for case in ("chat-2k", "chat-2k-stream", "chat-conversation"):
        if case in cases and case + "-guarded" in cases:
            added = paired(service, guarded, case, args.n, 2 * args.repeats + 1)
            records.records.clear()
            print(f"guardrails add to {case}: {statistics.median(added):+.1f} µs per request (median of "
                  f"{len(added)} pairs run alternately; {min(added):+.1f}..{max(added):+.1f})"
                  + ("   goal ≤ 150 µs" if case == "chat-2k" else ""))
    if "chat-conversation" in cases and "chat-conversation-guarded" in cases:
        # The same without the worker's memory of texts: every text of the conversation scanned
        # and tokenized in every request, as before it.
        memo.configure(0)
        try:
            bare = statistics.median(run(service, "chat-conversation", args.n) for _ in range(args.repeats))
            added = paired(service, guarded, "chat-conversation", args.n, 2 * args.repeats + 1)
        finally:
            memo.configure(memo.DEFAULT_ENTRIES)
        records.records.clear()
        print(f"nothing remembered (ext_proc.memo off): chat-conversation {bare:.1f} µs per request, guardrails "
              f"add {statistics.median(added):+.1f} µs ({min(added):+.1f}..{max(added):+.1f})")
    return 0


def paired(without: Service, with_: Service, case: str, n: int, pairs: int) -> list[float]:
    """What ``with_`` adds to ``case`` over ``without``: one run of each in turn, ``pairs`` times, so
    that a machine whose speed drifts weighs on both alike (the rows above run one case at a time)."""
    return [run(with_, case + "-guarded", n) - run(without, case, n) for _ in range(pairs)]


class _Sink:
    """An OTLP/HTTP collector on loopback that reads and counts what it is sent."""

    spans = 0


def _tracer() -> tuple[Tracer, type[_Sink]]:
    import http.server
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            _Sink.spans += sum(len(s.spans) for r in ExportTraceServiceRequest.FromString(body).resource_spans
                               for s in r.scope_spans)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = TelemetryConfig(f"http://127.0.0.1:{server.server_address[1]}")
    return Tracer.exporting(config), _Sink


if __name__ == "__main__":
    sys.exit(main())
