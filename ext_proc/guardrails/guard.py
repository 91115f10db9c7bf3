"""One request's guard: findings turned into actions, on the prompt and on the answer, JSON or streamed.

Theory of operation. A :class:`Guard` is made per request from its :class:`~.plan.Plan` and
lives on the request's flow. On the prompt (:meth:`Guard.prompt`) it reads every text of the
request through the API's :class:`~.texts.Walker`, finds values with the plan's scanner and acts:

- ``redact``: a typed placeholder, numbered per request and value (``[EMAIL_1]``, the same value
  the same placeholder);
- ``mask``: every letter and digit but the last four becomes ``*``;
- ``pseudonymise``: a placeholder the provider sees, remembered so the answer gets the original
  value back (request direction only); in a request that continues a conversation the provider
  stores (Responses' ``previous_response_id``), ``redact``: the stored turns hold placeholders
  another request numbered, which this one's must never be restored for;
- ``block``: :class:`Blocked` (the request is refused, the provider never asked);
- ``log``: nothing changes; the trigger is recorded.

The request's definitions (tools' descriptions and schemas) are read under the instructions' rules
as one text, and only those holding a finding on their own (:mod:`.definitions`); a credential
only its context showed (``DB_PASSWORD=hunter2x9``) is looked for again wherever the request
repeats it (:mod:`.repeats`).

It also scores user and tool text for prompt injection (:mod:`.injection`), against the
request's system and developer text (:mod:`.instructions`). On the answer
(:meth:`Guard.answer` for a JSON body, :meth:`Guard.events` for a stream) it acts on the answer's
findings the same way (but a finding that is exactly one of the request's schema values holding a
finding, an ``enum`` member the model answers with, is only counted: :meth:`Guard._checked`) and
puts pseudonymised values back (not in Anthropic thinking nor in a
Responses reasoning item, which the client gives back signed or encrypted and the request walker
leaves alone: there placeholders stay, :attr:`.texts.Ref.restore`); what the answer echoes of
the request (Responses' ``instructions``) the same, but uncounted and never blocking
(:meth:`Guard._echo`).
In JSON text (tool call arguments; the answer's text when the request asked for JSON) a value
replaced outside a string becomes a string (:mod:`.jsontext` follows the strings, across a
stream's deltas too), so the text stays JSON; JSON text holding escapes is scanned as what its
strings mean (:class:`.jsontext.Decoded`: a value right after ``\\n`` is found without the ``n``)
and as written (what decoding cuts short: :func:`_meant`), a stream's as written (its control
escapes' letters read as spaces, :func:`.jsontext.blanked`) but never replaced nor cut inside an
escape, and a value found there is kept decoded (the vault, the placeholder's number). A pseudonym
whose value holds what the instructions keep is not put back: the ``kept_secret`` rule acts on it
(:meth:`Guard._withheld`). A value split by invisible characters (a zero-width space, a soft
hyphen, a NUL) is found whole (:mod:`.visible`, in the scanner); a stream's hold-back measures its runs without
them (:func:`_visible_cut`), so such a value split across events is never partly sent.
In a stream each channel of text (see
:mod:`.texts`) keeps back only the end of what it received that could still become a finding
when more text comes: for each detector, the trailing run of characters a match of it may
contain, at most its longest match minus one (:class:`~.holdback.Holdback`); everything before is final
and goes out, with its findings replaced. A private key block, once its armour opens, swallows
what follows until the armour closes. A value split across events or TCP chunks is so never
partly sent. When a channel closes, what it holds is checked as final text and sent.

Every trigger is counted (guardrail, detector, action, direction), never with the value: that is
what the request record carries (:meth:`Guard.triggers`).

A prompt's findings and injection scores are asked of the worker's memory of texts first
(:mod:`ext_proc.memo`): a conversation re-sends its earlier turns with every request, and each
distinct text is scanned once. What a finding does (its placeholder's number, its count, a
block) is decided per request, from the remembered spans.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

import orjson

from ext_proc.llm.sse import SSEEvent
from ext_proc.memo import digest, remembered

from . import injection
from .definitions import blob as definitions_blob
from .definitions import flagged
from .detectors import INJECTION, Detector
from .holdback import Holdback, holdback
from .identifiers import identifier_digest, opaque, whole_numbers
from .instructions import MAX_CHARS, Instructions, instructions
from .jsontext import OUTSIDE, bare_number, blanked, decoded, escape_at, json_state, unescape
from .kept import KEPT, Kept, kept
from .plan import REQUEST, RESPONSE, Plan, Rule
from .repeats import repeated
from .repeats import secrets as found_secrets
from .scanner import CONTEXT, Budget, Finding, Scanner, Unscannable, united
from .texts import DEFINITION, METADATA, Identifier, Ref, StreamTexts, Unread, Unreadable, Walker
from .texts.base import Verbatim, place
from .visible import INVISIBLE, Visible, strip

PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]{0,40}_[0-9]{1,6}\]")
_ARMOUR = 80  # longer than any closing armour line of a key block
# A channel holding more than this (scanned) waits to be scanned again until a quarter as much more
# has come (see Guard._release): a run longer than a detector's longest match goes out in steps.
_RESCAN = 64
INJECTION_ROLES = frozenset({"user", "tool"})
_DEVELOPERS = frozenset({"system", DEFINITION})  # the roles of the application's own text
# The questions asked of a prompt's texts, in the worker's memory of texts (ext_proc.memo): the
# findings of a plan's rules (for users' or for the application's own text), an injection score.
# The findings of the answer's rules in a text of the request that an answer repeats (Guard._echo).
# JSON text holding escapes is scanned as what its strings mean (FIND_JSON, ECHO_JSON).
# A request's definitions are one text (.definitions.FIND_DEFINED, the instructions' rules).
FIND, FIND_SYSTEM, FIND_JSON, SCORE, ECHO, ECHO_JSON = b"f", b"s", b"j", b"i", b"e", b"k"


def _find(scanner: Scanner, names: Container[str], budget: Budget, text: str) -> Sequence[Finding]:
    return scanner.find(text, names, budget) or ()  # (repetitions: over the whole request, in prompt())


def _find_json(scanner: Scanner, names: Container[str], budget: Budget, text: str) -> Sequence[Finding]:
    """The findings of JSON text, read as what its strings mean (:func:`_meant`)."""
    return _meant(text, functools.partial(_find, scanner, names, budget), names)


def _meant(text: str, find: Callable[[str], Sequence[Finding]], names: object) -> list[Finding]:
    """``find``'s findings in JSON ``text`` read as what its strings mean (``\\n`` a line break,
    ``\\u00e9`` ``é``: a value right after an escape is found without the escape's letter, a
    word written with escapes is found), as spans of ``text`` holding whole escapes; and those of
    ``text`` as written (its control escapes' letters blanked, :func:`.jsontext.blanked`), which
    decoding may cut short or hide (a quote written ``\\"`` inside a quoted password ends it
    there), each moved inwards off the escapes it splits. Findings of the two readings that
    overlap become one spanning them, its detector the one ``names`` (the rules) acts on most
    strictly (:func:`.scanner.united`)."""
    meaning = decoded(text)
    if meaning is None:
        return list(find(text))
    out = [Finding(f.detector, *meaning.span(f.start, f.end), f.open) for f in find(meaning.text)]
    for f in find(blanked(text)):
        start, end = f.start, f.end
        split = escape_at(text, start)
        if split is not None:
            start = split[1]
        split = escape_at(text, end)
        if split is not None:
            end = split[0]
        if start < end:
            out.append(Finding(f.detector, start, end, f.open))
    return united(out, names)


def scoring_context(context: Instructions | None, role: str) -> Instructions | None:
    """The instructions a text of ``role`` is scored against for injection: a tool's result meets
    them without ``breaks_rule`` (:meth:`~.instructions.Instructions.for_tools`). ``tollway scan
    --request`` scores with this too."""
    return context.for_tools() if role == "tool" and context is not None else context


def instructions_read(system: Iterable[str]) -> str:
    """The system texts as the guard reads them: joined by newlines, at most
    :data:`~.instructions.MAX_CHARS` of them (what an application's instructions say comes first)."""
    read: list[str] = []
    room = MAX_CHARS
    for text in system:
        if room <= 0:
            break
        read.append(text[:room])
        room -= len(text) + 1
    return "\n".join(read)


def _score(context: Instructions | None, text: str, key: bytes | None) -> float:
    """``text``'s injection score against ``context``, asked of the worker's memory first."""
    space = SCORE + (context.serial if context is not None else b"-")
    return remembered(space, text, functools.partial(injection.score, context=context), key)


def _acting(rules: Mapping[str, Rule]) -> bool:
    """Whether any of ``rules`` changes or blocks what it finds (not only ``log``)."""
    return any(rule.action != "log" for rule in rules.values())


def _redacting(rules: Mapping[str, Rule]) -> Mapping[str, Rule]:
    """``rules`` with each ``pseudonymise`` rule acting as ``redact`` (and recorded so): for a request
    continuing a conversation the provider stores, whose earlier turns hold placeholders other
    requests numbered, so that a placeholder the model answers with is never restored to whatever
    value this request gave the same name."""
    if not any(rule.action == "pseudonymise" for rule in rules.values()):
        return rules
    return {name: _redacts(rule) if rule.action == "pseudonymise" else rule for name, rule in rules.items()}


@functools.lru_cache(maxsize=64)
def _redacts(rule: Rule) -> Rule:
    return dataclasses.replace(rule, action="redact")



# Texts (message contents, parts, metadata and tool-input strings) one request's guard reads at
# most: each costs the worker's loop a few µs whatever its length (250,000: about 0.9 s), and a
# request holding more (a metadata list of a million one-letter strings) fails closed, as past
# the scanner's Budget. Anthropic's 100,000 messages, each a text, stay under it.
MAX_TEXTS = 250_000

class Blocked(Exception):
    """A rule with action ``block`` fired (or one that would change a text that may not change, an
    audio answer's transcript: ``fixed``): its guardrail and detector (never the value)."""

    def __init__(self, rule: Rule, detector: str, fixed: bool = False) -> None:
        super().__init__(f"{rule.name}: {detector}")
        self.rule = rule
        self.detector = detector
        self.fixed = fixed
        self.param: str | None = None  # where in the request, when its place is not obvious (a tool's schema)




class _Channel:
    __slots__ = ("before", "fixed", "held", "json", "restore", "runs", "scanned", "swallow")

    def __init__(self, restore: bool = True, fixed: bool = False) -> None:
        self.restore = restore  # pseudonyms are put back (not in signed thinking, nor a reasoning item)
        self.fixed = fixed  # the text may not change (an audio answer's transcript): a change refuses
        self.held = ""  # received, not yet sent
        self.runs: tuple[int, ...] | None = None  # Holdback.extend's runs at the end of ``held`` (None: measure)
        self.scanned = 0  # the characters at the start of ``held`` the scanner has read (the rest waits)
        self.before = ""  # the last characters sent (as received), for word boundaries and context words
        self.swallow: re.Pattern[str] | None = None  # inside a private key block: its closing armour
        self.json = OUTSIDE  # JSON text: where the text sent so far (as received) ends (json_state)


class Guard:
    """One request's guardrails (see the module docstring)."""

    __slots__ = ("_answered", "_channels", "_counts", "_holdback", "_identities", "_json", "_kept", "_numbers",
                 "_placeholders", "_schema", "_stream", "_taken", "plan", "score", "unavailable", "vault")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._placeholders: dict[tuple[str, str], str] = {}
        self._numbers: Counter[str] = Counter()
        self.vault: dict[str, str] = {}  # placeholder -> the pseudonymised value
        self._identities: dict[str, str] = {}  # an identifier's digest -> the pseudonymised identifier
        self.score: float | None = None  # the prompt's injection score (built-in)
        self.unavailable: str | None = None  # why the injection classifier gave no score (None: it did, or none asked)
        self._channels: dict[tuple[Any, ...], _Channel] = {}
        self._holdback: Holdback | None = None
        self._stream: StreamTexts | None = None
        self._kept: Kept | None = None  # the values the request's instructions keep (.kept), when a rule looks
        self._answered: Budget | None = None  # the scanner's work left for the answer (made when first used)
        self._json = False  # the request asks for JSON output: the answer's text is JSON text
        self._taken: frozenset[str] = frozenset()  # placeholders the request's own texts hold (pseudonymising)
        # the request's schema values (Verbatim: an enum member, a default) that hold a finding: one the
        # answer gives exactly is left as it is there too (the model answers from the enum; Guard.apply)
        self._schema: set[str] = set()

    # -- records ----------------------------------------------------------------------------

    def count(self, rule: Rule, detector: str, direction: str, n: int = 1) -> None:
        self._counts[(rule.name, detector, rule.action, direction)] += n

    def fired(self) -> list[str]:
        """The names of the guardrails that fired, sorted."""
        return sorted({name for name, _, _, _ in self._counts})

    def triggers(self) -> list[dict[str, Any]]:
        """Each trigger: guardrail, detector, action, direction and count (never the value)."""
        return [{"guardrail": name, "detector": detector, "action": action, "direction": direction, "count": n}
                for (name, detector, action, direction), n in sorted(self._counts.items())]

    # -- the prompt ---------------------------------------------------------------------------

    def prompt(self, walker: Walker, payload: dict[str, Any]) -> tuple[bool, list[str]]:
        """Act on the request's text (in place). Returns whether it changed, and the user and tool
        texts for an external classifier. Raises :class:`Blocked`, :class:`~.scanner.Unscannable`
        or :class:`~.texts.Unreadable` (a field read as text holds another JSON type: nothing
        changed yet)."""
        plan = self.plan
        rules, system_rules = plan.request, plan.system
        pseudonymising = plan.pseudonymises
        # placeholders another request numbered (none is restored), or an answer with no text (embeddings)
        if pseudonymising and (not walker.restores or walker.continues_stored(payload)):
            rules = _redacting(rules)
            system_rules = _redacting(system_rules) if system_rules is not None else None
            pseudonymising = False
        self._json = walker.asks_json(payload)
        scanner = plan.scanner
        changed = False
        scored: list[str] = []
        system: list[str] = []  # the instructions the scored texts meet (instructions_read: as much as is read)
        keeps = KEPT in plan.response
        reading = plan.instructions or keeps
        known: list[bytes | None] = []  # the scored texts' digests, where the findings' question had it
        roles: list[str] = []  # each scored text's role (a tool's result meets the instructions differently)
        budget = Budget()  # the scanner's work the prompt may make
        refs: list[Ref] = []
        for ref in walker.request(payload, definitions=False):  # (the definitions: .definitions.flagged)
            if isinstance(ref, Unread):  # a text the plan would read never goes out unread
                if self._reads(ref.role, rules, system_rules):
                    raise Unreadable(ref)
                continue
            if ref.get():
                refs.append(ref)
                if len(refs) > MAX_TEXTS:  # (metadata of a million strings: seconds of the worker's loop)
                    raise Unscannable(f"more than {MAX_TEXTS:,} texts")
        roots = walker.defined(payload) if rules else []
        blob = definitions_blob(roots) if roots else None
        if pseudonymising:
            # a placeholder the client wrote ("Dear [EMAIL_1]") is never one numbered here, which an
            # answer would get a value back for (in a definition: its JSON, keys too, names it)
            self._taken = frozenset(match for text in ([ref.get() for ref in refs] + ([blob] if blob else []))
                                    if "[" in text for match in PLACEHOLDER.findall(text))
        found: list[Sequence[Finding]] = []  # each text's findings (the worker's memory of texts first)
        keys: list[bytes | None] = []
        secrets: dict[str, Detector] = {}  # credentials only their context showed, in any text of the request
        for ref in refs if rules else ():
            text = ref.get()
            key = digest(text)
            if ref.role == "system" and system_rules is not None:
                findings = remembered(FIND_SYSTEM + plan.serial, text,
                                      functools.partial(_find, scanner, system_rules, budget), key)
            elif ref.json_text and "\\" in text:
                findings = remembered(FIND_JSON + plan.serial, text,
                                      functools.partial(_find_json, scanner, rules, budget), key)
            else:
                findings = remembered(FIND + plan.serial, text, functools.partial(_find, scanner, rules, budget), key)
            found.append(findings)
            keys.append(key)
            found_secrets(text, findings, secrets)
        if roots:  # the developer's text, as the instructions are: the instructions' rules
            names = system_rules if system_rules is not None else rules
            space = (FIND_SYSTEM if system_rules is not None else FIND) + plan.serial
            wanted = [value for value, detector in secrets.items() if detector.name in names]
            for ref in flagged(walker, payload, blob, scanner, names, budget, wanted, plan.serial, MAX_TEXTS):
                refs.append(ref)
                found.append(remembered(space, ref.get(), functools.partial(_find, scanner, names, budget)))
                keys.append(None)
        for index, ref in enumerate(refs):
            text = ref.get()
            if ref.role == "system" and reading:
                system.append(text)
            key = None
            if rules:
                key, findings = keys[index], found[index]
                if secrets:  # a password given in one message and repeated in another
                    names = system_rules if ref.role in _DEVELOPERS and system_rules is not None else rules
                    values = {value: d for value, d in secrets.items() if d.name in names}
                    if values:
                        findings = repeated(text, findings, values, names)
                if findings and ref.role == METADATA and opaque(text):
                    findings = whole_numbers(text, findings)
                if findings and isinstance(ref, Verbatim):  # a schema's own value: checked, not rewritten
                    self._checked(findings, rules, walker, payload, ref)
                elif findings:
                    try:
                        new = self.apply(text, findings, rules, REQUEST, ref.json_text)
                    except Blocked as blocked:
                        if ref.role == DEFINITION:  # (the messages' places are numbered, the tools' deep)
                            blocked.param = place(payload, ref.container, ref.key, walker.dotted)
                        raise
                    if new is not text:
                        if isinstance(ref, Identifier):  # one digest per value: users stay apart
                            new = self._identifier(text, findings, rules)
                        ref.set(new)
                        changed = True
                        text, key = new, None
            if plan.injection is not None and ref.role in INJECTION_ROLES:
                scored.append(text)  # as it goes upstream: redacted values stay redacted for a classifier too
                known.append(key)
                roles.append(ref.role)
        scoring = plan.injection is not None and bool(scored)
        read = None
        if system and (keeps or (scoring and plan.instructions)):
            read = instructions(instructions_read(system))  # NONE when they keep nothing
            if keeps:
                self._kept = kept(read.secrets)
        if scoring:
            context = read if plan.instructions else None
            self.score = max(_score(scoring_context(context, role), text, key)
                             for text, key, role in zip(scored, known, roles, strict=True))
            if self.score >= plan.threshold:
                self.injection_found()
        return changed, scored

    def _checked(self, findings: Sequence[Finding], rules: Mapping[str, Rule], walker: Walker,
                 payload: dict[str, Any], ref: Ref) -> None:
        """A definition's :class:`~.texts.Verbatim` value (an ``enum`` member, a ``default``, a
        ``pattern``): each finding counted as its rule's trigger, a ``block`` rule refusing the
        request (naming the place), no other rule changing it; the value is remembered, so that
        the answer may give it back as it is (:meth:`apply`)."""
        self._schema.add(ref.get())
        for finding in findings:
            rule = rules[finding.detector.name]
            self.count(rule, finding.detector.name, REQUEST)
            if rule.action == "block":
                blocked = Blocked(rule, finding.detector.name)
                blocked.param = place(payload, ref.container, ref.key, walker.dotted)
                raise blocked

    def _reads(self, role: str, rules: Mapping[str, Rule], system_rules: Mapping[str, Rule] | None) -> bool:
        """Whether the prompt's guard would act on a text of ``role``: a rule that changes or
        blocks what it finds there, an injection rule that blocks (users' and tools' text, and the
        instructions as the context of their scores), or a rule for answers that looks for what
        the instructions keep. A place of a shape the guard does not read is refused only then: a
        ``log`` rule would not have changed it (only its count is missed)."""
        plan = self.plan
        injection = plan.injection is not None and plan.injection.action != "log"
        if role == "system":
            kept_rule = plan.response.get(KEPT)
            return (_acting(rules if system_rules is None else system_rules)
                    or (kept_rule is not None and kept_rule.action != "log") or (injection and plan.instructions))
        return _acting(rules) or (injection and role in INJECTION_ROLES)

    def _identifier(self, value: str, findings: Sequence[Finding], rules: Mapping[str, Rule]) -> str:
        """An identifier the rules change (``user``, ``safety_identifier``, ``prompt_cache_key``,
        Messages' ``metadata.user_id``), as the provider gets it: its keyed digest, whole. A
        placeholder would be the same ``[EMAIL_1]`` for every user of the organisation (numbered
        per request): the provider's per-user abuse enforcement would see one user, and its
        prompt-cache routing one key. Pseudonymised (every rule that changes it pseudonymises), it
        comes back in what the answer echoes of the request (:meth:`_echo`)."""
        digest = identifier_digest(value)
        if all(rules[f.detector.name].action in ("pseudonymise", "log") for f in findings):
            self._identities[digest] = value
        return digest

    def injection_found(self) -> None:
        """Prompt injection was found (by the built-in scorer or the classifier): count; block if so ruled."""
        rule = self.plan.injection
        assert rule is not None
        self.count(rule, INJECTION, REQUEST)
        if rule.action == "block":
            raise Blocked(rule, INJECTION)

    def apply(self, text: str, findings: Sequence[Finding], rules: Mapping[str, Rule] | Any, direction: str,
              json_text: bool = False, restore: bool = False, state: int = OUTSIDE, echo: bool = False,
              fixed: bool = False, edits: list[tuple[int, int, int]] | None = None) -> str:
        """``text`` with each finding acted on by its rule (counted); pseudonyms put back when ``restore``.
        ``json_text``: ``text`` is JSON text, starting where ``state`` says (:func:`json_state`); a
        value replaced outside a string (a card or phone number given as a JSON number) becomes a
        string (``"[PHONE_1]"``), so the text stays JSON. ``echo``: the request's own text that an
        answer repeats (:meth:`_echo`): not counted, and a ``block`` rule's value is replaced by its
        placeholder instead of refusing the answer. ``edits``: filled with each span of ``text``
        replaced, as (start, end, length of its replacement), in order (:func:`moved`)."""
        parts: list[str] = []
        last = at = 0
        escapes = json_text and "\\" in text
        for finding in findings:
            start, end = finding.start, finding.end
            if escapes:  # (a stream's text, scanned as written) never a piece of an escape
                start, end = _whole_escapes(text, max(start, last), end)
                if start >= end:
                    continue
            detector = finding.detector
            rule = rules[detector.name]
            action = rule.action
            if not echo:
                self.count(rule, detector.name, direction)
                if action == "block":
                    raise Blocked(rule, detector.name)
            if action == "log":
                continue
            value = text[start:end]
            # JSON text: the value as it is meant (a key's line breaks, not ``\\n``), in the vault
            # and for its placeholder's number too (the same value in plain text: the same placeholder)
            meant = unescape(value) if escapes else value
            if direction == RESPONSE and meant in self._schema and detector.kind != "kept":
                continue  # exactly a value of the request's schema (an enum member): counted, left as it is
            if fixed:  # the audio says the value: the transcript redacted, the answer would still hold it
                raise Blocked(rule, detector.name, fixed=True)
            parts.append(self._restore(text[last:start], json_text, edits, last, echo)
                         if restore else text[last:start])
            if action == "mask":
                new = _mask(meant, 0 if detector.kind in ("kept", "credential") else MASK_SHOWN)
                if meant is not value:
                    new = orjson.dumps(new).decode()[1:-1]
            else:  # (a value split by invisible characters: the same value, the same placeholder)
                new = self._placeholder(detector, strip(meant), action == "pseudonymise")
            if json_text:
                state, at = json_state(text, state, at, start), start
                if state == OUTSIDE:  # a bare number: the whole of it becomes the string (jsontext)
                    new = f'"{new}"'
                    sign, end = bare_number(text, start, end, last)
                    if sign < start:
                        parts[-1] = parts[-1][:-1]
                        start = sign
            if edits is not None:
                edits.append((start, end, len(new)))
            parts.append(new)
            last = end
        if not parts:
            return self._restore(text, json_text, edits, 0, echo) if restore else text
        parts.append(self._restore(text[last:], json_text, edits, last, echo) if restore else text[last:])
        return "".join(parts)

    def _placeholder(self, detector: Detector, value: str, keep: bool) -> str:
        key = (detector.label, value)
        placeholder = self._placeholders.get(key)
        if placeholder is None:
            label, numbers = detector.label, self._numbers
            numbers[label] += 1
            placeholder = f"[{label}_{numbers[label]}]"
            while placeholder in self._taken:  # (empty unless a rule pseudonymises)
                numbers[label] += 1
                placeholder = f"[{label}_{numbers[label]}]"
            self._placeholders[key] = placeholder
        if keep:
            self.vault[placeholder] = value
        return placeholder

    def _restore(self, text: str, json_text: bool, edits: list[tuple[int, int, int]] | None = None,
                 at: int = 0, echo: bool = False) -> str:
        """``text`` with its pseudonyms put back; ``edits`` (:meth:`apply`): filled with the spans
        replaced, ``text`` starting at ``at`` of the whole. A value the request's instructions keep
        is withheld as the ``kept_secret`` rule withholds it (:meth:`_withheld`), not put back."""
        vault = self.vault
        if not vault or "[" not in text:
            return text
        kept = self._kept

        def back(match: re.Match[str]) -> str:
            value = vault.get(match[0])
            if value is None:
                return match[0]
            new = None
            if kept is not None and kept.find(value):
                new = self._withheld(kept, value, echo)
            if new is None:
                new = value
            if json_text:
                new = orjson.dumps(new).decode()[1:-1]
            if edits is not None:
                edits.append((at + match.start(), at + match.end(), len(new)))
            return new

        return PLACEHOLDER.sub(back, text)

    def _withheld(self, kept: Kept, value: str, echo: bool) -> str | None:
        """What a pseudonymised ``value`` holding what the instructions keep becomes in the answer
        instead of itself, as the ``kept_secret`` rule acts (counted, unless ``echo``); None:
        the rule only logs, the value is put back."""
        rule = self.plan.response[KEPT]
        if not echo:
            self.count(rule, KEPT, RESPONSE)
            if rule.action == "block":
                raise Blocked(rule, KEPT)
        if rule.action == "log":
            return None
        if rule.action == "mask":
            return _mask(value, 0)
        return self._placeholder(kept.detector, value, False)

    # -- the answer ---------------------------------------------------------------------------

    def answer(self, walker: Walker, payload: dict[str, Any]) -> bool:
        """Act on a buffered answer's text (in place); whether it changed. Raises :class:`Blocked`
        or :class:`~.scanner.Unscannable`."""
        rules = self.plan.response
        changed = False
        for ref in list(walker.answer(payload, self._json)):
            text = ref.get()
            if not text:
                continue
            findings = self._found(text, ref.json_text)
            edits: list[tuple[int, int, int]] | None = [] if ref.anchored else None
            new = self.apply(text, findings, rules, RESPONSE, ref.json_text, restore=ref.restore, fixed=ref.fixed,
                             edits=edits)
            if new != text:
                ref.set(new)
                changed = True
                if edits:
                    _anchor(ref.anchored, edits)
        for ref in list(walker.echoed(payload)):
            text = ref.get()
            new = self._echo(text, ref.json_text) if text else text
            if new != text:
                ref.set(new)
                changed = True
        return changed

    def _found(self, text: str, json_text: bool) -> list[Finding]:
        """The findings of the answer's rules in ``text`` (JSON text: read as what it means), the
        values the instructions keep among them."""
        rules = self.plan.response
        kept = self._kept

        def find(text: str) -> list[Finding]:
            findings = self.plan.scanner.find(text, rules, self._answer_budget()) if rules else []
            return united([*findings, *kept.find(text)], rules) if kept is not None else findings

        return _meant(text, find, rules) if json_text else find(text)

    def _echo(self, text: str, json_text: bool) -> str:
        """A text of the request that the answer repeats (the ``instructions`` a Responses
        ``response`` object echoes, as the provider received them; also a provider's error
        message inside a stream, which may quote the answer): what the answer's rules find
        in it is replaced as in the answer's own text (a value the instructions keep included),
        and pseudonyms are put back; not counted (the model did not say it), and a ``block``
        rule's value is replaced by its placeholder rather than refusing every answer to such
        instructions. Raises :class:`~.scanner.Unscannable`."""
        original = self._identities.get(text)  # a pseudonymised identifier, echoed as its digest
        if original is not None:
            return orjson.dumps(original).decode()[1:-1] if json_text else original
        rules = self.plan.response
        findings: Sequence[Finding] = ()
        if rules:
            escaped = json_text and "\\" in text
            findings = remembered((ECHO_JSON if escaped else ECHO) + self.plan.serial, text,
                                  functools.partial(_find_json if escaped else _find, self.plan.scanner, rules,
                                                    self._answer_budget()))
        if self._kept is not None:
            more = _meant(text, self._kept.find, rules) if json_text else self._kept.find(text)
            findings = united([*findings, *more], rules)
        return self.apply(text, findings, rules, RESPONSE, json_text, restore=True, echo=True)

    def shown(self, text: str) -> str | None:
        """An answer's ``text`` as a trace may carry it: every value a response rule finds as its
        placeholder, whatever the rule's action (a value the policy guards never leaves for a
        tracing backend), not counted; None when it cannot be scanned within the bounds."""
        rules = self.plan.response
        try:
            findings = self.plan.scanner.find(text, rules, Budget()) if rules else []
        except Unscannable:
            return None
        if self._kept is not None:
            findings = united([*findings, *self._kept.find(text)], rules)
        if not findings:
            return text
        findings = united(findings)  # (every value hidden: those only logged too, overlapping others)
        parts, last = [], 0
        for finding in findings:
            parts += [text[last:finding.start], self._placeholder(finding.detector, text[finding.start:finding.end],
                                                                  False)]
            last = finding.end
        parts.append(text[last:])
        return "".join(parts)

    def _answer_budget(self) -> Budget:
        budget = self._answered
        if budget is None:
            budget = self._answered = Budget()
        return budget

    def events(self, walker: Walker, events: list[SSEEvent]) -> list[SSEEvent]:
        """A streamed answer's events, their text acted on (see the module docstring). Raises
        :class:`Blocked` or :class:`~.scanner.Unscannable`."""
        stream = self._stream
        if stream is None:
            stream = self._stream = walker.stream(self._json)
            rules = self.plan.response
            detectors = [d for d in self.plan.scanner.detectors if d.name in rules]
            if self._kept is not None:
                detectors.append(self._kept.detector)
            self._holdback = holdback(tuple((d.chars, d.width) for d in detectors), bool(self.vault))
        return stream.feed(events, self._text, self._flush, self._echo)

    @property
    def sequence(self) -> int | None:
        """Events of a numbered stream (Responses) that went out through the guard so far; None
        when the answer is not such a stream (see :attr:`.texts.StreamTexts.sequence`)."""
        return self._stream.sequence if self._stream is not None else None

    def _text(self, key: tuple[Any, ...], text: str, json_text: bool, restore: bool = True,
              fixed: bool = False) -> str:
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = _Channel(restore, fixed)
        return self._release(channel, channel.held + text, json_text, final=False, new=len(text))

    def _flush(self, key: tuple[Any, ...], json_text: bool) -> str:
        channel = self._channels.pop(key, None)
        if channel is None or not channel.held:
            return ""
        return self._release(channel, channel.held, json_text, final=True)

    def _release(self, channel: _Channel, buf: str, json_text: bool, final: bool, new: int = 0) -> str:
        """What of ``buf`` (held text, then ``new`` characters received now) goes out now; the rest
        stays held. (The characters of ``buf`` scanned before, ``channel.scanned``, had their
        candidates counted then.)"""
        old = channel.scanned
        if channel.swallow is not None:  # inside a private key block: drop it, up to its closing armour
            closing = channel.swallow.search(buf)
            if closing is None:
                channel.held = "" if final else buf[-_ARMOUR:]
                channel.scanned = len(channel.held)
                return ""
            channel.swallow = None
            buf = buf[closing.end():]
            old, channel.runs = 0, None  # what follows is measured and scanned afresh
            # The context before is the block's opening armour: scanned again with what follows,
            # it would open a block over it (the findings of one scan do not overlap) and hide a
            # value right after the block. What follows a block starts afresh.
            channel.before = ""
        rules = self.plan.response
        holdback = self._holdback
        assert holdback is not None
        runs = None
        if final:
            cut = len(buf)
        else:
            runs = channel.runs if channel.runs is not None else holdback.none
            if new or channel.runs is None:
                runs = holdback.extend(runs, buf[len(buf) - new:] if channel.runs is not None else buf)
            cut = len(buf) - max(runs, default=0)
            if cut > 0 and INVISIBLE.match(buf, cut - 1):  # a run stopped at an invisible character
                cut = _visible_cut(buf, cut, holdback)
            if json_text and cut > 0:  # never between an escape's backslash and its letters
                split = escape_at(buf, cut)
                if split is not None:
                    cut = split[0]
            # Nothing could go out (all of it may still become a value), or little, compared with the
            # held text the scanner would read again (a run longer than a detector's longest match,
            # adding a character an event): wait, the text held, for more. Each scan then reads at
            # most a few times the text that came since the last, whatever is held back.
            if cut <= 0 or (old > _RESCAN and 4 * (len(buf) - old) < old):
                channel.held, channel.runs = buf, runs
                return ""
        sure = -1  # JSON text: where an opened key block starts (what follows, swallowed, holds no quote)
        context = channel.before
        findings: list[Finding] = []
        if rules and buf:
            shift = len(context)
            seen = context + buf
            if json_text:  # (as written, but a value right after ``\\n`` read without the ``n``)
                seen = blanked(seen)
            found = self.plan.scanner.find(seen, rules, self._answer_budget(), shift + old)
            if self._kept is not None:
                found = united([*found, *self._kept.find(seen)], rules)
            for finding in found:
                if finding.start < shift:
                    continue
                start, end = finding.start - shift, finding.end - shift
                if start >= cut:
                    break
                if end > cut or (finding.open and not final):
                    if finding.open and start < cut:  # an opened key block: replace it, swallow the rest
                        findings.append(Finding(finding.detector, start, len(buf), open=True))
                        cut, sure = len(buf), start
                        until = finding.detector.until
                        assert until is not None
                        channel.swallow = re.compile(until)
                        break
                    cut = start
                    break
                findings.append(Finding(finding.detector, start, end))
        sent = buf[:cut]
        # Inside a key block the held text is only the tail a split closing armour may start in.
        channel.held = buf[cut:] if channel.swallow is None else buf[-_ARMOUR:]
        channel.scanned = len(channel.held)
        # The runs at the end of ``buf`` are those of the held text: each is at most what was kept.
        channel.runs = runs if channel.swallow is None else None
        channel.before = (context + sent)[-CONTEXT - 1:]
        state = channel.json
        if json_text:
            channel.json = json_state(sent, state, 0, sure if sure >= 0 else len(sent))
        return self.apply(sent, findings, rules, RESPONSE, json_text, restore=channel.restore, state=state,
                          fixed=channel.fixed)


def _visible_cut(buf: str, cut: int, holdback: Holdback) -> int:
    """Where what goes out of ``buf`` ends when the runs the hold-back measured stop at an invisible
    character (``AKIA<U+200B>Z7``): the runs measured on the text without such characters (a value
    they split is found whole, :mod:`.visible`), the cut mapped back to ``buf``."""
    seen = Visible(buf)
    keep = holdback.keep(seen.text)
    return min(cut, seen.start(len(seen.text) - keep)) if keep else cut


def _whole_escapes(text: str, start: int, end: int) -> tuple[int, int]:
    """A finding's span in JSON text moved off the escapes it splits: its start past an escape it
    starts inside (the ``n`` of ``\\n``), its end past the rest of one it ends inside."""
    split = escape_at(text, start)
    if split is not None:
        start = split[1]
    split = escape_at(text, end)
    if split is not None:
        end = split[1] if split[1] <= len(text) else split[0]
    return start, end


MASK_SHOWN = 4  # the letters and digits a masked value shows at its end (a card's last four) ...
MASK_HIDDEN = 8  # ... only when at least this many stay hidden before them


def moved(index: int, edits: Sequence[tuple[int, int, int]], end: bool) -> int:
    """Where character ``index`` of a text is once ``edits`` (ordered (start, end, length of the
    replacement) spans, :meth:`Guard.apply`) are made. An index strictly inside a replaced span
    goes to the replacement's start (``end`` False: a citation's start) or its end (a citation's
    end), so a citation that covered part of a value covers the whole of its placeholder."""
    shift = 0
    for start, stop, length in edits:
        if stop <= index:
            shift += length - (stop - start)
        elif start < index:
            return start + shift + (length if end else 0)
        else:
            break
    return index + shift


def _anchor(anchored: Sequence[dict[str, Any]], edits: Sequence[tuple[int, int, int]]) -> None:
    """Move the indices of the objects anchored in a text that changed (an answer's citations:
    ``start_index``/``end_index``, a file citation's ``index``) as :func:`moved` says."""
    for anchor in anchored:
        for key, end in (("start_index", False), ("end_index", True), ("index", False)):
            index = anchor.get(key)
            if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
                anchor[key] = moved(index, edits, end)


def _letter(char: str) -> bool:
    """A letter or digit of any script, its combining marks too (a Devanagari vowel sign)."""
    return char.isalnum() or unicodedata.category(char).startswith("M")


def _mask(value: str, shown: int = MASK_SHOWN) -> str:
    """Every letter and digit (any script) as ``*`` but the last ``shown``, separators kept; those
    are shown only when :data:`MASK_HIDDEN` stay hidden (a card's last four, not an IP address's,
    nor a short email's). A credential or a value the instructions keep shows none: the end of a
    password is half of it."""
    if not shown:  # a secret: its punctuation is part of it too
        return "".join(char if char.isspace() else "*" for char in value)
    letters = sum(1 for char in value if _letter(char))
    keep = letters - shown if letters - shown >= MASK_HIDDEN else letters
    out = []
    for char in value:
        if keep > 0 and _letter(char):
            out.append("*")
            keep -= 1
        else:
            out.append(char)
    return "".join(out)
