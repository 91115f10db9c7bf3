"""Secrets without an issuer's prefix: a value given to a key that names a secret, a URL's password.

The finding is the value alone; placeholders, code and words are not secrets; a vendor's detector
wins where it knows the value; the application's own instructions and the answers are not
searched (a system prompt may give the password it keeps).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.guardrails.detectors import GROUPS, PASTED
from ext_proc.guardrails.guard import Blocked, Guard
from ext_proc.guardrails.plan import REQUEST, RESPONSE, Guardrails, Rule
from ext_proc.guardrails.scanner import builtin
from ext_proc.guardrails.texts import WALKERS
from ext_proc.policy.compile import PolicyError, compile_policy

FOUND = [
    ("DB_PASSWORD=hunter2\nDEBUG=true", "secret_assignment", "hunter2"),  # a .env file
    ('{"user": "app", "password": "S3cr3t!"}', "secret_assignment", "S3cr3t!"),  # JSON
    ('{"password": "Ab\\"c9d123!"}', "secret_assignment", 'Ab\\"c9d123!'),  # its quote escaped: read to the end
    ("database:\n  password: Tr0ub4dor&3\n  host: db", "secret_assignment", "Tr0ub4dor&3"),  # YAML
    ("AWS_SECRET_ACCESS_KEY=kK7aPq9vR2sT4uW6xY8zB1cD3eF5gH7jL9mN0pQ2", "secret_assignment",
     "kK7aPq9vR2sT4uW6xY8zB1cD3eF5gH7jL9mN0pQ2"),
    ("export STRIPE_API_KEY='pk_test_abcdefghij'", "secret_assignment", "pk_test_abcdefghij"),
    # unquoted, no digit: 16 letters or more, of both cases
    ("client_secret = abcDEFghiJKLmnoPQRstu", "secret_assignment", "abcDEFghiJKLmnoPQRstu"),
    ("PGPASSWORD=abc123 psql -h db", "secret_assignment", "abc123"),  # a key's word ending so
    ('const apiKey = "9f8e7d6c5b4a";', "secret_assignment", "9f8e7d6c5b4a"),  # camelCase
    ("my wifi password is Pa55word!", "secret_assignment", "Pa55word"),  # prose: the value, not the "!"
    ('password: "correct horse battery staple"', "secret_assignment", "correct horse battery staple"),
    ("token => 'x9-y8-z7-w6'", "secret_assignment", "x9-y8-z7-w6"),
    ("DATABASE_URL=postgres://admin:S3cr3tPass@db.internal:5432/app", "url_password", "S3cr3tPass"),
    ("redis://:s3cr3tpw@cache:6379/0", "url_password", "s3cr3tpw"),  # no user name
    ("DB_PASSWORD=Pässwort2024!x rest", "secret_assignment", "Pässwort2024!x"),  # unquoted, past ASCII
    ("password=Abc1😀xyz99 and", "secret_assignment", "Abc1😀xyz99"),
]

NOT_FOUND = [
    "the password is strong",  # a word, not a secret
    "password: str",  # a type
    "def login(password: str) -> bool:",
    "password = request.form['password']",  # code
    "token = os.getenv('TOKEN')",
    "password=user.password",
    "api_key=API_KEY",
    "password = userPasswordFromForm",  # a camelCase name, not a token
    "secret = some_secret_value",
    "max_tokens: 1024",  # not the key word itself
    "tokenizer: cl100k_base",
    "The secretary: Jane Doe",
    "passwordless: true",
    "token_type: bearer",  # keys about a secret, not holding one
    "password_min_length: 12",
    "token_expires_in: 3600",
    "secret_name: db-credentials-v2",
    "api_key: <your-api-key>",  # placeholders
    "secret: ${DB_SECRET}",
    "password: {{ vault_password }}",
    "password: ********",
    "OPENAI_KEY=your_openai_key_here",
    "password: changeme",
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's documented example
    '{"password": "Password is required"}',  # a message, not a passphrase
    "The password is 12 characters long",
    "postgres://user:password@localhost/db",  # documentation's placeholders
    "https://example.com:8080/path",
    "ssh://git@github.com:22",
]


@pytest.mark.parametrize(("text", "detector", "value"), FOUND)
def test_the_value_is_the_finding(text: str, detector: str, value: str) -> None:
    findings = builtin().find(text)
    assert [(f.detector.name, text[f.start:f.end]) for f in findings] == [(detector, value)]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_placeholders_code_and_words_are_no_secrets(text: str) -> None:
    assert [f.detector.name for f in builtin().find(text) if f.detector.name in PASTED] == []


def test_a_vendors_detector_wins_where_it_knows_the_value() -> None:
    openai_key = "sk-proj-" + "a1B2" * 12
    for text, name in ((f"export OPENAI_API_KEY={openai_key}", "openai_key"),
                       ("git clone https://bob:ghp_" + "A" * 36 + "@github.com/x/y", "github_token")):
        assert [f.detector.name for f in builtin().find(text)] == [name]
    # A URL's user information is not an e-mail address: the password is the finding.
    text = "postgres://admin:S3cr3tPass@db.internal:5432/app and mail ops@example.com"
    assert [(f.detector.name, text[f.start:f.end]) for f in builtin().find(text)] == [
        ("url_password", "S3cr3tPass"), ("email", "ops@example.com")]


def test_they_are_credentials() -> None:
    assert PASTED.issubset(GROUPS["credentials"])


def _guard(action: str = "redact", direction: str = "both") -> Guard:
    names = frozenset(GROUPS["credentials"])
    rule = Rule("secrets", names, action, frozenset({REQUEST, RESPONSE} if direction == "both" else {direction}))
    plan = Guardrails(builtin(), (rule,)).plan("app", "gpt-4o-mini")
    assert plan is not None
    return Guard(plan)


def test_users_and_tools_text_only_not_the_instructions_nor_answers() -> None:
    guard = _guard()
    assert PASTED.isdisjoint(guard.plan.response)  # a "both" rule: prompts only
    payload = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "The admin password is 'Qx7-vR2m'. Never reveal it."},
        {"role": "user", "content": "My .env has DB_PASSWORD=Qx7-vR2m, why does it fail?"},
        {"role": "tool", "tool_call_id": "c1", "content": "DATABASE_URL=mysql://root:Zz9-aa@db/app"}]}
    changed, _ = guard.prompt(WALKERS["openai.chat.completions"], payload)
    assert changed
    system, user, tool = (m["content"] for m in payload["messages"])
    assert system == "The admin password is 'Qx7-vR2m'. Never reveal it."  # the application's own
    assert user == "My .env has DB_PASSWORD=[SECRET_1], why does it fail?"
    assert tool == "DATABASE_URL=mysql://root:[URL_PASSWORD_1]@db/app"


def test_a_block_rule_refuses_the_prompt() -> None:
    with pytest.raises(Blocked):
        _guard("block").prompt(WALKERS["openai.chat.completions"], {"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "password: hunter2"}]})


def test_the_policy_check_refuses_them_on_answers_alone() -> None:
    policy = """
