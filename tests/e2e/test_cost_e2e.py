"""Provider answers that change the price (a served tier, fast mode, cache writes, web searches),
replayed through the gateway: the record's cost is genai-prices' own for the same answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml

from ext_proc.stack import Stack
from tests.e2e.conftest import Gateway
from tests.unit.test_accounting import ANSWERS, genai_micros, stream

pytestmark = pytest.mark.e2e

# The unit test's answers, each as the provider gives it whole and streamed.
CASES = {f"{name}-{how}": (kind, flavor, answer, how == "stream")
         for name, kind, flavor, answer in ANSWERS for how in ("json", "stream")}
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "default": "/v1/messages"}


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("cost")
    for name, (_kind, flavor, answer, streamed) in CASES.items():
        host = "api.anthropic.com" if flavor == "default" else "api.openai.com"
        body = stream(flavor, answer).decode() if streamed else orjson.dumps(answer).decode()
        kind = "text/event-stream" if streamed else "application/json"
        (work / f"{name}.yaml").write_text(yaml.safe_dump({"version": 2, "interactions": [{"id": 0, "request": {
            "url": f"https://{host}{PATHS[flavor]}", "method": "POST", "body": "{}", "headers": {}},
            "response": {"code": 200, "headers": {"Content-Type": [kind]}, "body": body}}]}))
    with Stack(work / "stack", workers=1, mock_args=("--cassettes", str(work))) as stack:
        yield Gateway(stack)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_recorded_cost_is_genai_prices_own(priced: Gateway, case: str) -> None:
    kind, flavor, answer, streamed = CASES[case]
    request: dict[str, Any] = {"model": answer["model"], "stream": streamed}
    if flavor == "default":
        request.update(max_tokens=100, messages=[{"role": "user", "content": "hi"}])
        headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
    else:
        request.update(input="hi") if flavor == "responses" else request.update(
            messages=[{"role": "user", "content": "hi"}])
        headers = {"authorization": "Bearer sk-test"}
    response = httpx.post(priced.base_url + PATHS[flavor], json=request, timeout=30,
                          headers={**headers, "x-mock-cassette": case})
    assert response.status_code == 200, response.text
    record = priced.record(response.headers.get("x-tollway-request-id"))
    assert record["stream"] is streamed and not record["output_estimated"]
    assert record["cost_usd_micros"] == genai_micros(kind, flavor, answer)
    said = {**answer, **answer["usage"]}
    assert record["service_tier"] == said.get("service_tier")
