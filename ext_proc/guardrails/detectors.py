"""The detectors: what each finds, the pattern that proposes candidates, the check that confirms them.

A :class:`Detector` is data. Its ``patterns`` are regular expressions in the common subset of
Hyperscan's and Python's syntax (no look-around, no back-references), ASCII-only (but the email's,
whose bytes beyond ASCII are its own ``chars``), with bounded
repetition or a declared :attr:`Detector.width`, so a match is never longer than that many characters: that bound is
what a stream holds back (see :mod:`ext_proc.guardrails.stream`). A pattern only proposes
candidates; ``check`` confirms them with what a pattern cannot express:

- payment cards: 12-19 digits, one separator style, a known issuer prefix, and the Luhn checksum;
- US social security numbers: the ranges the SSA issues (no area 000, 666 or 9xx, no group 00, no
  serial 0000, not the advertising numbers) via ``python-stdnum``; nine bare digits only next to a
  context word ("SSN", "social security");
- IBANs: the country's length and format and the ISO 7064 mod-97 check (``python-stdnum``);
- IP addresses: parsed by :mod:`ipaddress` (octets up to 255, IPv6 groups and ``::`` compression);
- phone numbers: :mod:`ext_proc.guardrails.phones` (libphonenumber's plans, the layout, the
  words before);
- credentials: the issuers' own fixed prefixes (``AKIA``, ``sk-ant-api03-``, ``ghp_``, ``eyJ``
  JWT headers, PEM private key armour) make the pattern the check; secrets without one (a value
  given to a key that names a secret, a URL's password): :mod:`ext_proc.guardrails.secrets`.

Nothing here knows about requests, policies or actions: :mod:`ext_proc.guardrails.scanner` runs
detectors over text, the policy decides what a finding means.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from stdnum import iban as _iban
from stdnum import luhn as _luhn
from stdnum.us import ssn as _ssn

from . import addresses, phones, secrets

Check = Callable[[str, str], bool]  # (the candidate, the text just before it) -> confirmed
# (the text, a match's start and end) -> where in the text the value is, or None: not one
Span = Callable[[str, int, int], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value: its name (in policies and records), its placeholder label, its
    patterns, and the check confirming a candidate (None: the pattern is enough)."""

    name: str
    label: str  # the placeholder: [LABEL_1]
    kind: str  # "pii", "credential" or "custom"
    patterns: tuple[str, ...]
    check: Check | None = None
    caseless: bool = False
    until: str | None = None  # a block detector: the match runs on to this end marker (PEM armour)
    width: int = 0  # the longest match: computed from bounded patterns, given for unbounded ones
    # A match may begin before where its pattern matched (an email's local part, before the "@" its
    # pattern starts at): as far as ``left[0]`` matches the text before it read backwards (reversed),
    # at most ``left[1]`` characters, less any but letters and digits at its start. Such a detector
    # gives its ``chars``.
    left: tuple[str, int] | None = None
    chars: str = field(default="", compare=False)  # a regex class of every character a match may hold
    min_length: int = 0  # shorter matches are never candidates (Hyperscan drops them: fewer callbacks)
    # A match followed by this is no candidate (Hyperscan has no lookahead): "0-85279-752" of an
    # ISBN "0-85279-752-4". Its characters must be ones a match may hold, so that a stream holds
    # them back with the match and judges it as a whole text would.
    not_followed_by: str | None = None
    # A detector whose match is not its value (a key and its separator, then the value's first
    # character): this confirms a candidate and says where the value is, instead of ``check``. Its
    # candidates are confirmed after every other detector's, and only where no finding of theirs
    # is: a vendor's token is an OPENAI_KEY even where a key name also says "secret".
    value: Span | None = None


# -- checks -------------------------------------------------------------------------------------

_DIGITS = re.compile(r"\d")
_NOT_DIGIT = re.compile(r"\D+")


def _digits(text: str) -> str:
    return _NOT_DIGIT.sub("", text)


def _one_separator(text: str) -> bool:
    """Groups are separated the same way throughout ("4111 1111 1111 1111", not "4111-1111 1111")."""
    return len(set(_NOT_DIGIT.findall(text))) <= 1


# Issuer identification numbers of the card networks (ISO/IEC 7812 prefixes as the networks publish them).
# Visa 4; Mastercard 51-55, 2221-2720; Mir 2200-2204; Amex 34, 37; Diners 300-305, 36, 38, 39; JCB
# 3528-3589 and the older 15-digit 1800, 2131; Discover 6011, 644-649, 65; UnionPay 62, 81; Maestro
# 50, 56-69 (12 to 19 digits: ISO/IEC 7812 allows 8 to 19, issued cards have at least 12).
_CARD_PREFIX = re.compile(r"4|5[0-9]|2(?:20[0-4]|22[1-9]|2[3-9][0-9]|[3-6][0-9]{2}|7[01][0-9]|720|131)|3[0-9]|6[0-9]"
                          r"|81|1800")
