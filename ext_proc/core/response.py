"""The response path: the provider's answer, decoded into events, through ordered stages.

Theory of operation. A successful answer is a sequence of events: the one JSON body of a
buffered answer (an :class:`~ext_proc.llm.sse.SSEEvent` with ``whole`` set), or the SSE events
of a stream, decoded incrementally whatever the chunking (only whole events go on; the bytes of
an unfinished one wait for the next chunk). Each :class:`Stage` takes the events of one Envoy
message and returns the events to pass on; at the end of the answer, :meth:`Stage.end` may add
more. The stages are the same for JSON and for streams, translated or not; registration and
order are in :mod:`ext_proc.core.pipeline`::

    decode → read (meter) → hide usage → guard → translate → finish → encode

``read`` gives every event to the served API's :class:`~ext_proc.llm.apis.Reader` (usage, the
served model, completion, errors); ``hide usage`` drops the usage event Tollway asked for on the
client's behalf; ``guard`` (:mod:`ext_proc.core.guard`) restores pseudonyms and redacts or blocks
what the policy's guardrails find in the answer; ``translate`` turns the served API's events into
the client's; ``finish`` ends a
stream that stopped before completing with an explicit error event in the client's format, so
its SDK raises instead of returning a short answer. Encoding joins the events' bytes: when no
stage changed anything the message passes through untouched (no re-encoding), which is the cost
of an answer that needs no translation.

Error answers (HTTP status 400 and up) are not streamed; :func:`error_answer` gives them the
client's format (a provider's non-JSON answer, Envoy's own plain-text replies: see
:func:`~ext_proc.llm.errors.plain_error`) and notes the provider's error code.
Envoy's own reply for a provider it could not reach (``no healthy upstream``, a refused or failed
connection, a timeout: written by the bootstrap's ``local_reply_config``) is explained instead
(:func:`unreachable`): which provider, at which host (or stand-in), what failed and what to check.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from ext_proc.core.flow import Flow
from ext_proc.llm import apis, exact
from ext_proc.llm.apis import error_code, gunzip
from ext_proc.llm.errors import INTERRUPTED, ClientError, plain_error
from ext_proc.llm.sse import SSEDecoder, SSEEvent
from ext_proc.llm.translate import StreamTranslator
from ext_proc.llm.translate.responses_common import EventWriter, response_id
from ext_proc.policy.compiled import DEFAULT_ENDPOINTS, Provider

UNTRANSLATABLE = ClientError(502, "untranslatable_response", "The provider's answer could not be translated.")
MAX_EVENT = 8 * 1024 * 1024  # bytes of one streamed event: a provider sending more is cut off
OVERSIZED = ClientError(502, "provider_event_too_large",
                        f"The provider sent a stream event larger than {MAX_EVENT // (1024 * 1024)} MiB.")
UNREADABLE = ClientError(502, "provider_event_unreadable",
                         "The provider sent a stream event that is not a JSON object; Tollway, which reads every "
                         "event of this stream (its guardrails, its translation), ended it there.")
CUT = (OVERSIZED.code, UNREADABLE.code)  # a stream ended for its provider's event: nothing more reaches the client
INVALID_ANSWER = "invalid_provider_answer"  # a 2xx answer that is not one: Tollway's 502 instead


def invalid_answer(flow: Flow, what: str) -> ClientError:
    """The 502 a client gets instead of a provider's successful status with no answer behind it
    (``what``: what came instead, never the provider's bytes: an HTML page may hold anything)."""
    provider = f"The provider '{flow.provider}'" if flow.provider else "The provider"
    return ClientError(502, INVALID_ANSWER, f"{provider} answered {flow.status} with {what}, not an answer; "
                       "Tollway withheld it.")


class Refused(Exception):
    """A buffered answer the client must not get: it gets ``error`` instead (its status, in its format)."""

    def __init__(self, error: ClientError) -> None:
        super().__init__(error.code)
        self.error = error


class Untranslatable(Refused):
    """A buffered answer the client's API cannot express: the client gets :data:`UNTRANSLATABLE`."""

    def __init__(self) -> None:
        super().__init__(UNTRANSLATABLE)


class Stage:
    """One step of the response path: events in, events out (see the module docstring).

    Stages are stateless (one object serves every response); what one answer needs is on its
    flow: the served API's reader, the stream translator.
    """

    __slots__ = ()
    # The stage reads every event's JSON (a guard scanning the answer's text, a translator): a
    # stream event that is not a JSON object (nor ``[DONE]``) could carry anything past it, so it
    # ends the client's stream with an error (:data:`UNREADABLE`) instead of passing on unread.
    reads_all: ClassVar[bool] = False

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        return events

    def end(self, flow: Flow) -> list[SSEEvent]:
        """The stream ended (completely or not): events to add after the last ones."""
        return []


class Read(Stage):
    """The meter's eyes: the served API's reader sees every event, changes none."""

    __slots__ = ()

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        reader = flow.meter.reader
        assert reader is not None
        for event in events:
            reader.feed(event)
        return events


class HideUsage(Stage):
    """Drops the usage event the provider sent because Tollway asked for it, not the client."""

    __slots__ = ()

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        if any(event.usage_only for event in events):
            return [event for event in events if not event.usage_only]
        return events


class Translate(Stage):
    """The served API's answer as the client's, through the flow's :class:`~ext_proc.llm.translate.Pair`
    (and, for a stream, its :class:`~ext_proc.llm.translate.StreamTranslator`)."""

    __slots__ = ()
    reads_all = True

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        pair = flow.pair
        assert pair is not None
        translator = flow.translator
        if translator is None:  # a buffered answer: one whole JSON body
            out = []
            for event in events:
                payload = event.json()
                if payload is None:
                    out.append(event)
                    continue
                try:
                    answer = pair.response(payload, flow.asked, flow.runtime)
                except Exception:  # a malformed provider answer: the client gets a clear 502
                    raise Untranslatable from None
                body = exact.dumps(answer)
                out.append(SSEEvent("", body, body, whole=True))
            return out
        if not events:
            return events
        return [_bytes(b"".join([_translate(flow, translator, event) for event in events]))]

    def end(self, flow: Flow) -> list[SSEEvent]:
        translator = flow.translator
        if translator is None or flow.stream_failed or flow.refused is not None or not complete(flow):
            return []
        tail = translator.end()
        return [_bytes(tail)] if tail else []


def _translate(flow: Flow, translator: StreamTranslator, event: SSEEvent) -> bytes:
    if not event.data or flow.stream_failed:
        return b""
    try:
        return translator.feed(event)
    except Exception as exc:  # an answer the client's API cannot express: end its stream with an error
        flow.stream_failed = True
        flow.error = "untranslatable_stream"
        message = getattr(exc, "message", None) or "The provider's stream could not be translated."
        return translator.error(f"Tollway could not translate the provider's stream: {message}")


class Finish(Stage):
    """A stream that ends before completing ends with the client's error event, never cleanly."""

    __slots__ = ()

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        refused = flow.refused
        if refused is not None:  # a guardrail blocked the answer: one error event ends the client's stream
            if flow.stream_failed:
                return []
            flow.stream_failed = True  # nothing more goes to the client (nor is translated)
            assert flow.api is not None
            return [_bytes(_stream_error(flow, refused))]
        # The stream's last event, received whole but for its blank line, goes on only if the
        # stream completed (a translated stream has already passed it through the translator).
        if events and events[-1].last and flow.translator is None and not complete(flow):
            flow.withheld += sum(1 for event in events if event.last and event.data)
            return [event for event in events if not event.last]
        return events

    def end(self, flow: Flow) -> list[SSEEvent]:
        if flow.stream_failed or complete(flow):
            return []
        reader = flow.meter.reader
        if reader is not None and reader.error is not None and not flow.withheld:
            # The provider ended its stream with its own error event (``error``, ``response.failed``),
            # which the client has (translated, if need be): a second one would only contradict it.
            flow.error = flow.error or reader.error
            return []
        flow.error = flow.error or (reader.error if reader is not None else None) or INTERRUPTED.code
        assert flow.api is not None
        return [_bytes(_stream_error(flow, INTERRUPTED))]


def _stream_error(flow: Flow, error: ClientError) -> bytes:
    """``error`` as the client's API ends a stream with it, numbered after what the client got. A
    Responses stream that gave the client nothing yet (a guardrail held back everything, the
    provider's stream ended early) opens first with ``response.created`` and
    ``response.in_progress`` of an empty response (its id, the model asked for, no output): the
    ``openai`` SDK's ``responses.stream()`` refuses any event before ``response.created`` with a
    bare RuntimeError, losing the error's code and message."""
    assert flow.api is not None
    sequence = _sequence(flow)
    if sequence or flow.api is not apis.RESPONSES:
        return flow.api.stream_error(error, sequence)
    writer = EventWriter(int(flow.runtime.now()))
    head = writer.start(response_id(None, "", flow.runtime.token), flow.model or "")
    return head + flow.api.stream_error(error, writer.sequence)


def _sequence(flow: Flow) -> int:
    """An API that numbers its events (Responses) numbers an error after what the client got: the
    translator's events, or the provider's as the guard numbered them (it may add some), or as
    read; less the last one when it was withheld."""
    if flow.translator is not None:
        return int(getattr(flow.translator, "sequence", 0))
    numbered = flow.guard.sequence if flow.guard is not None else None
    if numbered is None:
        numbered = int(getattr(flow.meter.reader, "sequence", 0))
    return max(0, numbered - flow.withheld)


def complete(flow: Flow) -> bool:
    """The provider's answer completed. A translated stream is complete when its translator says
    so, whatever the served API's reader saw: a chat stream's ``[DONE]`` ends it for a chat
    client, but one without a finish reason left an Anthropic or Responses client no end to give
    (no ``message_stop``, no ``response.completed``), so it is cut. Otherwise the reader judges."""
    translator = flow.translator
    if translator is not None:
        return translator.complete
    reader = flow.meter.reader
    return bool(reader is not None and reader.complete)


def _bytes(raw: bytes) -> SSEEvent:
    """Events a stage wrote itself: bytes for the client, nothing more to read."""
    return SSEEvent("", b"", raw)


READ_ONLY: tuple[Stage, ...] = (Read(),)  # an untranslated buffered answer: the meter reads, nothing changes


def whole(flow: Flow, stages: tuple[Stage, ...], body: bytes) -> bytes | None:
    """A buffered answer through the stages: the body to send instead, or None to pass it through
    untouched. A whole body is complete by itself: only the stages' ``feed`` runs.

    Raises :class:`Refused` (:class:`Untranslatable` among them) when the client must get an error instead.
    """
    data = body
    # A successful status must come with a JSON object (what every API Tollway serves answers): an
    # HTML page from a proxy, an empty or cut body is no answer, and the client gets a 502 rather
    # than a 200 its SDK cannot parse. Judged on the JSON the meter decodes anyway; a body Tollway
    # cannot decode (an encoding other than gzip, a gzip it cannot inflate) passes as before.
    judged = flow.api is not None and 200 <= (flow.status or 0) < 300 and flow.answer_coding in (None, "gzip")
    if body[:2] == b"\x1f\x8b":
        try:
            data = gunzip(body, ratio=None)
        except ClientError:
            data, judged = b"", False
    if stages is READ_ONLY:  # nothing but the meter: read, pass through
        reader = flow.meter.reader
        assert reader is not None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            if judged:
                raise Refused(invalid_answer(flow, _not_json(data)))
            payload = None
        reader.whole(payload)
        return None
    events = [SSEEvent("", data, body, whole=True)]
    if judged and events[0].json() is None:  # (decoded once: the stages read the same)
        raise Refused(invalid_answer(flow, _not_json(data)))
    for stage in stages:
        events = stage.feed(flow, events)
    if len(events) == 1:
        raw = events[0].raw
        return None if raw is body else raw
    return b"".join([event.raw for event in events])


def _not_json(data: bytes) -> str:
    """What a body that is not a JSON object is, in words: never its content."""
    if not data.strip():
        return "an empty body"
    return f"a body of {len(data)} bytes that is not a JSON object (an HTML page, a cut answer)"


class Stream:
    """One streamed answer's path: decode, the stages, encode (see the module docstring)."""

    __slots__ = ("decoder", "flow", "stages", "strict")

    def __init__(self, flow: Flow, stages: tuple[Stage, ...]) -> None:
        self.flow = flow
        self.stages = stages
        self.decoder = SSEDecoder()
        self.strict = any(stage.reads_all for stage in stages)  # every event must be JSON (Stage.reads_all)

    def chunk(self, body: bytes, end: bool) -> bytes | None:
        """One chunk of the stream: the bytes to send instead, or None when they are the same."""
        decoder = self.decoder
        flow = self.flow
        if flow.stream_failed and flow.error in CUT:  # the stream was ended: nothing more reaches the client
            if flow.error == UNREADABLE.code:  # (the rest of the events still read: the provider's usage)
                self._meter(decoder.feed(body) + (decoder.flush() if end else []))
            return b""
        held = decoder.held + len(body)
        events = decoder.feed(body)
        if held > MAX_EVENT and (decoder.held > MAX_EVENT or any(len(e.raw) > MAX_EVENT for e in events)):
            # A provider event this large, whole in one chunk or without its end yet, is not an
            # answer: end the client's stream with an error rather than pass it on or hold it.
            decoder.flush()
            kept = []
            for event in events:
                if len(event.raw) > MAX_EVENT:
                    break
                kept.append(event)
            # The events before it go on first (translated, guarded: a stream failed already
            # would have the translator drop them), then the client's error event, if no stage
            # ended the stream meanwhile (a guardrail's block: its own error event).
            for stage in self.stages:
                kept = stage.feed(flow, kept)
            out = b"".join([event.raw for event in kept if not event.last])
            failed = flow.stream_failed
            flow.stream_failed = True
            if failed:
                return out
            flow.error = OVERSIZED.code
            assert flow.api is not None
            return out + _stream_error(flow, OVERSIZED)
        if end:
            events += _whole(decoder.flush())
        if self.strict:
            unreadable = [at for at, event in enumerate(events)
                          if event.data and event.data != b"[DONE]" and event.json() is None]
            if unreadable:
                return self._unreadable(events, unreadable, end)
        events = self._staged(events, end)
        out = events[0].raw if len(events) == 1 else b"".join(event.raw for event in events)
        return None if out == body else out

    def _staged(self, events: list[SSEEvent], end: bool) -> list[SSEEvent]:
        flow = self.flow
        for stage in self.stages:
            events = stage.feed(flow, events)
            if end:
                events += stage.end(flow)
        return events

    def _unreadable(self, events: list[SSEEvent], unreadable: list[int], end: bool) -> bytes:
        """The stream ends at its first unreadable event that comes before the answer's end (the
        provider's ``[DONE]``, ``message_stop``, ``response.completed``): the events before it go
        on, then the client's error event (none if a stage ended the stream already: a
        guardrail's block). One after the answer's end is dropped (read for usage all the same):
        the answer the client got is whole; a ``null`` before it, which holds nothing, goes on."""
        flow = self.flow
        reader = flow.meter.reader
        out: list[SSEEvent] = []
        start = 0
        for at in unreadable:
            out += self._staged(events[start:at], False)
            start = at + 1
            if reader is not None and reader.complete:
                self._meter([events[at]])
                continue
            if events[at].data.strip() == b"null":  # nothing in it: passed on, as it always was
                out += self._staged([events[at]], False)
                continue
            self._meter(events[at:])
            raw = b"".join([event.raw for event in out])
            if flow.stream_failed:
                return raw
            flow.stream_failed = True
            flow.error = UNREADABLE.code
            assert flow.api is not None
            return raw + _stream_error(flow, UNREADABLE)
        out += self._staged(events[start:], end)
        return b"".join([event.raw for event in out])

    def _meter(self, events: list[SSEEvent]) -> None:
        """Events the client does not get, read for the provider's usage all the same."""
        reader = self.flow.meter.reader
        if reader is not None:
            for event in events:
                reader.feed(event)


def _whole(events: list[SSEEvent]) -> list[SSEEvent]:
    """The events a stream's last bytes hold whole but for their closing blank line (JSON or
    ``[DONE]``), closed properly; a half-received event is dropped, never passed on or counted."""
    out = []
    for sse in events:
        if sse.data == b"[DONE]" or (sse.data and sse.json() is not None):
            end = b"\r\n\r\n" if b"\r\n" in sse.raw else b"\n\n"  # the stream's own line ends
            event = SSEEvent(sse.event, sse.data, sse.raw.rstrip(b"\r\n") + end, last=True)
            event._json = sse._json
            out.append(event)
    return out


def error_answer(flow: Flow, status: int, body: bytes) -> bytes | None:
    """An error answer in the client's format (None: it already is); notes the error code."""
    api = flow.api or apis.for_errors(flow.path, flow.headers)
    if body[:2] == b"\x1f\x8b":
        with contextlib.suppress(ClientError):
            body = gunzip(body, ratio=None)
    payload: Any
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        # A provider's answer that is no JSON (a proxy's HTML page, a plain-text 429), or Envoy's
        # own plain text (its codec's 400, a 413): the client's SDK format, keeping the status.
        error = plain_error(status, body, sent=flow.forwarded or flow.target is not None, provider=flow.provider)
        flow.error = error.code
        return api.error_body(error)
    flow.error = error_code(payload)
    envoys = _envoys_reply(payload) if status >= 500 else None
    if envoys is not None:
        explained = unreachable(flow, status, *envoys)
        if explained is not None:
            return api.error_body(explained)
    if flow.pair is not None:
        return flow.pair.error(status, body)
    return None


ENVOY_REPLY = "Tollway gateway error ("  # how envoy/tollway.yaml's local_reply_config begins Envoy's own errors


def _envoys_reply(payload: dict[str, Any]) -> tuple[str, str, str] | None:
    """(code, Envoy's response code details, its text) of an error Envoy made itself, as the
    bootstrap's ``local_reply_config`` writes it (either family's format); None: a provider's."""
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message.startswith(ENVOY_REPLY):
        return None
    details, _, text = message[len(ENVOY_REPLY):].partition("): ")
    code = error.get("code") if isinstance(error, dict) else None
    return (code if isinstance(code, str) and code else "provider_unavailable"), details, text


def unreachable(flow: Flow, status: int, code: str, details: str, text: str) -> ClientError | None:
    """The client's error for Envoy's own reply to a request it could not get answered by the
    provider (or any provider of the chain): which provider, where Envoy reaches it, what failed and
    what to check. ``code`` and ``status`` stay Envoy's. None when no provider was chosen. Of a
    chain, the targets Envoy tried when it says (the one it tried last, or how many it tried)."""
    chain = flow.chain
    targets = chain or ((flow.target,) if flow.target is not None else ())
    if len(chain) > 1:
        last = next((i for i, target in enumerate(chain) if target is flow.target), None)
        tried = last + 1 if last is not None else flow.attempts
        if tried:
            targets = chain[:tried]
    providers: list[Provider] = list(dict.fromkeys(target.provider for target in targets))
    if not providers:
        return None
    stand_ins = dict(flow.stand_ins()) if flow.stand_ins is not None else {}
    places = [_place(provider, stand_ins.get(provider.name)) for provider in providers]
    if len(targets) < len(chain):
        who = f"{', '.join(places)} (tried {len(targets)} of the {len(chain)} targets of '{flow.model}')"
    else:
        who = places[0] if len(providers) == 1 else f"any provider of '{flow.model}' ({', '.join(places)})"
    return ClientError(status, code, f"Tollway could not reach {who}: {_reason(details, text)}. "
                                     f"{_check(providers, stand_ins, flow.stand_in_missing)}")


def _place(provider: Provider, stand_in: str | None) -> str:
    if stand_in is not None:
        return f"provider '{provider.name}' (its stand-in, {_netloc(stand_in)})"
    url = provider.endpoint or DEFAULT_ENDPOINTS.get(provider.kind)
    return f"provider '{provider.name}' at {_netloc(url)}" if url else f"provider '{provider.name}'"


def _netloc(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return parts.netloc
    return f"{parts.hostname}:{port}"


def _reason(details: str, text: str) -> str:
    """What Envoy's response code details say, in words."""
    said = details.lower()
    if "no_healthy_upstream" in said:
        return ("no healthy upstream: its host name did not resolve (yet), or no connection to it succeeded "
                "(Envoy's no_healthy_upstream)")
    if "refused" in said:
        return "the connection was refused (nothing listens there)"
    if "tls" in said or "ssl" in said or "certificate" in said:
        return f"the TLS handshake failed (its certificate, or not TLS at all?) ({details})"
    if "timeout" in said or "timed_out" in said:
        return f"it did not answer in time ({details})"
    if "connect" in said or "connection_failure" in said:
        return f"the connection failed ({details})"
    if "reset" in said or "termination" in said:
        return f"the connection closed before it answered ({details})"
    return text or details or "no answer"


def _check(providers: Sequence[Provider], stand_ins: dict[str, str], stand_in_missing: bool) -> str:
    """What to check, for the providers the request could go to."""
    checks = []
    if any(provider.name in stand_ins for provider in providers):
        checks.append("Is the stand-in running (under tollway up, the fake provider: see mock.log in its workdir)?")
    real = [provider for provider in providers if provider.name not in stand_ins]
    if any(_on_this_machine(provider) for provider in real):
        checks.append("Is the server at that address running and listening?")
    if any(not _on_this_machine(provider) for provider in real):
        checks.append("Check this machine's network, DNS and proxy: Envoy connects to the provider directly "
                      "(it does not use HTTP_PROXY or HTTPS_PROXY).")
    keys = [provider.credential.env for provider in real
            if provider.credential is not None and provider.credential.env and not _on_this_machine(provider)]
    if stand_in_missing and keys:
        checks.append(f"To use tollway up's fake provider instead, unset {' and '.join(dict.fromkeys(keys))} "
                      "and start make run again.")
    return " ".join(checks)


def _on_this_machine(provider: Provider) -> bool:
    host = urllib.parse.urlsplit(provider.endpoint).hostname if provider.endpoint else None
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private
