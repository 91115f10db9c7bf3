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
``tollway.abandoned`` written by the tries themselves: the targets of the tries Envoy abandoned at
                     the first-byte timeout (sent, no answer head yet: the provider may have
                     started, and bill, a generation), as ``tollway.targets`` is; the router-level
                     filter reads it with the answer's head (:mod:`ext_proc.core.attempt`)

and the ``x-envoy-max-retries`` header (one retry per further target), which Envoy consumes.
Envoy tells each attempt which target it is for through the metadata of the endpoint it picked
(``tollway.slot``: the position in the chain), and tells the router-level filter which endpoint
served and after how many attempts through its response attributes; the codec decodes both into
:class:`~ext_proc.core.events.Upstream`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

from ext_proc.guardrails.detectors import GROUPS
from ext_proc.guardrails.scanner import builtin
from ext_proc.llm import encodings, providers, translate
from ext_proc.llm.apis import CHAT_COMPLETIONS, COUNT_TOKENS, MESSAGES, RESPONSES, WireAPI
from ext_proc.llm.apis.anthropic import stored_files as anthropic_stored_files
from ext_proc.llm.apis.openai import stored_files
from ext_proc.llm.apis.responses import stored_objects, stored_reasoning, stored_state
from ext_proc.llm.errors import ClientError
from ext_proc.llm.translate import TranslationError, fields
from ext_proc.policy.compiled import KEY_PREFIX, Provider, Target

TARGETS = "targets"  # metadata keys (namespace "tollway"); attempts read them as "tollway.<key>"
CLIENT_PATH = "path"
ALIAS = "alias"
TEAM = "team"
POLICY = "policy"  # the version of the policy the request started with: its tries use it too
# The client's API family ("openai", "anthropic") when the path upstream may be another family's
# (a translation, a chain): Envoy's own error replies pick the client's format by it, not by the path.
CLIENT = "client"
ABANDONED = "abandoned"
RETRIES_HEADER = "x-envoy-max-retries"
# Envoy's mark on a retry (``include_is_timeout_retry_header`` on the virtual host): "true" when
# the try before it was abandoned at its timeout, "false" after an error answer or a reset.
TIMEOUT_RETRY_HEADER = "x-envoy-is-timeout-retry"
UNKNOWN_LIMIT = 4096  # the most max_tokens a translation sends where the policy gives no model limit: every
# Claude model takes 4,096 (a larger shared_state.default_output_tokens is claimed, not sent)


# A client family's own request headers (beside its key), which another family's provider must not
# get: they describe the client's API, and an SDK sends them whoever serves the request. A fallback
# chain's tries keep them: Envoy keeps one try's header changes for the next, so a try removing
# them would take them from a later try of the client's own family.
FAMILY_HEADERS = {
    "anthropic": ("anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access"),
    "openai": ("openai-organization", "openai-project", "openai-beta"),
}


def foreign(api: WireAPI, target: Target) -> tuple[str, ...]:
    """The headers of the client's ``api`` family that ``target`` must not get: those of its family
    when another family's API serves it (a translation), else none."""
    return FAMILY_HEADERS.get(api.home, ()) if served(target, api).home != api.home else ()


def counted_model(target: Target) -> str:
    """The model name ``target``'s prompt is counted for: its name at the provider; at Azure, the
    policy's public name when the deployment's own (``prod-chat``) names no model's tokenizer."""
    if target.provider.kind == "azure-openai" and encodings.known_encoding(target.upstream_model) is None:
        return target.public
    return target.upstream_model


def served(target: Target, api: WireAPI) -> WireAPI:
    """The API ``target``'s provider answers a client of ``api`` in (its first API when it cannot,
    which only a policy changed under a running request can cause)."""
    kind = providers.kind(target.provider.kind)
    return kind.serves(api) or kind.speaks[0]


def prepare(api: WireAPI, payload: dict[str, Any], target: Target, path: str) -> tuple[dict[str, Any], str | None]:
    """The body to send ``target`` and its path when it differs from the client's (behind the
    provider's endpoint path, if it has one).

    ``payload`` is the client's decoded request (changed in place when no translation is needed).
    A request the target's API cannot express is a 400 :class:`ClientError`.
    """
    body, upstream_path = _prepare(api, payload, target, path)
    rebase = target.provider.rebase
    if rebase is not None:
        sent = upstream_path if upstream_path is not None else path
        old, new = rebase
        if sent.startswith(old):
            return body, new + sent[len(old):]
    return body, upstream_path


