"""Provider credentials: resolved at the edge of the service, never inside the core.

A policy names where each provider's key lives (an environment variable, or a file such as a
mounted Kubernetes secret). :class:`CredentialStore` reads environment variables when asked and
caches files, re-reading one when its modification time, size or inode changes (checked at most
once a second, so a rotated secret is picked up without a restart). Keys are only ever placed
in the outgoing request's headers, in the form the provider expects; they are never logged, and
a missing key is reported by its *source* (variable or path), never by value.

A provider served by a *stand-in* (``tollway serve --stand-in``, e.g. the fake provider under
``tollway up``) gets :data:`STAND_IN_KEY`, never its own key, even when that is set: a stand-in is
not the provider, and the fake provider shows what it received (``GET /_mock/requests``) to any
local process. Key injection still happens and shows, and ``/readyz`` counts the provider as
served. Only ``stand_ins_get_keys`` (``--stand-ins-get-keys``) sends a stand-in the provider's own
key when it is set: for a stand-in that checks keys, as the tests' fake provider does.

Under ``tollway up`` (``tollway serve --stand-in-missing URL``) which providers are stand-ins is
decided again for each policy version (:func:`reached_for_real`, evaluated by the ``tollway serve``
parent, which publishes the answer with the policy): a provider added by a reload without a usable
key is served by the fake provider too, never sent to its real endpoint without a key. The store
then also asks ``more`` (the published set) whether a provider is a stand-in.

A provider may send the key back: an error quoting the ``Authorization`` header it got, a debugging
header reflecting it (self-hosted servers and proxies do). :class:`Scrub` takes the exact key of
each provider a request may have been sent to out of the answer's header values and bodies before
the session (and so the client, the record, the span and the logs) sees them, replacing it with
:data:`MARKER`: each header value and each body is checked with one ``in`` per key, and only an
answer that holds a key is changed. What it cannot see: a key split across two chunks of a streamed
answer, and a compressed body (Tollway asks providers for identity encoding).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping

from ext_proc.core.actions import Action, Continue, Respond
from ext_proc.core.events import Event, ResponseBody, ResponseHeaders
from ext_proc.llm import providers
from ext_proc.policy.compiled import CredentialSource, Provider

log = logging.getLogger("tollway.credentials")

Headers = tuple[tuple[str, str], ...]
STAND_IN_KEY = "tollway-stand-in-key"  # not a secret: the key a stand-in provider receives
MARKER = "[provider key removed by Tollway]"  # what replaces a provider's key its answer sent back
MIN_SCRUBBED = 8  # characters: a shorter "key" is not looked for in answers (it would mangle them)


def usable(key: str) -> bool:
    """Whether ``key`` can go in a request header as it is: visible ASCII only. A key with a line
    break, a space, a control or a non-ASCII character inside it (a file of two lines, a pasted
    zero-width space) would make every request to its provider fail (an invalid header, or one that
    cannot be encoded), while the provider looked served."""
    return key.isascii() and key.isprintable() and " " not in key


def credential_headers(provider: Provider, key: str) -> Headers:
    """The headers that carry ``key`` to ``provider`` (its kind's form: see :mod:`ext_proc.llm.providers`)."""
    return providers.kind(provider.kind).key_headers(key, provider)


class CredentialStore:
    """Resolves :class:`CredentialSource` to key strings; see the module docstring."""

    def __init__(
        self,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        recheck: float = 1.0,
        stand_ins: frozenset[str] = frozenset(),
        stand_ins_get_keys: bool = False,
        more: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self._stand_ins = stand_ins
        self._more = more  # the stand-ins decided for the running policy (tollway serve --stand-in-missing)
        self._stand_ins_get_keys = stand_ins_get_keys
        self._environ = environ
        self._clock = clock
        self._recheck = recheck
        self._files: dict[str, tuple[float, tuple[int, int, int] | None, str | None]] = {}
        self._warned: dict[str, float] = {}

    def stood_in(self, name: str) -> bool:
        """Whether provider ``name`` is served by a stand-in (given, or decided for the running policy)."""
        return name in self._stand_ins or (self._more is not None and name in self._more())

    def key(self, source: CredentialSource) -> str | None:
        if source.env is not None:
            value = self._environ.get(source.env, "").strip()
            if value and not usable(value):
                self._unusable(source.env, f"environment variable {source.env}")
                return None
            return value or None
        assert source.file is not None
        return self._file(source.file)

    def _unusable(self, name: str, where: str) -> None:
        """Warn (at most once a minute per source) of a key no request can carry; never its value."""
        now = self._clock()
        if now - self._warned.get(where, -1e9) > 60:
            self._warned[where] = now
            log.warning("the provider key in %s is unusable (whitespace, control or non-ASCII characters inside "
                        "it: two lines? a stray character?): treated as missing", where)

    def _file(self, path: str) -> str | None:
        now = self._clock()
        cached = self._files.get(path)
        if cached is not None and now - cached[0] < self._recheck:
            return cached[2]
        try:
            st = os.stat(path)
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if cached is not None and signature == cached[1]:
            self._files[path] = (now, signature, cached[2])
            return cached[2]
        value: str | None = None
        if signature is not None:
            try:
                # utf-8-sig: a byte-order mark (an editor's) is no part of the key; the whitespace
                # around it (a final newline, CRLF's too) neither.
                with open(path, encoding="utf-8-sig") as handle:
                    value = handle.read().strip() or None
            except (OSError, UnicodeDecodeError):
                value = None
            if value is not None and not usable(value):
                self._unusable(path, f"file {path}")
                value = None
        self._files[path] = (now, signature, value)
        return value

    def headers(self, provider: Provider) -> Headers:
        """The credential headers for ``provider``; empty (and a rate-limited warning) when missing."""
        source = provider.credential
        if source is None:
            return ()
        stood_in = self.stood_in(provider.name)
        key = self.key(source) if self._stand_ins_get_keys or not stood_in else None
        if key is None and stood_in:
            key = STAND_IN_KEY
        if key is None:
            where = f"environment variable {source.env}" if source.env else f"file {source.file}"
            now = self._clock()
            if now - self._warned.get(provider.name, -1e9) > 60:
                self._warned[provider.name] = now
                log.warning("no credential for provider %s: %s is unset, empty or unusable", provider.name, where)
            return ()
        return credential_headers(provider, key)

    def sent(self, named: Iterable[Provider]) -> tuple[str, ...]:
        """The keys :meth:`headers` gives these providers (a stand-in's own placeholder aside): the
        values a :class:`Scrub` looks for in their answers."""
        keys = []
        for provider in named:
            source = provider.credential
            if source is None or (not self._stand_ins_get_keys and self.stood_in(provider.name)):
                continue
            key = self.key(source)
            if key is not None and len(key) >= MIN_SCRUBBED and key not in keys:
                keys.append(key)
        return tuple(keys)

    def status(self, providers: Mapping[str, Provider]) -> dict[str, bool]:
        """Which providers can be served: a usable credential or a stand-in (for /readyz); never a value."""
        return {name: (p.credential is None or self.stood_in(name) or self.key(p.credential) is not None)
                for name, p in providers.items()}


def reached_for_real(provider: Provider, store: CredentialStore) -> bool:
    """Whether ``tollway up`` reaches ``provider`` at its endpoint rather than the fake provider.

    Only when its key is usable (or it needs none) and either it is an ``openai`` or ``anthropic``
    provider, or its ``endpoint`` is on this machine or an IP address (a model you run yourself, a
    local proxy). Anything else (no key, an Azure resource, a cluster-internal or remote host) is
    served by the fake provider, which gets the placeholder key, never the provider's own.
    """
    source = provider.credential
    if source is not None and store.key(source) is None:
        return False
    host = urllib.parse.urlsplit(provider.endpoint).hostname if provider.endpoint else None
    return provider.kind in ("openai", "anthropic") or _local(host)


def _local(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Scrub:
    """The provider keys one request's answer must not carry back (see the module docstring).

    :meth:`event` gives the session the answer's headers or body without them; :meth:`action` then
    makes the session's answer to that message carry the change to Envoy, which otherwise passes on
    what the provider sent (a header the session did not set, a body it did not replace).
    """

    __slots__ = ("_fix", "_keys", "_raw")

    def __init__(self, keys: tuple[str, ...]) -> None:
        # Each key as sent, and as a JSON encoder may write it back (``/`` escaped as ``\/``).
        keys = (*keys, *(key.replace("/", "\\/") for key in keys if "/" in key))
        self._keys = keys
        self._raw = tuple(key.encode() for key in keys)
        self._fix: tuple[tuple[str, str], ...] | bytes | None = None  # the last event's change, for its answer

    def event(self, event: Event) -> Event:
        """``event`` (a response's headers or body chunk) without the keys; notes the change."""
        self._fix = None
        if type(event) is ResponseBody:
            body = event.body
            for raw in self._raw:
                # One chunk at a time: a key split across two chunks of a streamed answer is not
                # found (a buffered answer, or one the coalescer holds, is one body: found).
                if raw in body:
                    for each in self._raw:
                        body = body.replace(each, MARKER.encode())
                    self._fix = body
                    return ResponseBody(body, event.end_of_stream, event.at)
            return event
        if type(event) is ResponseHeaders:
            changed = []
            for name, header in event.headers.items():
                for key in self._keys:
                    if key in header:
                        for other in self._keys:
                            header = header.replace(other, MARKER)
                        changed.append((name, header))
                        break
            if changed:
                self._fix = tuple(changed)
                return dataclasses.replace(event, headers={**event.headers, **dict(changed)})
        return event

    def action(self, action: Action, length: bool) -> Action:
        """The session's answer to the last event, carrying its change to Envoy. ``length``: the body
        is the whole answer (buffered), whose ``content-length`` follows a new body. A body the
        session wrote itself is checked too: it may hold what the session read where this could not
        (an error it inflated from gzip, quoted in its own words)."""
        fix, self._fix = self._fix, None
        own = action.body
        if own:
            clean = own
            for raw in self._raw:
                if raw in clean:
                    clean = clean.replace(raw, MARKER.encode())
            if clean is not own:
                if isinstance(action, Respond):
                    return dataclasses.replace(action, body=clean)  # an immediate answer: Envoy sizes it
                sized = tuple((n, str(len(clean)) if n == "content-length" else v) for n, v in action.set_headers)
                action = dataclasses.replace(action, body=clean, set_headers=sized)
        if fix is None or type(action) is not Continue:  # (an immediate response sends nothing of the provider's)
            return action
        if isinstance(fix, bytes):
            if own is not None:  # the session's own body, made from the cleaned one
                return action
            sets = (*action.set_headers, ("content-length", str(len(fix)))) if length else action.set_headers
            return dataclasses.replace(action, body=fix, set_headers=sets)
        owned = {name for name, _ in action.set_headers} | set(action.remove_headers)
        sets = tuple((name, header) for name, header in fix if name not in owned)
        return dataclasses.replace(action, set_headers=action.set_headers + sets) if sets else action
