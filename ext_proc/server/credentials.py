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

A provider may send the key back, or a piece of it: an error quoting the ``Authorization`` header it
got, a debugging header reflecting it (self-hosted servers and proxies do), an error ``code`` or an
answer's ``model`` made of the key's first characters. :class:`Scrub` takes the keys of each
provider a request may have been sent to out of the answer's header values and bodies before the
session (and so the client, the record, the span, the metrics and the logs) sees them, replacing
them with :data:`MARKER`. Every answer is checked with one ``in`` per key (its first
:data:`FRAGMENT` characters in each header value and a body's first :data:`HEAD` bytes, the whole
key in the rest), as cheap as the exact key's check was; an error answer (status 400 or more), and
an answer a check found something in, is read whole: every run of :data:`FRAGMENT` characters of a
key, JSON escapes read (:func:`_clean`). The core sees only the marker: it takes no code or model
holding it (``ext_proc.llm.apis.base.key_shaped``). What it cannot see: a key split across two
chunks of a streamed answer, a piece of a key other than its start in a successful answer, and a
compressed body (Tollway asks providers for identity encoding).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping

from ext_proc.core.actions import Action, Continue, Respond
from ext_proc.core.events import Event, ResponseBody, ResponseHeaders
from ext_proc.llm import providers
from ext_proc.llm.apis.base import KEY_MARKER
from ext_proc.policy.compiled import CredentialSource, Provider

log = logging.getLogger("tollway.credentials")

Headers = tuple[tuple[str, str], ...]
STAND_IN_KEY = "tollway-stand-in-key"  # not a secret: the key a stand-in provider receives
MARKER = KEY_MARKER  # what replaces a provider's key (or a long piece of it) its answer sent back
MIN_SCRUBBED = 8  # characters: a shorter "key" is not looked for in answers (it would mangle them)
FRAGMENT = 12  # characters: a run of a key this long (a longer key's) is taken out of answers too
# An issuer's prefix, the same in every key it gives (``sk-``, ``sk-proj-``, ``sk-ant-api03-``,
# ``sk-or-v1-``, ``gsk_``): no secret, and an answer may well name it (a model explaining how to set
# a key up); a piece of a key counts from where its secret part begins (:func:`secret_start`).
_ISSUER = re.compile(r"(?:[A-Za-z0-9]{1,8}[-_]){1,4}")
HEAD = 1024  # bytes: a successful answer's body is checked for a key's first characters this far


def open_to_all(path: str, mode: int) -> bool:
    """Whether a secret's file at ``path`` (of ``mode``) is readable by every user of the machine:
    not a file of a Kubernetes Secret volume (its directory holds the kubelet's ``..data``), whose
    default 0644 only the containers mounting the volume see."""
    return bool(mode & 0o004) and not os.path.lexists(os.path.join(os.path.dirname(path), "..data"))


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
        self._loose: set[str] = set()  # the key files every user can read, warned of (once each)

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
            if path not in self._loose and open_to_all(path, st.st_mode):
                self._loose.add(path)
                log.warning("the provider key file %s is readable by every user (mode %o): give it mode 0600 "
                            "or 0400", path, st.st_mode & 0o777)
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

    __slots__ = ("_error", "_fix", "_keys", "_probes", "_raw", "_whole")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._probes, self._raw, self._whole = _needles(keys)
        self._error = False  # the answer's status is 400 or more: each of its headers and bodies is read whole
        self._fix: tuple[tuple[str, str], ...] | bytes | None = None  # the last event's change, for its answer

    def _body(self, body: bytes) -> bytes | None:
        """``body`` without the keys, or ``None`` when it holds none."""
        if not self._error and not self._holds(body):
            return None
        # Keys are ASCII: a body read as Latin-1 keeps its bytes, each a character.
        clean = _clean(body.decode("latin-1"), self._keys)
        return None if clean is None else clean.encode("latin-1")

    def _holds(self, body: bytes) -> bool:
        """Whether a successful answer's ``body`` may hold a key (see :meth:`__init__`): the cost on
        every answer, bounded whatever its size (a short needle is slower to find than a whole key)."""
        for probe in self._raw:
            if body.find(probe, 0, HEAD) != -1:
                return True
        if len(body) > HEAD:
            for whole in self._whole:
                if whole in body:
                    return True
        return False

    def event(self, event: Event) -> Event:
        """``event`` (a response's headers or body chunk) without the keys; notes the change."""
        self._fix = None
        if type(event) is ResponseBody:
            # One chunk at a time: a key split across two chunks of a streamed answer is not found
            # (a buffered answer, or one the coalescer holds, is one body: found).
            body = self._body(event.body)
            if body is None:
                return event
            self._fix = body
            return ResponseBody(body, event.end_of_stream, event.at)
        if type(event) is ResponseHeaders:
            status = event.headers.get(":status", "")
            self._error = len(status) == 3 and status >= "400"
            changed = []
            headers = event.headers
            if self._error and _clean("\n".join(headers.values()), self._keys) is None:
                headers = {}  # an error's headers, read at once: none holds a piece of a key
            for name, header in headers.items():
                for probe in self._probes:
                    if self._error or probe in header:
                        clean = _clean(header, self._keys)
                        if clean is not None:
                            changed.append((name, clean))
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
            clean = self._body(own)
            if clean is not None:
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