def _prepare(api: WireAPI, payload: dict[str, Any], target: Target, path: str) -> tuple[dict[str, Any], str | None]:
    provider = target.provider
    kind = providers.kind(provider.kind)
    model = target.upstream_model
    answer_in = kind.serves(api)
    if answer_in is api:
        if api is RESPONSES:
            _stateless(payload, provider)
        elif api is CHAT_COMPLETIONS and not provider.stored_responses:
            _unshared(stored_files(payload))
        elif api in (MESSAGES, COUNT_TOKENS) and not provider.stored_responses:
            _unshared(anthropic_stored_files(payload))
        upstream_path = kind.path(api, model, provider)
        if kind.model_in_body(api) and payload.get("model") != model:
            payload["model"] = model
        if upstream_path != api.path:
            return payload, upstream_path
        # The provider's own path: the client's, unless it was matched loosely (a trailing slash,
        # which the provider would answer with a 404), its query string kept.
        client, mark, query = path.partition("?")
        return payload, (None if client == api.path else api.path + mark + query)
    pair = translate.pair(api, answer_in) if answer_in is not None else None
    if pair is None:
        raise ClientError(400, "api_mismatch", f"Model '{target.public[:200]}' cannot serve {api.name} requests.",
                          "model")
    try:
        fields.check(api.name, payload)  # what the translation reads, of the types the client's API allows
        # The model's limit where the policy gives it; else the claimed default, but never more than
        # every Claude model takes (a larger default is claimed, not sent: the API would refuse it).
        body = pair.request(payload, model, target.max_output_tokens or min(target.output_tokens, UNKNOWN_LIMIT))
    except TranslationError as exc:
        served_by = f" (the model is served by {kind.name})" if exc.code == "unsupported_for_provider" else ""
        raise ClientError(400, exc.code, exc.message + served_by, exc.param) from None
    if pair.served is CHAT_COMPLETIONS and kind.chat_output_limit != "max_tokens" and "max_tokens" in body \
            and not (provider.api_version and provider.api_version < _AZURE_COMPLETION_LIMIT):
        body[kind.chat_output_limit] = body.pop("max_tokens")
    return body, kind.path(pair.served, model, provider)


def expresses(api: WireAPI, payload: dict[str, Any], target: Target) -> bool:
    """Whether ``target``'s API can express the request: a translation refusing what it cannot say
    (``n > 1`` for Claude, audio for Anthropic: ``unsupported_for_provider``) cannot. A chain leaves
    such targets out (:func:`ext_proc.policy.decide.chain`), so a later target serves the request
    instead of the first answering a 400 Envoy does not retry. About 3 µs for a 2 KB chat request."""
    answer_in = providers.kind(target.provider.kind).serves(api)
    pair = translate.pair(api, answer_in) if answer_in is not None and answer_in is not api else None
    if pair is None:
        return True  # served natively (or not at all, which the try answers itself)
    try:
        fields.check(api.name, payload)
        pair.request(payload, target.upstream_model, target.output_tokens)  # reads, never changes, payload
    except TranslationError as exc:
        return exc.code != "unsupported_for_provider"
    return True


# Azure OpenAI takes max_completion_tokens from this api-version on (older ones refuse it).
_AZURE_COMPLETION_LIMIT = "2024-09-01"


def _stateless(payload: dict[str, Any], provider: Provider) -> None:
    """A native Responses request may not reach what the provider stores for the key every team
    shares (another team's stored responses and conversations, which no guardrail has seen), nor
    start a background run whose result Tollway does not serve (``GET /v1/responses/{id}``)."""
    if payload.get("background") not in (None, False):
        raise ClientError(400, "unsupported_parameter", "Background responses are not served through this gateway "
                          "(their results are fetched with GET /v1/responses/{id}, which it does not serve): "
                          "send the request without 'background'.", "background")
    if provider.stored_responses:
        return
    name = stored_state(payload)
    if name is not None and stored_reasoning(payload, name):
        raise ClientError(400, "unsupported_parameter", f"'{name}' is a reasoning item given by its id without its "
                          "'encrypted_content': it refers to reasoning the provider stores for the key every team "
                          "here shares. Send the request with \"store\": false and \"include\": "
                          "[\"reasoning.encrypted_content\"], and give the reasoning items back as they come "
                          "(with their encrypted_content), or leave them out.", name)
    if name is not None:
        raise ClientError(400, "unsupported_parameter", f"'{name}' refers to what the provider stores for the key "
                          f"every team here shares: send the whole conversation in 'input' instead (the policy may "
                          f"allow it for a provider whose key serves one team: stored_responses).", name)
    _unshared(stored_objects(payload))


