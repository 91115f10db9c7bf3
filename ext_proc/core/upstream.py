"""What goes to the provider: the request body and path for one target, and the chain labels.

Both filters use :func:`prepare`: the router-level session when a request has a single target
(it rewrites the request itself), and the per-attempt session (:mod:`ext_proc.core.attempt`) when
Envoy may fall back along a chain and only the attempt knows which target it is for.

The chain travels from the first filter to the attempts with the request, never in process
memory (the two streams may reach different worker processes), as Envoy dynamic metadata in the
``tollway`` namespace, which Envoy forwards to the per-attempt filter and never sends upstream
(headers would not do: Envoy keeps one attempt's header changes for the next, so an attempt
could neither remove them nor leave them for the provider to see):

``tollway.targets``  the chain, ``provider model`` pairs joined by ``", "`` (names never hold
                     spaces or commas: the policy schema forbids them in provider names, and
                     model names with them are refused by :func:`encode_chain`)
``tollway.path``     the client's path (an earlier attempt may have rewritten ``:path``)
``tollway.alias``, ``tollway.team``  the alias and team whose plan the chain came from, so the
                     attempt finds the target's own settings (output limit, price)

and the ``x-envoy-max-retries`` header (one retry per further target), which Envoy consumes.
Envoy tells each attempt which target it is for through the metadata of the endpoint it picked
(``tollway.slot``: the position in the chain), and tells the router-level filter which endpoint
served and after how many attempts through its response attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ext_proc.core.errors import ClientError
from ext_proc.llm.apis import ClientAPI
from ext_proc.llm.translate import anthropic_to_openai, openai_to_anthropic
from ext_proc.llm.translate.common import TranslationError
from ext_proc.policy.compiled import Provider, Target
from ext_proc.policy.decide import needs_translation

TARGETS = "targets"  # metadata keys (namespace "tollway"); attempts read them as "tollway.<key>"
CLIENT_PATH = "path"
ALIAS = "alias"
TEAM = "team"
RETRIES_HEADER = "x-envoy-max-retries"
HOST_METADATA = "xds.upstream_host_metadata"
ATTEMPTS_ATTRIBUTE = "upstream.request_attempt_count"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often leave it out

# Envoy renders the host metadata attribute as protobuf text; slot and host are string fields.
_SLOT = re.compile(r'key: "slot"\s+value \{\s+string_value: "(\d+)"')
_HOST = re.compile(r'key: "host"\s+value \{\s+string_value: "([^"\\]+)"')
_DEFAULT_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com"}


def prepare(api: ClientAPI, payload: dict[str, Any], target: Target, path: str) -> tuple[dict[str, Any], str | None]:
    """The body to send ``target`` and its path when it differs from the client's.

    ``payload`` is the client's decoded request (changed in place when no translation is needed).
    A request the target's API cannot express is a 400 :class:`ClientError`.
    """
    kind = target.provider.kind
    model = target.upstream_model
    if not needs_translation(api, kind):
        if payload.get("model") != model and kind != "azure-openai":  # Azure: the deployment is in the path
            payload["model"] = model
        return payload, _azure_path(target, path.partition("?")[0].rstrip("/").removeprefix("/v1/"))
    try:
        if kind == "anthropic":
            body = openai_to_anthropic.request(
                payload, model, default_max_tokens=target.max_output_tokens or DEFAULT_MAX_TOKENS
            )
            return body, "/v1/messages"
        body = anthropic_to_openai.request(payload, model)
    except TranslationError as exc:
        message = f"{exc.message} (the model is served by {kind})"
        raise ClientError(400, "unsupported_for_provider", message, exc.param) from None
    return body, _azure_path(target, "chat/completions") or "/v1/chat/completions"


def _azure_path(target: Target, operation: str) -> str | None:
    provider = target.provider
    if provider.kind != "azure-openai":
        return None
    return f"/openai/deployments/{target.upstream_model}/{operation}?api-version={provider.api_version}"


def host(provider: Provider, attributes: Mapping[str, str] | None = None) -> str | None:
    """The Host header the provider expects: its endpoint's, its kind's default, else the one
    the chain cluster's endpoint was rendered with (None: unknown)."""
    if provider.host is not None:
        return provider.host
    known = _DEFAULT_HOSTS.get(provider.kind)
    if known is None and attributes is not None:
        found = _HOST.search(attributes.get(HOST_METADATA, ""))
        known = found.group(1) if found else None
    return known


def encode_chain(chain: tuple[Target, ...]) -> str:
    """The ``tollway.targets`` value for a chain."""
    for target in chain:
        if any(c in target.upstream_model for c in " ,"):
            raise ClientError(500, "bad_model_name", "A routed model name contains a space or a comma.")
    return ", ".join(f"{t.provider.name} {t.upstream_model}" for t in chain)


def decode_chain(value: str) -> list[tuple[str, str]]:
    """``(provider, model)`` pairs from a ``tollway.targets`` value (malformed parts skipped)."""
    out = []
    for part in value.split(", "):
        provider, _, model = part.strip().partition(" ")
        if provider and model:
            out.append((provider, model))
    return out


def slot(attributes: Mapping[str, str]) -> int | None:
    """The chain position of the endpoint Envoy picked (None: not a chain endpoint)."""
    text = attributes.get(HOST_METADATA)
    if not text:
        return None
    found = _SLOT.search(text)
    return int(found.group(1)) if found else None
