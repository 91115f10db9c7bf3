"""Secrets no issuer's prefix marks: a value given to a key that names a secret, a URL's password.

Vendor tokens carry their issuer's prefix (``AKIA``, ``ghp_``, ``sk-proj-``) and their detectors
need nothing else. What a user pastes into a prompt holds more: a ``.env`` file, a YAML or JSON
config, a connection string, a sentence ("my wifi password is Pa55word!"). There the key says
what the value is, and only the value is the secret. Two detectors, both on prompts only (what
leaves with a user's paste; a model's answer has only what it was given):

- ``secret_assignment``: a key whose words name a secret (``password``, ``passwd``, ``pwd``,
  ``passphrase``, ``secret``, ``token``, ``api_key``, ``access_key``, ``private_key``,
  ``auth_key``, ``credentials``; as a whole word of the key: ``DB_PASSWORD``, ``apiKey``,
  ``AWS_SECRET_ACCESS_KEY``, not ``secretary``, ``max_tokens`` or ``passwordless``, nor a key
  about the secret rather than holding it: ``token_type``, ``password_reset_url``,
  ``secret_name``), then ``=``, ``:``, ``=>`` or "is", then the value. A quoted value counts
  unless it is a placeholder (``<password>``, ``${DB_PASS}``, ``{{ token }}``, ``your-api-key``,
  ``changeme``, ``****``) or a sentence; an unquoted one must look like a secret, not like code
  or a word: digits or symbols in it, or 16 characters of both cases (``hunter2``, ``S3cr3t!``,
  ``wJalrXUtnFEMI/K7MDENG...``; not ``request.form[``, ``os.getenv(``, ``str``, ``strong``).
- ``url_password``: the password of a URL's user information (RFC 3986: ``scheme://user:
  password@host``), as connection strings carry it (``postgres://app:S3cret@db:5432/app``), unless a
  placeholder (``user:password@``, ``:<pass>@``).

The finding is the value alone (``DB_PASSWORD=[SECRET_1]``), so the model still reads the
config's shape. Where a vendor's detector also knows the value (``OPENAI_API_KEY=sk-proj-...``)
its finding wins: the scanner confirms these two after the others, and only where no other
finding is.

Why not ``detect-secrets`` (Yelp's scanner, the usual library): it is built to scan files in a
repository with a baseline and filters; line by line on a 1.8 KB prompt it took 5.1 ms on this
machine (the whole guardrail budget of a request is 150 µs) and reported every word of the prose as
a "high entropy string". These patterns run in the scanner's one Hyperscan pass; Python reads a
candidate only where a key word and its separator are.
"""

from __future__ import annotations

import re

# A key word (Hyperscan finds it, caseless; the check reads the whole key around it).
KEY_WORDS = (r"passw(?:or)?d|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
             r"auth[_-]?key|credentials?")
# The rest of the key, a closing quote, the separator ("=", ":", ":=", "=>", "is").
_KEY_REST = r"[A-Za-z0-9_.-]*"
_SEPARATOR = r"[\"']?(?:[ \t]*(?::=|=>|[:=])|[ \t]+(?:is|was)[ \t]*:?)[ \t]*"
# An unquoted value's characters: printable ASCII but quotes, backticks and angle brackets
# (Hyperscan reads bytes: a match must not end inside a character).
_UNQUOTED = r"[!#-&(-;=?-_a-~]"
# The pattern ends at the value's first character or its quote (one report per key, not one per
# character of the value); the value is read from there: quoted, to its closing quote on the same
# line, or unquoted.
ASSIGNMENT = r"(?:" + KEY_WORDS + r")" + _KEY_REST + _SEPARATOR + r"(?:[\"'`]|" + _UNQUOTED + r")"
# A quoted value may hold its quote escaped (JSON's ``"Ab\"c9!"``, a shell's ``'it\'s'``): an escape is
# read as one character, so the value ends at its real closing quote, not inside it.
# An unquoted value goes on through characters past ASCII but spaces (``P\u00e4sswort2024!``,
# read here in Python, not by Hyperscan: its first character is the pattern's).
_VALUE = re.compile(r"\"(?:[^\"\\\n]|\\.){1,200}\"|'(?:[^'\\\n]|\\.){1,200}'|`[^`\n]{1,200}`|"
                    + _UNQUOTED + r"(?:" + _UNQUOTED + r"|[^\x00-\x7f\s]){0,199}")
ASSIGNMENT_WIDTH = 256
# scheme://user:password@ — the pattern starts at "://" (the scheme is not needed).
URL_PASSWORD = r"://[^\s:/@?#\"'<>]*:[^\s/@?#\"'<>]+@"
URL_WIDTH = 200

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")  # a key's characters
_KEY = re.compile(r"(?P<key>" + _KEY_REST + r")" + _SEPARATOR, re.IGNORECASE)
# A quoted value that is a sentence, not a passphrase: "Password is required", "Enter your token".
_PROSE = re.compile(r"\b(?:is|are|be|must|should|please|enter|invalid|required|characters?|incorrect|wrong|missing|"
                    r"the|a|an|for|of|to|not|at least|here)\b", re.IGNORECASE)
