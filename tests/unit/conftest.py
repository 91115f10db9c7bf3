"""Fixtures of the unit tests that talk to a fake provider (each module defines its ``srv``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest


@pytest.fixture
def oai(srv: Any) -> Iterator[openai.OpenAI]:
    """The openai SDK pointed at the module's fake provider."""
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-test-openai", max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture
def ant(srv: Any) -> Iterator[anthropic.Anthropic]:
    """The anthropic SDK pointed at the module's fake provider."""
    client = anthropic.Anthropic(base_url=srv.url, api_key="sk-ant-test", max_retries=0, timeout=10)
    yield client
    client.close()
