"""What a worker computed from one text alone, remembered by the text's keyed digest: each distinct
text of a conversation is scanned and counted once, not once per turn.

Theory of operation. A chat or agent request carries the whole conversation so far: the system
prompt, every earlier turn, every tool result. The guardrails' scans (the detectors' findings, the
prompt-injection score) and the prompt's token count are each a function of one text (and of the
policy's compiled rules, named by the *space* of the question), so without memory a conversation of
n turns costs n² texts' worth of scanning over its life, and a 30 KB agent request costs about a
millisecond of guardrails however little of it is new. :func:`remembered` answers a question about
a text from memory when the worker has answered it before, and computes and keeps the answer
otherwise.

The memory holds no text: an entry is keyed by 128 bits of a SHA-256 digest of the text under a random
key drawn when this module is imported (the workers forked from the zygote share it; it never
leaves the processes, so nobody can make two texts share a digest, and a collision by chance is
about 2⁻¹²⁸ per pair) after a tag naming the question, and holds only the answer (spans and
detector names, a score, a count: never a value the text contains). It is bounded
(:data:`MAX_ENTRIES`, the older half dropped at once when the newer half is full; about 110 bytes
an entry), per process (workers do not share it: a text another worker saw is computed once more
there), and read and written by the worker's event loop only. A text shorter than
:data:`MIN_CHARS` is computed every time: hashing it would cost about what answering does.
Digesting runs at about 1.6 GB/s, a thirtieth of what the scans and the tokenizer cost per byte,
so a text seen once costs a few percent more and a text seen again almost nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_ENTRIES = DEFAULT_ENTRIES = 8_192
MIN_CHARS = _MIN_CHARS = 48
# SHA-256 from a state that has absorbed a random key: the digests mean nothing outside these
# processes. SHA-256 rather than BLAKE2b: 1.6 against 0.9 GB/s here (7.5 against 13.3 µs for 12 KB),
# since CPUs of the last years hash it in hardware (x86 SHA extensions, ARMv8's).
_KEYED = hashlib.sha256(os.urandom(32))
_MISSING = object()
_TAGS = itertools.count(1)
# Two generations: answers go into the young one; when it holds half of MAX_ENTRIES it becomes the
# old one and the old one is dropped (a dict emptied from its front slows every later read of its
# first item, so no entry is deleted one by one). A hit in the old generation moves to the young.
_young: dict[bytes, object] = {}
_old: dict[bytes, object] = {}
stats = {"hits": 0, "misses": 0}  # since the process started (for tests and benchmarks)


def tag() -> bytes:
    """A tag no other call in this process returns: the part of a space that names one compiled
    thing (a guardrail plan, a set of instructions), so that what a replaced one answered is never
    read for its successor."""
    return b"%d:" % next(_TAGS)


def digest(text: str) -> bytes | None:
    """The text's key in the memory (16 bytes), for a caller that asks several questions of it;
    None when the text is too short to be remembered."""
    return None if len(text) < MIN_CHARS else _digest(text)


def _digest(text: str) -> bytes:
    state = _KEYED.copy()
    state.update(text.encode("utf-8", "surrogatepass"))
    return state.digest()[:16]


def remembered(space: bytes, text: str, compute: Callable[[str], T], known: bytes | None = None) -> T:
    """``compute(text)``, from memory when this process answered it for ``space`` and the same text.
    ``space``, a short tag (the key is the tag and then the digest), names the question and
    everything besides the text its answer depends on (a policy's compiled rules, an encoding);
    ``compute`` must depend on nothing else, and its answer must not be changed by its callers (it
    is shared). ``known``: the text's :func:`digest`, when the caller has it already."""
    if len(text) < MIN_CHARS:
        return compute(text)
    global _young, _old
    key = space + (known if known is not None else _digest(text))
    value = _young.get(key, _MISSING)
    if value is _MISSING:
        value = _old.pop(key, _MISSING)
        if value is _MISSING:
            stats["misses"] += 1
            value = compute(text)
        else:
            stats["hits"] += 1
        if len(_young) >= MAX_ENTRIES // 2:
            _young, _old = {}, _young
        _young[key] = value
    else:
        stats["hits"] += 1
    return value  # type: ignore[return-value]


def configure(entries: int) -> None:
    """Hold at most ``entries`` answers (``tollway serve --text-memory``); 0: remember nothing."""
    global MAX_ENTRIES, MIN_CHARS
    if entries < 0:
        raise ValueError("the text memory's size cannot be negative")
    MAX_ENTRIES = max(2, entries)
    MIN_CHARS = _MIN_CHARS if entries else sys.maxsize
    forget()


def forget() -> None:
    """Drop everything remembered (tests; a process that changes what a space's answers mean)."""
    _young.clear()
    _old.clear()


def size() -> int:
    """Entries held now."""
    return len(_young) + len(_old)


def entries() -> list[tuple[bytes, object]]:
    """What is held (tests: it holds no text)."""
    return [*_old.items(), *_young.items()]