# Short numbers are cards of a few networks only: 13 digits Visa's old cards, 14 Diners Club, 15
# Amex and the old JCB; Maestro's own IINs issue 12 to 19 digits. A 12- to 15-digit number of
# another prefix is an account, barcode or tracking number (an EAN-13 passes Luhn one time in ten).
_MAESTRO = re.compile(r"50(?:18|20|38)|5893|6304|6759|676[1-3]")
_SHORT_CARD = {13: re.compile(r"4"), 14: re.compile(r"3(?:0[0-5]|[689])"), 15: re.compile(r"3[47]|1800|2131")}


_BROAD_MAESTRO = re.compile(r"5[06-9]|6")  # the older published Maestro range, 50 and 56-69
_CARD_WORDS = re.compile(r"\b(?:card|cards|visa|mastercard|maestro|debit|credit|paid with|pay with|charged? to|"
                         r"amex|cc|pan)\b", re.IGNORECASE)


def check_card(text: str, before: str) -> bool:
    digits = _digits(text)
    size = len(digits)
    if not (12 <= size <= 19 and _one_separator(text) and _CARD_PREFIX.match(digits) and _luhn.is_valid(digits)):
        return False
    if _IDENTIFIER.search(before):  # "SKU 4006381333931", "tracking 6988 9138 4365"
        return False
    if size >= 16 or _MAESTRO.match(digits):
        return True
    short = _SHORT_CARD.get(size)
    if short is not None and short.match(digits):
        return True
    return _BROAD_MAESTRO.match(digits) is not None and _CARD_WORDS.search(before) is not None


# A number glued to a word before it ("INV-234-91-1873", "ORD-2025-564329", "#4471-2291") is part of
# an identifier, not an SSN or a phone number.
_GLUED = re.compile(r"(?:[A-Za-z0-9][-/_.:]|#)$")
# Words that say the number right after them is an identifier of something else.
_IDENTIFIER = re.compile(
    r"\b(?:order|invoice|inv|ref|reference|ticket|case|part|sku|isbn|ean|upc|barcode|tracking|account|acct|"
    r"routing|iban|serial|badge|mrn|policy|claim|zip|postcode|postal code|version|pin|passcode|product|item|"
    r"model|transaction|confirmation|booking|receipt)\b(?:\s*(?:number|no\.?|nr\.?|num|id|#|code))?\W{0,8}$",
    re.IGNORECASE,
)
_SSN_CONTEXT = re.compile(r"\b(?:ssn|ssns|social security|social sec|soc\.? ?sec|social|tax id|tin|taxpayer)\b",
                          re.IGNORECASE)
_SSN_LAYOUT = re.compile(r"\d{3}([ -])\d{2}\1\d{4}|\d{9}")


def _named_ssn(before: str) -> bool:
    """An SSN word is the last label before the number: "social 455046043, phone 089832783" names
    the second number a phone's."""
    words = list(_SSN_CONTEXT.finditer(before))
    return bool(words) and phones.PHONE_WORD.search(before, words[-1].end()) is None


def check_ssn(text: str, before: str) -> bool:
    # Three groups with the same separator, or none at all: not ZIP+4 ("66010-2852") or "030 123456".
    if _SSN_LAYOUT.fullmatch(text) is None or _GLUED.search(before) or _IDENTIFIER.search(before):
        return False
    if text.isdigit() and not _named_ssn(before):  # nine bare digits: only named as an SSN
        return False
    return bool(_ssn.is_valid(text.replace(" ", "-") if " " in text else text))


def check_iban(text: str, _before: str) -> bool:
    return bool(_iban.is_valid(text))


_VERSION = re.compile(r"\b(?:version|ver|v|release|build|firmware|rev|revision)\.?\s?$", re.IGNORECASE)


def check_github(text: str, _before: str) -> bool:
    """A fine-grained token has at least 60 characters after its prefix (see its pattern)."""
    return not text.startswith("github_pat_") or len(text) >= len("github_pat_") + 60


