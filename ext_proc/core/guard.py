"""Guardrails in the request path: the ``guard`` request step and the ``guard`` response stage.

The step finds the policy's plan for the caller's team and the model asked for
(:meth:`~ext_proc.guardrails.plan.Guardrails.plan`), and puts a
:class:`~ext_proc.guardrails.guard.Guard` on the flow, which acts on the prompt's text in place
(the request is then re-encoded): redaction, masking, pseudonyms, blocking (a 400
``guardrail_blocked`` in the client's format, the provider never asked) and prompt-injection
scoring. With an external classifier in the policy it asks it (ask and continue: the server runs
the HTTP call, the request waits) and blocks, or not, by its answer; a classifier that does not
answer blocks (``fail: closed``, a 503) or lets the request through (``fail: open``).

The stage runs on the served API's answer, before translation, so one implementation per wire
API covers answers passed through and translated: the buffered body (one event) or the stream's
events, with pseudonyms put back and the answer's own findings acted on. A block there replaces a
buffered answer with the client's error (status included); a stream gets the client's error event
and ends there.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar

from ext_proc.core.actions import Ask
from ext_proc.core.flow import Flow
from ext_proc.core.response import Refused, Stage
from ext_proc.core.steps import Step
from ext_proc.guardrails import texts
from ext_proc.guardrails.guard import Blocked, Guard
from ext_proc.guardrails.queries import Classify
from ext_proc.guardrails.scanner import Unscannable
from ext_proc.llm import encodings
from ext_proc.llm.errors import ClientError
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.tokens import is_token
from ext_proc.policy.compiled import Alias, Target

BLOCKED = "guardrail_blocked"
UNSCANNABLE = "guardrail_limit"  # more candidates than the scanner may check (see ext_proc.guardrails.scanner)


def refusal(blocked: Blocked | Unscannable, where: str) -> ClientError:
    """What the client is told: the guardrail and the detector, never the value."""
    if isinstance(blocked, Unscannable):
        return ClientError(400, UNSCANNABLE, f"The {where} holds {blocked} (a bound per request): it was not "
                                             f"scanned to its end, so it was blocked. Send less of it at once.")
    if blocked.fixed:
        return ClientError(400, BLOCKED, f"The {where} was blocked by the '{blocked.rule.name}' guardrail "
                                         f"({blocked.detector}): it is in an audio answer's transcript, and "
                                         f"the audio cannot be redacted.")
    at = f" in '{blocked.param}'" if blocked.param else ""  # (a tool's schema: a place hard to guess)
    return ClientError(400, BLOCKED, f"The {where} was blocked by the '{blocked.rule.name}' guardrail "
                                     f"({blocked.detector}){at}.", blocked.param)


class GuardPrompt(Step):
    """The prompt through the policy's guardrails (see the module docstring)."""

    __slots__ = ()
    name = "guard"

    def body(self, flow: Flow) -> Ask | None:
        scored = screen(flow)
        guard = flow.guard
        if not scored or guard is None:
            return None
        plan = guard.plan
        classifier = plan.classifier
        if classifier is None or (guard.score is not None and guard.score >= plan.threshold):
            return None
        return Ask(Classify(classifier.url, tuple(scored), classifier.timeout), then=partial(_classified, flow))


