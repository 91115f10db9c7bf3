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

Stems are the first four letters ("math" meets "mathematics"). Reading is Python's ``re`` on the
instructions once (cached with them) and on a user text only when its instructions keep a subject.
"""

from __future__ import annotations

import re

# In a prohibition: the words after these name the subject ("unrelated to X", "other than X").
_OUTSIDE = re.compile(r"\b(?:unrelated\s+to|not\s+related\s+to|other\s+than|outside(?:\s+of)?|except(?:\s+for)?|"
                      r"besides|apart\s+from|beyond|that\s+(?:are|is)\s+not\s+(?:about|related\s+to)|not\s+about|"
                      r"off[- ]topic\s+(?:for|from))\s+", re.IGNORECASE)
# Positive: "only answer questions about X", "stay on the subject of X", "only help with X".
_ONLY = re.compile(r"\b(?:only\s+(?:answer|respond\s+to|discuss|talk\s+about|help\s+(?:with|users\s+with)|"
                   r"assist\s+with|handle)|stay\s+on\s+(?:the\s+)?(?:subject|topic)\s+of|(?:limit|restrict)\s+(?:yourself|your\s+"
                   r"answers|the\s+conversation)\s+to|stick\s+to)\s+(?:(?:questions|topics|requests|queries)\s+"
                   r"(?:about|on|regarding|related\s+to|concerning)\s+)?(?:the\s+)?", re.IGNORECASE)
# Or refusing what lies outside it: "It must refuse requests outside of HR policy."
_REFUSING = re.compile(r"\b(?:refuse|decline|reject|ignore|not\s+answer|n't\s+answer)\w*\s+(?:[\w-]+\s+){0,3}?"
                       r"(?=" + _OUTSIDE.pattern + r")", re.IGNORECASE)
_SUBJECT = re.compile(r"[^.!?\n;:]{1,80}")
_WORD = re.compile(r"[^\W\d_]{3,}|\b[A-Z]{2}\b")  # and two-letter acronyms ("HR", "IT")
_NOT_SUBJECT = frozenset(re.findall(r"\w+", """and the our your their its with for any all other questions topics
requests queries about related subject topic anything everything else things thing that this these those users user
customers politely decline refuse answer answers help assist only please"""))
# A text that leaves: saying so, or setting the subject aside by name.
_LEAVES = re.compile(r"\b(?:off[- ]topic|unrelated|change\s+(?:of\s+)?(?:the\s+)?(?:subject|topic)|(?:talk|switch|move"
                     r"(?:\s+on)?)\s+(?:about|to|on\s+to)\s+(?:something|anything)\s+(?:else|different)|(?:isn't|is\s+not|"
                     r"it's\s+not|not)\s+(?:about|related\s+to)\s+(?:the\s+|your\s+)?(?P<named>\w+))", re.IGNORECASE)
_ASIDE = re.compile(r"\b(?:forget(?:\s+about)?|never\s*mind|enough\s+(?:about|of|with)|stop\s+talking\s+about|"
                    r"instead\s+of|rather\s+than|aside\s+from|leave)\s+(?:the\s+|your\s+|all\s+(?:the\s+|this\s+)?)?"
                    r"(?P<named>\w+)", re.IGNORECASE)
MAX_READ = 4_096


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


def subject(text: str) -> set[str]:
    """The stems of the subject ``text`` (instructions) keeps the application to, positively
    ("only answer questions about cooking") or refusing what lies outside it ("refuse requests
    outside of HR policy"); :func:`subject_after` reads the negated prohibitions."""
    stems: set[str] = set()
    for match in _ONLY.finditer(text[:MAX_READ]):
        named = _SUBJECT.match(text, match.end())
        if named:
            stems |= _stems(named.group(0))
    for match in _REFUSING.finditer(text[:MAX_READ]):
        stems |= subject_after(text[match.end():match.end() + 120])[1]
    return stems


def leaves(text: str, stems: frozenset[str]) -> bool:
    """Whether ``text`` says it leaves the subject named by ``stems``."""
    text = text[:MAX_READ]
    for match in _LEAVES.finditer(text):
        named = match.group("named")
        if named is None or named[:4].lower() in stems or named.lower() in ("that", "this", "it", "topic", "subject"):
            return True
    return any(match.group("named")[:4].lower() in stems for match in _ASIDE.finditer(text))