def check_tollway_key(text: str, _before: str) -> bool:
    """A Tollway key (``tw-`` and a random token: ``tollway keys create`` makes 43 URL-safe
    characters, and only keys this check finds) is long, mixes cases and digits, uses many
    characters and few words. A slug or an identifier after "tw-" is mostly words
    (``tw-Implement-Retry-Logic-For-Payment-Service-Webhooks-V2``: runs of four or more lower-case
    letters are two thirds of it; of a random token, under 0.4 but once in 700) or reuses their
    letters (``tw-Add-OAuth2-Login-Flow-For-Mobile-Clients``: 22 distinct characters; a random
    token about 31)."""
    token = text[3:]
    if len(token) < 40 or len(set(token)) < 24:
        return False
    if not (any(c.isdigit() for c in token) and any(c.isupper() for c in token) and any(c.islower() for c in token)):
        return False
    return sum(len(run) for run in _WORDS.findall(token)) < 0.4 * len(token)


_WORDS = re.compile(r"[a-z]{4,}")


def check_ipv4(text: str, before: str) -> bool:
    if _VERSION.search(before):  # "version 6.5.4.122"
        return False
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# "scheme://user:" right before: the password of a URL's user information, not an address's local part;
# "scheme://" right before: the user of a URL's user information without a password
# (postgresql://readonly@db.internal:5432), no address.
_URL_USER = re.compile(r"://(?:[^\s/@:]*:)?$")


def check_email(text: str, before: str) -> bool:
    return _URL_USER.search(before) is None and (text.isascii() or addresses.domain(text))


_HEX = re.compile(r"[0-9A-Fa-f]")


def check_ipv6(text: str, _before: str) -> bool:
    if text.count(":") < 2 or len(_HEX.findall(text)) < 4:  # not "::", "a::b" or a clock time
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# -- the built-in detectors --------------------------------------------------------------------

_B = r"\b"
# Long tokens are written with unbounded repetition (Hyperscan compiles large bounded repeats with
# start-of-match tracking into databases too big to build) and bounded by ``width`` instead.
BUILTIN: tuple[Detector, ...] = (
    # Private keys first: a key block swallows whatever else its armour encloses.
    Detector("private_key", "PRIVATE_KEY", "credential",
             (r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----",),
             until=r"-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"),
    Detector("aws_access_key", "AWS_ACCESS_KEY", "credential",
             (_B + r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z2-7]{16}" + _B,)),
    Detector("gcp_api_key", "GCP_API_KEY", "credential", (_B + r"AIza[0-9A-Za-z_-]{35}",)),
    Detector("anthropic_key", "ANTHROPIC_KEY", "credential",
             (_B + r"sk-ant-(?:api|admin|oat)[0-9][0-9]-[A-Za-z0-9_-]{32}[A-Za-z0-9_-]*",),
             width=256),
    # OpenAI keys: project, service-account and admin keys by prefix; any sk- key by the base64 of
    # "OpenAI" (T3BlbkFJ) that every OpenAI key carries.
    Detector("openai_key", "OPENAI_KEY", "credential",
             (_B + r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40}[A-Za-z0-9_-]*",
              _B + r"sk-[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]{16}[A-Za-z0-9_-]*"), width=256),
    # A fine-grained token is github_pat_ and at least 60 more characters; Hyperscan scans the
    # pattern with {60} (any repeat past about 48, with start of match and both word boundaries)
    # with a slower engine: 13 µs on 4.8 KB of prose, two thirds of every detector together,
    # against 0.6 µs with {48}. So the pattern asks for 48 and the check for the rest.
    Detector("github_token", "GITHUB_TOKEN", "credential",
             (_B + r"gh[pousr]_[A-Za-z0-9]{36}[A-Za-z0-9]*" + _B,
              _B + r"github_pat_[A-Za-z0-9_]{48}[A-Za-z0-9_]*" + _B),
             check_github, width=256),
    # Tollway's own virtual keys: one pasted into a prompt reaches the provider, a trace, a log.
    Detector("tollway_key", "TOLLWAY_KEY", "credential", (_B + r"tw-[A-Za-z0-9_-]{40}[A-Za-z0-9_-]*",),
             check_tollway_key, width=256),
    Detector("slack_token", "SLACK_TOKEN", "credential", (_B + r"xox[abposr]-[A-Za-z0-9-]{10}[A-Za-z0-9-]*",),
             width=256),
    Detector("stripe_key", "STRIPE_KEY", "credential", (_B + r"(?:sk|rk)_live_[A-Za-z0-9]{20}[A-Za-z0-9]*",),
             width=256),
    Detector("jwt", "JWT", "credential",
             (_B + r"eyJ[A-Za-z0-9_-]{8}[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]{8}[A-Za-z0-9_-]*"
              r"\.[A-Za-z0-9_-]{8}[A-Za-z0-9_-]*",),
             width=4096),
    # RFC 5321: at most 64 characters before the @ and 254 in all. The pattern starts at the "@" (a
    # pattern starting with the local part makes every letter of a text a possible start, and the
    # scan ten times slower); the local part is taken from the text before it. Beyond ASCII: the
    # local part in Latin, Greek and Cyrillic, the domain in any script (RFC 6531/6532, :mod:`.addresses`).
    Detector("email", "EMAIL", "pii", (addresses.PATTERN,), check_email, width=254,
             left=(addresses.LOCAL, addresses.LOCAL_MOST), chars=addresses.CHARS,
             not_followed_by=addresses.NOT_FOLLOWED_BY),
    Detector("credit_card", "CREDIT_CARD", "pii", (_B + r"(?:[0-9][ -]?){11,18}[0-9]" + _B,), check_card),
    Detector("iban", "IBAN", "pii", (_B + r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}" + _B,), check_iban),
    Detector("us_ssn", "US_SSN", "pii", (_B + r"[0-9]{3}[ -]?[0-9]{2}[ -]?[0-9]{4}" + _B,), check_ssn),
    Detector("ip_address", "IP_ADDRESS", "pii",
             (_B + r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}" + _B,
              r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})"),
             lambda text, before: check_ipv4(text, before) if ":" not in text else check_ipv6(text, before)),
    Detector("phone", "PHONE", "pii", phones.PATTERNS, phones.check, min_length=phones.MIN_LENGTH,
             not_followed_by=phones.NOT_FOLLOWED_BY),
    # What users paste (PASTED): a config's or a connection string's secrets.
    Detector("secret_assignment", "SECRET", "credential", (secrets.ASSIGNMENT,), caseless=True,
             width=secrets.ASSIGNMENT_WIDTH, value=secrets.value_span),
    Detector("url_password", "URL_PASSWORD", "credential", (secrets.URL_PASSWORD,), width=secrets.URL_WIDTH,
             value=secrets.url_password_span),
)
# Detectors of what users and tools send: a prompt's user, assistant and tool text. Not answers (a
# model has only what it was given), nor the application's own instructions (a system prompt may
# give the password it keeps: kept_secret's case).
PASTED = frozenset({"secret_assignment", "url_password"})