def screen(flow: Flow) -> list[Any]:
    """The prompt through the policy's guardrails that apply to the caller's team and model (none:
    nothing done): a block raises its refusal, redactions change the payload in place; the texts
    the external classifier should score. :class:`GuardPrompt` asks it; a step that answers the
    request itself (a local token count) screens the prompt as it would go out."""
    policy = flow.policy
    if policy is None or policy.guardrails is None:
        return []
    granted, principal, api, request = flow.granted, flow.principal, flow.api, flow.request
    assert granted is not None and principal is not None and api is not None and request is not None
    plan = policy.guardrails.plan(principal.team, granted.name if isinstance(granted, Alias) else granted.public)
    if plan is None:
        return []
    walker = texts.walker(api.name)
    if walker is None:  # fail closed: a guarded request Tollway cannot read does not go out
        raise ClientError(400, "guardrails_unsupported",
                          f"Guardrails apply to this request, but Tollway cannot read {api.name} requests yet.")
    guard = flow.guard = Guard(plan)
    tokens = TokenPrompts.decoded(flow, api.name, request.payload)
    try:
        changed, scored = guard.prompt(walker, request.payload)
    except (Blocked, Unscannable) as blocked:
        raise refusal(blocked, "request") from None
    except texts.Unreadable as unread:  # fail closed: a text of a shape the guard does not read
        raise ClientError(400, "invalid_type", unread.message, unread.param) from None
    if tokens is not None:
        tokens.encode_back()
    if changed:
        flow.replaced = flow.reencode = True
    return list(scored)


class TokenPrompts:
    """A completions ``prompt`` or an embeddings ``input`` given as token ids, the same text to the
    model as the words: decoded for the guard (in place), then put back, as the same ids where the
    guard left the text alone and as the new text's ids where it changed it, special tokens kept
    (:func:`encode_back`). Only with the
    tokenizer of every target: OpenAI's models (tiktoken); another model's ids are refused (fail
    closed), never passed unread."""

    __slots__ = ("_decoded", "_empty", "_encoding")

    _FIELDS: ClassVar[dict[str, str]] = {"openai.completions": "prompt", "openai.embeddings": "input"}

    def __init__(self, encoding: Any, decoded: list[tuple[Any, Any, list[int], str]],
                 empty: list[tuple[Any, Any]] | None = None) -> None:
        self._encoding = encoding
        self._decoded = decoded
        self._empty = empty or []  # empty token arrays: an empty text for the guard, [] again going out

    @classmethod
    def decoded(cls, flow: Flow, api: str, payload: dict[str, Any]) -> TokenPrompts | None:
        field = cls._FIELDS.get(api)
        value = payload.get(field) if field is not None else None
        if not isinstance(value, list) or not value:
            return None
        if all(is_token(item) for item in value):
            places: list[tuple[Any, Any]] = [(payload, field)]
        else:
            places = [(value, i) for i, item in enumerate(value)
                      if isinstance(item, list) and all(is_token(t) for t in item)]
        empty = [(container, key) for container, key in places if not container[key]]
        for container, key in empty:  # an empty token array is an empty text: no tokenizer needed
            container[key] = ""
        places = [(container, key) for container, key in places if container[key] != ""]
        if not places:
            return cls(None, [], empty) if empty else None
        names = {_encoding(target) for target in flow.chain}
        if len(names) != 1 or None in names:
            model = flow.target.upstream_model if flow.target is not None else "?"
            raise ClientError(400, "guardrails_unsupported",
                              f"Guardrails apply to this request, but its '{field}' is token ids for a model whose "
                              f"tokenizer Tollway does not have ('{model[:200]}'): send the text instead.", field)
        name = names.pop()
        assert name is not None
        encoding = encodings.get_encoding(name)
        decoded = []
        for container, key in places:
            ids = container[key]
            try:
                text = encoding.decode(ids)
            except (KeyError, ValueError, OverflowError):
                raise ClientError(400, "invalid_request", f"'{field}' holds a token id the model does not have.",
                                  field) from None
            container[key] = text
            decoded.append((container, key, ids, text))
        return cls(encoding, decoded, empty)

    def encode_back(self) -> None:
        for container, key, ids, text in self._decoded:
            now = container[key]
            container[key] = ids if now == text else encode_back(self._encoding, ids, now)
        for container, key in self._empty:
            container[key] = []