def _unshared(name: str | None) -> None:
    """Refuse a request naming, at ``name``, an object the provider stores for the key every team
    shares (a file, a vector store, a container, a skill, an MCP tunnel: anyone's who used that key)."""
    if name is not None:
        raise ClientError(400, "unsupported_parameter", f"'{name}' refers to what the provider stores for the key "
                          f"every team here shares (files, vector stores, containers, skills, MCP tunnels and audio "
                          f"answers any team made with it): send the content itself instead (a file as file_data "
                          f"or a data URL, a skill inline, an MCP server by its server_url, an audio answer's "
                          f"transcript as the message's content) (the policy may "
                          f"allow it for a provider whose key serves one team: stored_responses).", name)


def host(provider: Provider, rendered: str | None = None) -> str | None:
    """The Host header the provider expects: its endpoint's, its kind's default, else the one
    the chain cluster's endpoint was rendered with (``rendered``; None: unknown)."""
    if provider.host is not None:
        return provider.host
    return providers.kind(provider.kind).host or rendered


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


_SHORTEST_KEY = 20  # characters: the shortest credential the built-in detectors know (AKIA + 16)
# Query parameters that carry a credential (compared in lower case, "-" as "_"). A key in a URL
# reaches the provider's and every proxy's access logs: such a parameter never goes upstream, nor
# does any holding a Tollway key or a key the secrets detector knows anywhere in its decoded name
# or value; none is ever read as the caller's key (that is the Authorization and x-api-key headers' job).
QUERY_CREDENTIALS = frozenset({"key", "api_key", "apikey", "x_api_key", "api_token", "access_token", "auth_token",
                               "token", "authorization", "x_goog_api_key"})
# A Tollway key anywhere in a parameter's decoded text: the prefix, not inside a word, and a key character.
_TOLLWAY_KEY = re.compile(r"(?<![A-Za-z0-9])" + re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]")
# Where a parameter ends: "&", and what a server may read as one too (";", a "?" after the first).
_QUERY_SEPARATORS = re.compile(r"([&;?])")
_DECODINGS = 3  # a value percent-encoded twice or three times is still read (a provider may decode it again)


def without_credentials(path: str) -> str:
    """``path`` without the query parameters that carry a credential (``path`` itself when none
    does); the others are kept as the client wrote them (Azure's ``api-version``, ``beta=true``,
    ``limit``, ``after``), each with the separator before it."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    pieces = _QUERY_SEPARATORS.split(query)  # part, separator, part, ...
    parts = pieces[0::2]
    carrying = [_carries_credential(part) for part in parts]
    if not any(carrying):
        return path
    kept = [(pieces[2 * index - 1] if index else "", part) for index, part in enumerate(parts) if not carrying[index]]
    return f"{base}?{kept[0][1]}{''.join(sep + part for sep, part in kept[1:])}" if kept else base


def _decoded(text: str) -> str:
    for _ in range(_DECODINGS):
        if "%" not in text and "+" not in text:
            break
        text = unquote_plus(text)
    return text


def _carries_credential(part: str) -> bool:
    """Whether a query parameter carries a credential: by its name, or a key anywhere in its
    decoded text (a parameter without ``=`` is a value)."""
    name, equals, value = part.partition("=")
    if equals and _decoded(name).strip().lower().replace("-", "_") in QUERY_CREDENTIALS:
        return True
    text = _decoded(part)
    if _TOLLWAY_KEY.search(text) is not None:
        return True
    value = _decoded(value) if equals else text
    return len(value) >= _SHORTEST_KEY and bool(builtin().find(value, GROUPS["credentials"]))