GROUPS: dict[str, tuple[str, ...]] = {
    "pii": tuple(d.name for d in BUILTIN if d.kind == "pii"),
    "credentials": tuple(d.name for d in BUILTIN if d.kind == "credential"),
}
INJECTION = "prompt_injection"  # the prompt-injection scorer, named in rules like a detector


def custom(name: str, pattern: str | None = None, words: tuple[str, ...] = (), caseless: bool = False,
           label: str | None = None, width: int = 0) -> Detector:
    """A policy's own detector: a regular expression, or a list of words and phrases (whole words,
    any case)."""
    if words:
        return Detector(name, label or default_label(name), "custom",
                        (r"(?:" + "|".join(_word(w) for w in words) + r")",), _word_start, caseless=True,
                        not_followed_by=_WORD_END)
    assert pattern is not None
    return Detector(name, label or default_label(name), "custom", (pattern,), caseless=caseless, width=width)


LABEL_MOST = 41  # the longest label a placeholder read back may have (guard.PLACEHOLDER)


def default_label(name: str) -> str:
    """A detector's label when its policy gives none: its name in capitals, letters and digits with
    ``_`` for the rest, ``CUSTOM_`` before one not starting with a letter, at most :data:`LABEL_MOST`
    characters (a placeholder any other way is never read back: pseudonymised values would not come back)."""
    label = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
    if not label[:1].isalpha():
        label = "CUSTOM_" + label if label else "CUSTOM"
    return label[:LABEL_MOST].rstrip("_")


# A word starts and ends where a word character of Unicode's (Python's ``\w``) does not touch it.
# Hyperscan's ``\b`` knows ASCII only (and no ``\b`` with Unicode properties): a word's edge that
# is an ASCII word character has it in the pattern (``\bnaïve\b``), and the check refuses a
# candidate that a word character beyond ASCII touches (``inaïve``, ``naïveté``, ``ärésumé``); an
# edge that is no word character (``C++``, ``$falcon``, ``Project X.``) needs no boundary.
_WORD = re.compile(r"\w")
_WORD_END = r"(?<=\w)\w"  # (after a match: its last character and the next are both word characters)


def _word_start(text: str, before: str) -> bool:
    return not (before and _WORD.match(text) and _WORD.match(before[-1]))


def _word(word: str) -> str:
    """A word or phrase as a pattern: literal, any run of spaces between its words; ``\\b`` on an
    edge that is an ASCII word character."""
    edge = (r"\b" if word[:1].isascii() and _WORD.match(word[:1]) else "",
            r"\b" if word[-1:].isascii() and _WORD.match(word[-1:]) else "")
    return edge[0] + r"\s{1,4}".join(re.escape(part) for part in word.split()) + edge[1]
