"""How many bytes of request bodies one worker holds at once, and the body refused past that.

A worker reads each request body whole (up to :data:`ext_proc.server.coalesce.MAX_BODY`, 64
MiB) and keeps it, parsed, until its request ends: a 64 MiB chat request costs the worker about
260 MiB at its peak (``tests/e2e/test_sidecar_memory_e2e.py``). Without a bound, a few such
requests at once (a batch job's images, a client's retries) take a worker past its container's
memory limit; the kernel then kills it, and every request it was serving fails, the small ones
too.

:class:`BodyBudget` counts the bytes of request bodies the worker's requests in flight hold, from
a body's first chunk until its request's stream ends. A large body whose length its request
declares (``content-length``, as the SDKs send it; at most ``MAX_BODY``) reserves it whole at its
first chunk (:meth:`BodyBudget.read`): one that would not fit beside the bodies held and reserved
is refused as soon as it starts, not once Envoy and the worker have read most of it (Envoy holds a
streamed body twice while the worker reads it: its queue, and its copy on the way; three 64 MiB
uploads at once took the sidecar's Envoy to 453 MiB when the refusal waited for the third body's
bytes). A chunk that would take the total held past the limit while *other* requests hold bodies
refuses its request: 503 ``overloaded`` in the client's
format with ``retry-after: 1`` (the OpenAI and Anthropic SDKs retry it), recorded as rejected,
the provider never asked. A request alone in the worker is always read (up to ``MAX_BODY``), so
the limit decides how many large bodies share a worker, never whether a large one can pass.
Answers are not counted: a provider's answer is usually small, and ``MAX_BODY`` bounds it.

A gzip body (``content-encoding: gzip``) is inflated by the session (up to 200 times its size, at
most :data:`~ext_proc.llm.apis.base.MAX_DECODED_BODY`) and kept inflated: its compressed chunks
count as they come, then, before the session inflates it, the size its gzip trailer announces
(:func:`inflated`) is charged too (refused past the limit as any body), and once inflated the
request holds the inflated body's real size (counted even past the limit: it is in memory
already; later requests see it).
"""

from __future__ import annotations

from collections.abc import Mapping

from ext_proc.llm.apis.base import MAX_DECODED_BODY, MAX_RATIO
from ext_proc.llm.errors import ClientError
from ext_proc.server.coalesce import MAX_BODY

DEFAULT_MIB = 128  # two of the largest bodies at once: the injected sidecar's memory limit holds that
LARGE = 1024 * 1024  # bytes: a body declaring this much or more reserves it whole at its first chunk

OVERLOADED = ClientError(
    503, "overloaded", "The gateway is holding as many request bodies as it can right now; retry in a moment.",
    headers=(("retry-after", "1"), ("x-should-retry", "true")))


class BodyBudget:
    """One worker's request bodies held, in bytes, against its limit (0: no limit); and the bytes
    large bodies declared but have not sent yet (:meth:`read`)."""

    __slots__ = ("held", "large", "limit", "refused", "reserved")

    def __init__(self, limit: int = DEFAULT_MIB * 1024 * 1024, large: int = LARGE) -> None:
        if limit < 0:
            raise ValueError("a body budget is 0 (no limit) or more bytes")
        self.limit = limit
        self.large = large  # bytes: a body declaring this much or more reserves it (read)
        self.held = 0  # bytes held by every request in flight
        self.reserved = 0  # bytes large bodies in flight declared and have not sent yet
        self.refused = 0  # requests refused since the worker started

    def take(self, mine: int, size: int) -> bool:
        """Whether a request already holding ``mine`` bytes may hold ``size`` more (then they are
        counted); False when that takes the worker past its limit while others hold bodies."""
        held = self.held + size
        if self.limit and held > self.limit and self.held > mine:
            self.refused += 1
            return False
        self.held = held
        return True

    def read(self, held: int, ahead: int, size: int) -> tuple[int, int] | None:
        """A request reads ``size`` more bytes of its body: the bytes it then holds and the bytes it
        still reserves, once counted; or None: refused (what it held and reserved is no longer
        counted once the caller gives it back). ``held``: the bytes it holds; ``ahead``: the bytes
        it reserves, or, before its first chunk (``held`` 0), the length its request declared.

        Every chunk counts as :meth:`take` counts it. A large body (:attr:`large`, declared) also
        reserves the rest of its declared length at its first chunk, and is refused there when what
        the worker holds and has reserved leaves no room for it while others hold or reserve bodies:
        as soon as it starts, not once Envoy and the worker have read most of it. Only large bodies
        look at reservations: a stalled client declaring large bodies and sending nothing delays
        other large bodies (until Envoy's message timeout ends its streams), never the small ones."""
        if not held:  # its first chunk
            reserve = ahead - size if ahead >= self.large else 0
            if reserve > 0 and self.limit:
                others = self.held + self.reserved
                if others and others + size + reserve > self.limit:
                    self.refused += 1
                    return None
            if not self.take(0, size):
                return None
            reserve = max(0, reserve)
            self.reserved += reserve
            return size, reserve
        used = min(size, ahead)
        if not self.take(held, size):
            return None  # (its reservation, ``ahead``, goes with what it held: give_back)
        self.reserved = max(0, self.reserved - used)
        return held + size, ahead - used

    def release(self, ahead: int) -> None:
        """A request's body ended short of what it declared: the ``ahead`` it still reserved goes."""
        self.reserved = max(0, self.reserved - ahead)

    def true_up(self, mine: int, size: int) -> int:
        """A request counted as holding ``mine`` bytes holds ``size`` (its body inflated): counted
        whatever the limit (the bytes are in memory already); returns ``size``."""
        self.held = max(0, self.held + size - mine)
        return size

    def give_back(self, size: int, ahead: int = 0) -> None:
        """A request's stream ended (or it was refused): the ``size`` bytes it held, and the ``ahead``
        it reserved (once it read a chunk: before that, ``ahead`` is only what it declared), are no
        longer counted."""
        if size and ahead:
            self.reserved = max(0, self.reserved - ahead)
        self.held = max(0, self.held - size)


def declared(headers: Mapping[str, str]) -> int:
    """The length of body a request's ``headers`` declare (``content-length``), at most ``MAX_BODY``
    (the coalescer refuses a longer body: 413); 0 when they declare none or no number."""
    length = headers.get("content-length")
    if length is None or not (length.isascii() and length.isdigit()):
        return 0
    return MAX_BODY if len(length) > 12 else min(int(length), MAX_BODY)


def inflated(body: bytes) -> int:
    """The bytes a gzip ``body`` inflates to, read before inflating it: its last member's ``ISIZE``
    (the trailer's last 4 bytes, little-endian; zlib checks it when inflating), capped at what the
    session inflates at most (``apis.gunzip`` refuses a body past that). An estimate: a body of
    several members announces only its last one's size (the true-up after inflating counts it)."""
    if len(body) < 18 or body[:2] != b"\x1f\x8b":  # no gzip header and trailer: the session refuses it (400)
        return 0
    cap = min(MAX_DECODED_BODY, max(1 << 20, len(body) * MAX_RATIO))
    return min(int.from_bytes(body[-4:], "little"), cap)
