"""A request's identifiers of its end user or its cache entry, as the guardrails treat them.

``user``, ``safety_identifier``, ``prompt_cache_key`` and Messages' ``metadata.user_id`` are no text
for the model, but the provider tells users (and cache routes) apart by them, and they are stable:
whatever a rule does to one it does to every request of its user. So a value a rule would change
goes out whole as a keyed digest (:func:`identifier_digest`), one per value, never a placeholder
every user's value would share; and in an id that looks opaque (a UUID, a hash) a number detector
counts only on the whole value (:func:`whole_numbers`), since such ids hold digit runs that pass
the detectors' checks.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Sequence

from .scanner import Finding

# An identifier that looks opaque (a UUID, a hash, "user_<hex>_session_<uuid>": no spaces, no @):
# its runs of digits are no phone or card number unless one is the whole value. A stable id
# matched by a number detector would have its user's every request changed or blocked.
_OPAQUE = re.compile(r"[A-Za-z0-9_.:-]+")
_NUMBERS = frozenset({"phone", "credit_card", "iban", "us_ssn", "ip_address"})


def opaque(text: str) -> bool:
    """Whether an identifier looks opaque (see :func:`whole_numbers`)."""
    return _OPAQUE.fullmatch(text) is not None


def whole_numbers(text: str, findings: Sequence[Finding]) -> Sequence[Finding]:
    """An opaque identifier's findings: a number detector's only when it is the whole value."""
    kept = [f for f in findings if f.detector.name not in _NUMBERS or (f.start == 0 and f.end == len(text))]
    return findings if len(kept) == len(findings) else kept


# The key of the identifiers' digests (Guard._identifier): TOLLWAY_IDENTIFIER_KEY (a secret every
# replica and sidecar of a deployment shares: then a user's digest is the same everywhere and across
# restarts), else drawn when this module is imported, in the workers' zygote, so every worker of one
# Tollway process gives a value the same digest and another process (a replica, a sidecar, a
# restart) draws its own. Never leaves the process: the provider cannot turn a digest back into the
# address it stands for by hashing guesses.
IDENTIFIER_KEY_ENV = "TOLLWAY_IDENTIFIER_KEY"
_IDENTIFIER_KEY = (hashlib.sha256(os.environ[IDENTIFIER_KEY_ENV].encode()).digest()
                   if os.environ.get(IDENTIFIER_KEY_ENV) else os.urandom(32))
IDENTIFIER_PREFIX = "tollway-"


def identifier_digest(value: str) -> str:
    """What the provider gets for an identifier the rules would change: ``tollway-`` and 16 hex digits
    of the value's HMAC-SHA256 under this process's key (one per value, so users stay apart)."""
    mac = hmac.new(_IDENTIFIER_KEY, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return IDENTIFIER_PREFIX + mac.hexdigest()[:16]