apiVersion: tollway/v1
providers: {openai: {kind: openai, credential: {env: OPENAI_API_KEY}}}
models: {gpt-4o-mini: {provider: openai}}
guardrails:
  rules:
    - {name: s, detectors: [secret_assignment], action: redact, direction: response}
"""
    with pytest.raises(PolicyError, match="secret_assignment finds what users paste into prompts"):
        compile_policy(policy, "policy.yaml")
    compile_policy(policy.replace("direction: response", "direction: both"), "policy.yaml")


def test_a_value_beside_other_scripts_is_read_whole_characters() -> None:
    # Hyperscan reads bytes: no match may end inside a character (a crash once, with "é" after a value);
    # an unquoted value runs on through characters past ASCII, read in Python.
    text = "password=abc123é und Ωmega, token: 'ключ-1234' then api_key=Zz9é"
    assert [(f.detector.name, text[f.start:f.end]) for f in builtin().find(text)] == [
        ("secret_assignment", "abc123é"), ("secret_assignment", "ключ-1234"), ("secret_assignment", "Zz9é")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["password", "=", ": ", "'", '"', "token", " is ", "é", "Ω", "://", "@", ":",
                                 "a1", "Zz", " ", "\n", "ключ", "_KEY", "x"]), max_size=30))
def test_any_text_scans_without_error(pieces: list[str]) -> None:
    text = "".join(pieces)
    for finding in builtin().find(text):
        assert 0 <= finding.start < finding.end <= len(text)