def encode_back(encoding: Any, ids: list[int], now: str) -> list[int]:
    """The ids of ``now``, the guarded text of token ``ids``: a special token (``<|endoftext|>``
    between documents) stays its id, never the ordinary tokens of its spelling; each stretch
    between special tokens keeps its own ids where the guard left it alone, and is encoded anew
    where it changed. When the special tokens are no longer where they were (a finding spanned
    one, and the replaced text took it), the whole text is encoded as ordinary text: a spelling
    of a special token the client sent as ordinary tokens stays ordinary, never the special one."""
    specials = {encoding.encode_single_token(name): name for name in encoding.special_tokens_set}
    runs: list[list[int]] = [[]]  # the ordinary ids between special tokens
    marks: list[int] = []  # the special tokens, in order
    for token in ids:
        if token in specials:
            marks.append(token)
            runs.append([])
        else:
            runs[-1].append(token)
    out: list[int] = []
    at = 0
    for number, run in enumerate(runs):
        was = encoding.decode(run)
        if number < len(marks):
            name = specials[marks[number]]
            kept = now.startswith(was, at)  # past the stretch as it was; else past its own spellings
            end = now.find(name, at + len(was) if kept else at)
            for _ in range(0 if kept else was.count(name)):
                end = now.find(name, end + len(name)) if end >= 0 else end
            if end < 0:  # a finding swallowed a special token: it went with the text replaced
                whole: list[int] = encoding.encode(now, disallowed_special=())
                return whole
        else:
            end = len(now)
        piece = now[at:end]
        out += run if piece == was else encoding.encode(piece, disallowed_special=())
        if number < len(marks):
            out.append(marks[number])
            at = end + len(specials[marks[number]])
    return out


def _encoding(target: Target) -> str | None:
    """The tokenizer of ``target``'s model, when it is one of OpenAI's (tiktoken): by its name at
    OpenAI, and at Azure by the public name the policy gives it (a deployment's name is anyone's)."""
    kind = target.provider.kind
    if kind == "openai":
        return encodings.known_encoding(target.upstream_model)
    if kind == "azure-openai":
        return encodings.known_encoding(target.public)
    return None


def _classified(flow: Flow, answer: Any) -> Ask | None:
    guard = flow.guard
    assert guard is not None and guard.plan.classifier is not None
    classifier = guard.plan.classifier
    if isinstance(answer, BaseException) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        # Recorded; refused only when the rule deciding prompt injection would block (a ``log``
        # rule only records, whatever ``fail`` says: it never refuses a request).
        guard.unavailable = (str(answer) or type(answer).__name__) if isinstance(answer, BaseException) else \
            "an answer without a score"
        rule = guard.plan.injection
        if classifier.fail_closed and rule is not None and rule.action == "block":
            raise ClientError(503, "guardrail_unavailable",
                              "The prompt-injection classifier did not answer, and the policy blocks requests then.")
        return None
    if answer >= classifier.threshold:
        try:
            guard.injection_found()
        except Blocked as blocked:
            raise refusal(blocked, "request") from None
    return None


class GuardAnswer(Stage):
    """The answer through the guard: pseudonyms restored, the answer's own findings acted on."""

    __slots__ = ()
    reads_all = True  # an event it cannot read ends the stream (see Stage.reads_all)

    def feed(self, flow: Flow, events: list[SSEEvent]) -> list[SSEEvent]:
        guard = flow.guard
        served = flow.served
        assert guard is not None and served is not None
        if flow.refused is not None:
            return []
        walker = texts.walker(served.name)
        if walker is None or not events:
            return events
        if events[0].whole:  # a buffered answer: one JSON body
            out = []
            for event in events:
                payload = event.json()
                if payload is None:
                    out.append(event)
                    continue
                try:
                    changed = guard.answer(walker, payload)
                except (Blocked, Unscannable) as blocked:
                    flow.refused = refusal(blocked, "response")
                    raise Refused(flow.refused) from None
                if not changed:
                    out.append(event)
                    continue
                body = _dumps(payload)
                new = SSEEvent("", body, body, whole=True)
                new._json = payload
                out.append(new)
            return out
        try:
            return guard.events(walker, events)
        except (Blocked, Unscannable) as blocked:
            flow.refused = refusal(blocked, "response")
            flow.error = flow.refused.code
            return []


def _dumps(payload: dict[str, Any]) -> bytes:
    from ext_proc.llm import exact

    return exact.dumps(payload)
