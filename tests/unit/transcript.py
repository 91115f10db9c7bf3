"""Transcripts for the sans-IO core, in the spirit of mitmproxy's ``Playbook``.

A test reads as the conversation between Envoy and one :class:`Session`::

    assert (
        Transcript()
        >> RequestHeaders({":method": "POST", ":path": "/v1/embeddings"}, False, 0)
        << Continue(remove_headers=("accept-encoding", "x-tollway-provider"))
        >> RequestBody(b'{"model": "m", "input": "hi"}', True, 1)
        << Continue(set_headers=(("x-tollway-provider", "openai"),), clear_route_cache=True)
        ...
        << Record(outcome="ok", input_tokens=7)
    )

``>> event`` hands the event to the session at once; ``<< expected`` checks the next thing the
session produced, in order: the action answering an event, then the effects that event emitted.
An expectation is a value compared with ``==`` (an action, an ``EmitRecord``) or a matcher:
:class:`Record` (a subset of the record's fields), :class:`Responds` (status and JSON body) or
:class:`Replaces` (a ``Continue`` carrying a new JSON body and its ``content-length``).
The write-ahead :class:`Forwarded` notes are kept apart, in ``transcript.forwarded``.
``bool(transcript)`` is true when nothing produced was left unchecked, so ``assert transcript``
also proves that no extra record was emitted. Every failure shows the whole conversation so far.
"""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.core.actions import Continue, EmitRecord, Forwarded, Respond
from ext_proc.core.events import Event
from ext_proc.core.session import Session


class Record:
    """Matches an :class:`EmitRecord` whose record has (at least) these fields and values."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmitRecord) and all(
            key in other.record and other.record[key] == value for key, value in self.fields.items()
        )

    def __repr__(self) -> str:
        return "Record(" + ", ".join(f"{k}={v!r}" for k, v in self.fields.items()) + ")"


class Responds:
    """Matches a :class:`Respond` by status, decoded JSON body and (optionally) headers."""

    def __init__(self, status: int, body: Any, headers: tuple[tuple[str, str], ...] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Respond)
            and other.status == self.status
            and orjson.loads(other.body) == self.body
            and (self.headers is None or other.headers == self.headers)
        )

    def __repr__(self) -> str:
        return f"Responds({self.status}, {self.body!r})"


class Replaces:
    """Matches a :class:`Continue` replacing the body with this JSON and sizing it.

    ``set_headers`` are the headers expected before the ``content-length`` of the new body, which
    must come last and match the body's actual length.
    """

    def __init__(
        self,
        body: Any,
        set_headers: tuple[tuple[str, str], ...] = (),
        remove_headers: tuple[str, ...] = (),
        clear_route_cache: bool = False,
    ) -> None:
        self.body, self.set_headers = body, set_headers
        self.remove_headers, self.clear_route_cache = remove_headers, clear_route_cache

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Continue)
            and other.body is not None
            and orjson.loads(other.body) == self.body
            and other.set_headers == (*self.set_headers, ("content-length", str(len(other.body))))
            and other.remove_headers == self.remove_headers
            and other.clear_route_cache == self.clear_route_cache
            and not other.stream_response
        )

    def __repr__(self) -> str:
        return f"Replaces({self.body!r}, set_headers={self.set_headers!r}, remove_headers={self.remove_headers!r})"


def _show(item: object, limit: int = 400) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Transcript:
    """Events in (``>>``), expected actions and effects out (``<<``); see the module docstring."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session if session is not None else Session()
        self.log: list[str] = []
        self.pending: list[object] = []  # produced by the session, not yet expected
        self.actions: list[object] = []  # every action returned, for tests that inspect them
        self.forwarded: list[Forwarded] = []  # the write-ahead notes (kept apart: see test_journal)

    def __rshift__(self, event: Event) -> Transcript:
        self._check_drained(f"before feeding {_show(event)}")
        self.log.append(f">> {_show(event)}")
        action = self.session.handle(event)
        if action is not None:
            self.pending.append(action)
            self.actions.append(action)
        for effect in self.session.effects:
            (self.forwarded if isinstance(effect, Forwarded) else self.pending).append(effect)
        self.session.effects.clear()
        return self

    def __lshift__(self, expected: object) -> Transcript:
        if not self.pending:
            self._fail(f"expected {_show(expected)}\n   but the session produced nothing more")
        actual = self.pending.pop(0)
        if expected != actual:
            self._fail(f"expected {_show(expected)}\n   actual {_show(actual)}")
        self.log.append(f"<< {_show(actual)}")
        return self

    def __bool__(self) -> bool:
        self._check_drained("at the end")
        return True

    def _check_drained(self, when: str) -> None:
        if self.pending:
            self._fail(f"unexpected output {when}: " + "; ".join(_show(p) for p in self.pending))

    def _fail(self, message: str) -> None:
        transcript = "\n".join(self.log) or "(nothing yet)"
        raise AssertionError(f"transcript so far:\n{transcript}\n!! {message}")