_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
# A word of a key that holds a secret (a key's word ending so: "PGPASSWORD", "authToken"), and the
# words of a key about one (its kind, name, place, size, lifetime, a form's field): "token_type",
# "password_reset_url", "secret_name", "token_expires_in" name no secret.
_SECRET_WORDS = ("password", "passwd", "pwd", "passphrase", "secret", "token", "credential", "credentials", "apikey",
                 "accesskey", "privatekey", "authkey")
_KEY_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("auth", "key"), ("secret", "key")})
_ABOUT = frozenset({"type", "types", "name", "names", "id", "ids", "url", "uri", "path", "file", "dir", "endpoint",
                    "length", "len", "min", "max", "size", "count", "limit", "expiry", "expires", "expiration",
                    "expired", "ttl", "timeout", "lifetime", "age", "policy", "policies", "hint", "reset", "field",
                    "label", "placeholder", "prompt", "header", "required", "format", "pattern", "regex", "rule",
                    "rules", "strength", "validator", "version", "provider", "manager", "store", "ref", "arn",
                    "enabled", "mode", "usage", "location", "env", "var", "changed", "updated", "created",
                    "hash", "algorithm", "method", "scope", "scopes", "kind", "index", "prefix", "param", "input"})
_PLACEHOLDER = re.compile(r"^(?:[$%<\[{(*]|\.\.\.|x{3,}$|X{3,}$)|your|example|placeholder|changeme|change_me|"
                          r"redacted|dummy|sample|<|>|\$\{|\{\{|\*{3}|\.{3}", re.IGNORECASE)
_WORDS_NOT_SECRETS = frozenset({"password", "passwd", "secret", "token", "none", "null", "nil", "true", "false",
                                "undefined", "required", "optional", "string", "str", "int", "bytes", "env", "hidden",
                                "empty", "test", "here", "value", "foo", "bar", "pass", "admin", "user", "username",
                                "secretvalue", "mysecret", "mypassword", "yes", "no", "on", "off"})
_CODE = re.compile(r"[()\[\]{}]|->|^\w+(?:\.\w+)+$")  # a call, an index, an attribute
_NAME = re.compile(r"[A-Za-z_]+")  # a variable's or a constant's name, or a word
_SECRET_SHAPE = re.compile(r"[\d!#$%&*+/=?@^~-]")
_TRAILING = re.compile(r"[.,;:!?)\]}]+$")


def _parts(key: str) -> list[str]:
    """The words of a key: ``AWS_SECRET_ACCESS_KEY`` and ``awsSecretAccessKey`` alike."""
    return [part.lower() for part in _PARTS.findall(key)]


def _names_secret(key: str) -> bool:
    """Whether a key holds a secret: one of its words names one (or "api key", "access key", ...),
    and no word after that one says the key is about it instead."""
    parts = _parts(key)
    last = -1
    for i, part in enumerate(parts):
        if part.endswith(_SECRET_WORDS) or (i and (parts[i - 1], part) in _KEY_PAIRS):
            last = i
    return last >= 0 and not any(part in _ABOUT for part in parts[last + 1:])


def _random_letters(value: str) -> bool:
    """Letters as a generated token has them (16 or more, a quarter to three quarters capitals:
    ``abcDEFghiJKLmnoPQRstu``), not a name (``userPasswordFromForm``, ``API_KEY``) or a word."""
    if _NAME.fullmatch(value) is None or "_" in value or len(value) < 16:
        return False
    capitals = sum(c.isupper() for c in value) / len(value)
    return 0.25 <= capitals <= 0.75


def value_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where the secret is for a ``secret_assignment`` match ``text[start:end]`` (a key word to
    the value's first character; the key may begin before it), or None when there is none (see the
    module docstring)."""
    found = _KEY.match(text, start, end)
    if found is None:
        return None
    first = start  # the key may begin before its key word ("DB_" of "DB_PASSWORD"): at most 64 characters
    while first > 0 and start - first < 64 and text[first - 1] in _KEY_CHARS:
        first -= 1
    key = text[first:start] + found.group("key")
    if not _names_secret(key):
        return None
    whole = _VALUE.match(text, end - 1)
    if whole is None:
        return None
    begin, value = whole.start(), whole.group(0)
    quoted = value[0] in ("\"", "'", "`")
    if quoted:
        begin, value = begin + 1, value[1:-1]
        if " " in value and _PROSE.search(value):
            return None
    else:
        trimmed = _TRAILING.search(value)
        if trimmed is not None:
            value = value[:trimmed.start()]
    if len(value) < 4 or value.lower() in _WORDS_NOT_SECRETS or _PLACEHOLDER.search(value):
        return None
    if not quoted and (_CODE.search(value) or (not _SECRET_SHAPE.search(value) and not _random_letters(value))):
        return None
    if len(set(value)) == 1:
        return None
    return begin, begin + len(value)


def url_password_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where the password is for a ``url_password`` match ``text[start:end]`` (``://user:password@``),
    or None."""
    colon = text.index(":", start + 3, end)
    password = text[colon + 1:end - 1]
    if len(password) < 3 or password.lower() in _WORDS_NOT_SECRETS or password.lower() in {"pass", "pw", "pwd"} \
            or _PLACEHOLDER.search(password) or len(set(password)) == 1:
        return None
    return colon + 1, end - 1