@functools.lru_cache(maxsize=64)
def _needles(keys: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[bytes, ...], tuple[bytes, ...]]:
    """What an answer is checked for, one ``in`` per key and form: each key as sent and as a JSON
    encoder may write it back (``/`` escaped as ``\\/``), whole in a body; its first
    :data:`FRAGMENT` characters in each header value and in a body's first :data:`HEAD` bytes (a
    short answer, most stream chunks, the head of a long answer, where its ``model`` is). Only an
    answer that holds one, and an error answer, is read further (:func:`_clean`). Kept for the
    keys' sets last used (a request's Scrub is made at its answer, on the hot path)."""
    forms = (*keys, *(key.replace("/", "\\/") for key in keys if "/" in key))
    probes = tuple(dict.fromkeys(form[secret_start(form):][:FRAGMENT] for form in forms))
    # (whole past the head: a key no longer than its probe too, which the head's check alone would miss there)
    return probes, tuple(probe.encode() for probe in probes), tuple(form.encode() for form in forms)


_GRAM = 6  # characters: the pieces of a key looked for in an error, one every 7 (a run of 12 holds one)


# A JSON escape (``\\`` and ``\"`` included, so that what follows an escaped backslash is not
# taken for an escape): ``\uXXXX`` of a printable ASCII character and ``\/`` are read as the
# character, so that a key written so is found.
_ESCAPE = re.compile(r"\\(?:u00([2-7][0-9A-Fa-f])|(/)|.)", re.DOTALL)


def secret_start(key: str) -> int:
    """Where ``key``'s secret part begins: after its issuer's prefix (:data:`_ISSUER`, within its
    first 16 characters), when FRAGMENT characters or more follow it; else 0."""
    found = _ISSUER.match(key)
    start = found.end() if found is not None and found.end() <= 16 else 0
    return start if len(key) - start >= FRAGMENT else 0


def _clean(text: str, keys: tuple[str, ...]) -> str | None:
    """``text`` with every run of :data:`FRAGMENT` or more characters of a key (a whole key shorter
    than that) replaced by :data:`MARKER`, JSON escapes read as their characters; ``None`` when it
    holds none. The work of an error answer, and of one holding a key's first characters: each
    key is looked for at each of its offsets."""
    if "\\" in text:
        alphabet = frozenset("".join(keys)) - {'"', "\\"}

        def unescape(match: re.Match[str]) -> str:
            if match[2]:
                return "/"
            if match[1]:
                char = chr(int(match[1], 16))
                if char in alphabet:
                    return char
            return match[0]

        text = _ESCAPE.sub(unescape, text)
    spans = []
    for key in keys:
        secret = secret_start(key)
        if len(key) < FRAGMENT:
            grams: Iterable[int] = (0,)
            size = len(key)
        else:  # a run of FRAGMENT characters holds one of these, whole: each is looked for, each find checked
            grams, size = range(secret, len(key) - _GRAM + 1, FRAGMENT - _GRAM + 1), _GRAM
        for offset in grams:
            gram = key[offset:offset + size]
            at = text.find(gram)
            while at != -1:
                start, end = at, at + size  # the run, grown both ways while it goes on as the key does
                while start > 0 and offset - (at - start) > 0 and text[start - 1] == key[offset - (at - start) - 1]:
                    start -= 1
                while end < len(text) and offset + (end - at) < len(key) and text[end] == key[offset + (end - at)]:
                    end += 1
                # (the run's secret characters: an issuer's prefix alone, or with a few more, is no piece)
                if offset + (end - at) - max(offset - (at - start), secret) >= min(FRAGMENT, len(key)):
                    spans.append((start, end))
                    at = text.find(gram, end)
                else:
                    at = text.find(gram, at + 1)
    if not spans:
        return None
    spans.sort()
    out, last = [], 0
    for start, end in spans:
        if start >= last:
            out.append(text[last:start])
            out.append(MARKER)
            last = end
        elif end > last:
            last = end
    out.append(text[last:])
    return "".join(out)
