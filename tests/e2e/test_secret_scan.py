"""The secret scan: after a gateway has used every feature, no key is anywhere a person or a process could read.

One stack with aliases and fallback, budgets and rate limits, guardrails, translation and the
Responses API serves a scripted mix (answers, streams, refusals, a failing provider, a budget
and a rate limit reached, a blocked prompt). Then every place is read: each file in the work
directory (service, Envoy and provider logs, the request log, the rendered Envoy config and the
clusters file), the admin endpoints (`/metrics`, `/readyz`, `/v1/report`, `/v1/budgets`), Envoy's
admin (`/config_dump`, `/stats`, `/clusters`), and every body and header the clients got. Neither
a provider key, a Tollway key nor the admin token may appear in any of them; the admin endpoint
answers 401 (or bare readiness) without the token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import httpx2
import openai
import pytest

from ext_proc.policy.compiled import key_digest
from tests.e2e.conftest import Providers, one_minute

pytestmark = pytest.mark.e2e

KEY = "tw-secret-scan-key-0123456789abcdefghijklmnopqrstuvw"
OTHER = "tw-secret-scan-other-0123456789abcdefghijklmnopqrst"
BROKE = "tw-secret-scan-broke-0123456789abcdefghijklmnopqrst"
PROVIDER_KEYS = {"S_OPENAI_KEY": "sk-openai-scan-VERYSECRET-0001", "S_ANTHROPIC_KEY": "sk-ant-scan-VERYSECRET-0002"}
ADMIN_TOKEN = "tw-admin-token-scan-0123456789abcdef"
SECRETS = [KEY, OTHER, BROKE, ADMIN_TOKEN, *PROVIDER_KEYS.values()]
POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: S_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: S_ANTHROPIC_KEY}}}}
models:
  gpt-4o-mini: {{provider: openai, price: {{input: "1000", output: "1000"}}}}
  claude: {{provider: anthropic, model: claude-x, price: {{input: "1000", output: "1000"}}}}
teams:
  scan: {{keys: [{{id: scan-ci, sha256: "{key_digest(KEY)}"}}], models: ["*"]}}
  other: {{keys: [{{id: other-ci, sha256: "{key_digest(OTHER)}"}}], models: ["*"]}}
  broke: {{keys: [{{id: broke-ci, sha256: "{key_digest(BROKE)}"}}], models: ["*"]}}
routing:
  aliases:
    chat:
      targets: [{{provider: openai, model: gpt-4o-mini}}, {{provider: anthropic, model: claude-x}}]
budgets:
  broke-daily: {{team: broke, usd: "0.01", period: day, alerts: [50]}}
rate_limits:
  other-rpm: {{team: other, requests_per_minute: 3}}
guardrails:
  rules:
    - {{name: secrets, detectors: [credentials], action: block}}
    - {{name: pii, detectors: [email], action: redact}}
"""
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    work = tmp_path_factory.mktemp("secret-scan")
    token_file = work / "admin-token"
    token_file.write_text(ADMIN_TOKEN)
    token_file.chmod(0o600)
    stack = Providers.stack(work, POLICY, PROVIDER_KEYS, workers=2,
                            serve_args=("--admin-token-file", str(token_file)))
    with stack:
        yield Providers(stack, KEY)


def _mix(env: Providers) -> list[str]:
    """Every answer's headers and body, as text."""
    seen: list[str] = []

    def keep(response: httpx2.Response) -> None:
        response.read()
        seen.append(str(dict(response.headers)) + response.text)

    http = openai.DefaultHttpxClient(event_hooks={"response": [keep]}, timeout=10)  # the SDKs' own httpx2
    oai = openai.OpenAI(base_url=env.base_url + "/v1", api_key=KEY, max_retries=0, http_client=http)
    ant = anthropic.Anthropic(base_url=env.base_url, api_key=KEY, max_retries=0, http_client=http)
    other = openai.OpenAI(base_url=env.base_url + "/v1", api_key=OTHER, max_retries=0, http_client=http)
    calls = [
        lambda: oai.chat.completions.create(model="gpt-4o-mini", messages=HI),
        lambda: list(oai.chat.completions.create(model="chat", messages=HI, stream=True)),
        lambda: oai.chat.completions.create(model="chat", messages=HI, extra_headers={"x-mock-openai-status": "500"}),
        lambda: ant.messages.create(model="gpt-4o-mini", max_tokens=20, messages=HI),  # translated
        lambda: oai.responses.create(model="claude", input="hi"),
        lambda: oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "mail a@b.co"}]),
        lambda: oai.chat.completions.create(  # blocked: a provider-looking key in the prompt
            model="gpt-4o-mini", messages=[{"role": "user", "content": "sk-proj-" + "A1b2C3d4" * 6}]),
        lambda: oai.chat.completions.create(model="nope", messages=HI),  # 404
        lambda: openai.OpenAI(base_url=env.base_url + "/v1", api_key="tw-wrong-key-000000000000000000000000000",
                              max_retries=0, http_client=http).chat.completions.create(model="gpt-4o-mini",
                                                                                      messages=HI),  # 401
        *[lambda: other.chat.completions.create(model="gpt-4o-mini", messages=HI) for _ in range(5)],  # 429s
        lambda: openai.OpenAI(base_url=env.base_url + "/v1", api_key=BROKE, max_retries=0,  # its budget
                              http_client=http).chat.completions.create(model="gpt-4o-mini", messages=HI),
    ]
    one_minute()  # the "other" team's 429s come from one minute's window
    for call in calls:
        with contextlib.suppress(openai.APIError, anthropic.APIError):
            call()  # type: ignore[no-untyped-call]
    return seen


def test_no_key_anywhere_after_every_feature_was_used(env: Providers) -> None:
    answers = _mix(env)
    assert any('"budget_exceeded"' in a for a in answers) and any('"rate_limit_exceeded"' in a for a in answers)
    assert any("guardrail" in a for a in answers)
    admin = f"http://127.0.0.1:{env.stack.service_admin_port}"
    places: dict[str, str] = {f"answer {i}": text for i, text in enumerate(answers)}
    for path in ("/metrics", "/readyz", "/v1/report?by=team", "/v1/budgets"):
        places[f"admin {path}"] = httpx.get(admin + path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).text
        refused = httpx.get(admin + path)  # without the token: 401, or the bare readiness
        assert refused.status_code == 401 or refused.json() == {"ready": True}, path
        places[f"admin {path} without the token"] = refused.text
    for path in ("/config_dump", "/stats", "/clusters", "/stats/prometheus"):
        places[f"envoy {path}"] = env.stack.envoy_admin(path).text
    workdir: Path = env.stack.workdir
    for file in workdir.parent.rglob("*"):
        if file.name == "admin-token":
            continue
        if file.is_file() and not file.is_socket() and file.stat().st_size < 50 << 20:
            places[f"file {file.relative_to(workdir.parent)}"] = file.read_text(errors="replace")
    assert any(name.startswith("file ") and "requests.jsonl" in name for name in places)
    assert "tollway_requests_refused_total" in places["admin /metrics"]
    for where, text in places.items():
        for secret in SECRETS:
            if where.endswith("/mock.log") and secret in PROVIDER_KEYS.values():
                continue  # the fake provider is the provider: it is given its keys
            assert secret not in text, f"a key leaked into {where}"
        assert "VERYSECRET" not in text or where.endswith("/mock.log"), f"part of a key leaked into {where}"
