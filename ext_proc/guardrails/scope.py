"""The subject an application's instructions keep it to, and a user text that says it leaves it.

"Only answer questions about cooking and recipes", "Do not answer questions unrelated to Nimbus
products, billing or accounts", "Stay on the subject of mathematics": the instructions name what
the application is for. Two things follow for the injection score (:mod:`.instructions`):

- such a prohibition names what is *allowed*: its words after "unrelated to", "other than",
  "outside" are the subject, not forbidden words. Read as a plain prohibition, "do not answer
  questions unrelated to Nimbus products, billing or accounts" made every question about billing
  a breach of it (``breaks_rule``: "How do I change my billing address?" 0.014 -> 0.222);
- a text that says it leaves the subject ("Forget the recipes for a minute and ...", "Off topic,
  but ...", "Let's change the subject", "This isn't about Nimbus, but ...", "Instead of math, ...")
  raises ``leaves_scope``: the goal hijacking of an application kept to one task. A question that
  merely strays ("What's the capital of France?" to a cooking assistant) says nothing of the kind
  and raises nothing: telling subjects apart needs more than words, and a gateway must not refuse
  a user for asking the wrong assistant.

Stems are the first four letters ("math" meets "mathematics"). Hyperscan finds the places (a
subject named, a text leaving), Python reads the few words after each; a user text is read only
when its instructions keep a subject.
"""

from __future__ import annotations

import functools
import re

import hyperscan

from .places import compiled, piece, places

# In a prohibition: the words after these name the subject ("unrelated to X", "other than X").
_OUTSIDE_WORDS = (r"(?:unrelated\s+to|not\s+related\s+to|other\s+than|outside(?:\s+of)?|except(?:\s+for)?|besides|"
                  r"apart\s+from|beyond|that\s+(?:are|is)\s+not\s+(?:about|related\s+to)|not\s+about|"
                  r"off[- ]topic\s+(?:for|from))\s+")
_OUTSIDE = re.compile(r"\b" + _OUTSIDE_WORDS, re.IGNORECASE)
# Positive: "only answer questions about X", "stay on the subject of X", "only help with X"; or
# refusing what lies outside it: "It must refuse requests outside of HR policy".
_ONLY = (r"\b(?:only\s+(?:answer|respond\s+to|discuss|talk\s+about|help\s+(?:with|users\s+with)|assist\s+with|handle)|"
         r"stay\s+on\s+(?:the\s+)?(?:subject|topic)\s+of|(?:limit|restrict)\s+(?:yourself|your\s+answers|the\s+"
         r"conversation)\s+to|stick\s+to)\s+(?:(?:questions|topics|requests|queries)\s+(?:about|on|regarding|"
         r"related\s+to|concerning)\s+)?(?:the\s+)?")
_REFUSING = (r"\b(?:refuse|decline|reject|ignore|not\s+answer|n't\s+answer)\w*\s+(?:[\w-]+\s+){0,3}" + _OUTSIDE_WORDS
             + r"(?:the\s+)?")
_SUBJECT = re.compile(r"[^.!?\n;:]{1,80}")
_WORD = re.compile(r"[^\W\d_]{3,}|\b[A-Z]{2}\b")  # and two-letter acronyms ("HR", "IT")
_NOT_SUBJECT = frozenset(re.findall(r"\w+", """and the our your their its with for any all other questions topics
requests queries about related subject topic anything everything else things thing that this these those users user
customers politely decline refuse answer answers help assist only please"""))
# A text that leaves: saying so, or (where the pattern ends) setting aside what it names next.
_LEAVES = (r"\b(?:off[- ]topic|unrelated|change\s+(?:of\s+)?(?:the\s+)?(?:subject|topic)|(?:talk|switch|move"
           r"(?:\s+on)?)\s+(?:about|to|on\s+to)\s+(?:something|anything)\s+(?:else|different))\b")
_NOT_ABOUT = r"\b(?:isn't|is\s+not|it's\s+not|not)\s+(?:about|related\s+to)\s+(?:the\s+|your\s+)?"
_ASIDE = (r"\b(?:forget(?:\s+about)?|never\s*mind|enough\s+(?:about|of|with)|stop\s+talking\s+about|instead\s+of|"
          r"rather\s+than|aside\s+from|leave)\s+(?:the\s+|your\s+|all\s+(?:the\s+|this\s+)?)?")
_POINTERS = frozenset(("that", "this", "it", "topic", "subject"))
_NEXT_WORD = re.compile(r"\w+")
MAX_READ = 4_096
MAX_PLACES = 16  # places of each kind read in one text
_TEXT_LEAVES, _TEXT_NOT_ABOUT, _TEXT_ASIDE = 0, 1, 2


def _stems(text: str) -> set[str]:
    return {w[:4].lower() for w in _WORD.findall(text) if w.lower() not in _NOT_SUBJECT}


def subject_after(clause: str) -> tuple[str, set[str]]:
    """A prohibition's ``clause`` cut before "unrelated to", "other than"...: what it forbids, and
    the stems of the subject named after it (none: no such words)."""
    match = _OUTSIDE.search(clause)
    if match is None:
        return clause, set()
    subject = _SUBJECT.match(clause, match.end())
    return clause[:match.start()], _stems(subject.group(0)) if subject else set()


@functools.cache
def _database(which: str) -> hyperscan.Database:
    return compiled([_ONLY, _REFUSING] if which == "instructions" else [_LEAVES, _NOT_ABOUT, _ASIDE])


def subject(text: str) -> set[str]:
    """The stems of the subject ``text`` (instructions) keeps the application to, positively
    ("only answer questions about cooking") or refusing what lies outside it ("refuse requests
    outside of HR policy"); :func:`subject_after` reads the negated prohibitions."""
    stems: set[str] = set()
    data = text[:MAX_READ].encode("utf-8", "surrogatepass")
    for ends in places(_database("instructions"), data, MAX_PLACES).values():
        for end in ends:
            named = _SUBJECT.match(piece(data, end, end + 120))
            if named:
                stems |= _stems(named.group(0))
    return stems


def leaves(text: str, stems: frozenset[str]) -> bool:
    """Whether ``text`` says it leaves the subject named by ``stems``."""
    data = text[:MAX_READ].encode("utf-8", "surrogatepass")
    for pattern, ends in places(_database("text"), data, MAX_PLACES).items():
        if pattern == _TEXT_LEAVES:
            return True
        for end in ends:
            named = _NEXT_WORD.match(piece(data, end, end + 40))
            if named is None:
                continue
            word = named.group(0).lower()
            if word[:4] in stems or (pattern == _TEXT_NOT_ABOUT and word in _POINTERS):
                return True
    return False


def warm() -> None:
    """Compile both databases now rather than on a first request."""
    _database("instructions")
    _database("text")
