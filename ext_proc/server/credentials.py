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
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

from ext_proc.llm import providers
from ext_proc.policy.compiled import CredentialSource, Provider

log = logging.getLogger("tollway.credentials")

Headers = tuple[tuple[str, str], ...]
STAND_IN_KEY = "tollway-stand-in-key"  # not a secret: the key a stand-in provider receives


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
    ) -> None:
        self._stand_ins = stand_ins
        self._stand_ins_get_keys = stand_ins_get_keys
        self._environ = environ
        self._clock = clock
        self._recheck = recheck
        self._files: dict[str, tuple[float, tuple[int, int, int] | None, str | None]] = {}
        self._warned: dict[str, float] = {}

    def key(self, source: CredentialSource) -> str | None:
        if source.env is not None:
            value = self._environ.get(source.env, "").strip()
            return value or None
        assert source.file is not None
        return self._file(source.file)

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
                with open(path, encoding="utf-8") as handle:
                    value = handle.read().strip() or None
            except OSError:
                value = None
        self._files[path] = (now, signature, value)
        return value

    def headers(self, provider: Provider) -> Headers:
        """The credential headers for ``provider``; empty (and a rate-limited warning) when missing."""
        source = provider.credential
        if source is None:
            return ()
        stood_in = provider.name in self._stand_ins
        key = self.key(source) if self._stand_ins_get_keys or not stood_in else None
        if key is None and stood_in:
            key = STAND_IN_KEY
        if key is None:
            where = f"environment variable {source.env}" if source.env else f"file {source.file}"
            now = self._clock()
            if now - self._warned.get(provider.name, -1e9) > 60:
                self._warned[provider.name] = now
                log.warning("no credential for provider %s: %s is unset or empty", provider.name, where)
            return ()
        return credential_headers(provider, key)

    def status(self, providers: Mapping[str, Provider]) -> dict[str, bool]:
        """Which providers can be served: a usable credential or a stand-in (for /readyz); never a value."""
        return {name: (p.credential is None or name in self._stand_ins or self.key(p.credential) is not None)
                for name, p in providers.items()}
