"""Per-request decisions taken from the compiled policy: who is calling, and what they may reach.

Identity. A virtual key is read from ``Authorization: Bearer`` (the OpenAI SDK) or ``x-api-key``
(the Anthropic SDK). Only a key with Tollway's prefix (``tw-``) is a Tollway key: an unknown one
is refused (401). Any other value (the dummy key an SDK insists on, or a real provider key sent
by an application whose egress is intercepted) is ignored, never forwarded, and the caller is
identified as a workload instead: by the SPIFFE ID of its client certificate (mTLS), or by the
sidecar's own configured workload. No identity at all is a 401. On a mutual-TLS ext_proc channel
(a shared ``tls://`` Tollway) the stream's own verified certificate names the workload: the
message's ``connection.uri_san_peer_certificate`` attribute is only what the caller writes (any
workload of the mesh may open a stream), so one that names another workload is a 403.

Access. The requested model (a public name, a model alias or a routing alias) must exist (404, as
OpenAI answers unknown models) and the caller's team must be allowed to use it (403). Chat clients
of either SDK may reach providers of either API (the request and answer are translated); legacy
completions and embeddings only reach OpenAI-style providers (400 otherwise).

Routing. A routing alias yields a *chain*: the targets in the order Envoy tries them. Targets
that cannot serve the client's API, or whose context window is smaller than the counted prompt,
are left out before anything is sent (none left: a 400; a model named directly is refused the
same way), then those whose API cannot express the request (unless none can). Strategy
"priority" keeps the plan's order; "weighted" draws the first target by weight and keeps the
others, in priority order, as fallbacks. Envoy reaches a chain of two or more through one
cluster per chain, whose endpoints are the chain's providers at increasing priorities;
:func:`chains` lists every chain a policy can produce, so that the Envoy config can have them
all.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from typing import Any

from ext_proc.llm import apis, providers
from ext_proc.llm.apis import WireAPI
from ext_proc.llm.errors import ClientError
from ext_proc.policy.compiled import KEY_PREFIX, Alias, CompiledPolicy, Plan, Principal, Target

SPIFFE_ATTRIBUTE = "connection.uri_san_peer_certificate"
# Request headers that carry a client's credential: removed before anything goes upstream (the
# provider's key is the server's to add). Besides the providers' key headers: a proxy's credential,
# the client's cookies (a browser calling the gateway sends the gateway's), another vendor's key,
# and the OpenAI organization and project a request bills (the shared key's account is the
# platform team's to choose, not a caller's; the openai SDK sends them from OPENAI_ORG_ID and
# OPENAI_PROJECT_ID).
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization", "cookie", "x-goog-api-key",
                      "openai-organization", "openai-project")


def can_serve(api: WireAPI, kind: str) -> bool:
    """Whether a provider of ``kind`` can answer a client of ``api`` (translating if need be)."""
    return providers.kind(kind).serves(api) is not None


def needs_translation(api: WireAPI, kind: str) -> bool:
    """Whether the client's API and the one the provider answers in differ."""
    return providers.kind(kind).serves(api) is not api


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential the client sent, if any: a Tollway key from either header first (a client
    may send another bearer token beside it: the anthropic SDK with an auth token and an API key
    sends both); two different Tollway keys are a 401, never a silent choice of whom to charge."""
    bearer = None
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            bearer = value.strip()
    key = headers.get("x-api-key")
    key = key.strip() if key and key.strip() else None
    if key is not None and key.startswith(KEY_PREFIX) and bearer != key:
        if bearer is not None and bearer.startswith(KEY_PREFIX):
            raise ClientError(401, "invalid_api_key", "Two different Tollway keys were sent (Authorization and "
                                                      "x-api-key); send one.")
        return key
    return bearer or key


def identify(
    policy: CompiledPolicy, headers: Mapping[str, str], attributes: Mapping[str, str], sidecar_workload: str | None,
    *, mtls: bool = False,
) -> Principal:
    """The caller, or a 401 (403) :class:`ClientError` that names nothing secret.

    ``sidecar_workload``: the workload the channel names (the sidecar's configured one, or on a
    mutual-TLS listener the SPIFFE ID of the stream's verified client certificate). ``mtls``: the
    channel is such a listener, reached by any workload the client CA and SANs admit, so the
    message's SPIFFE attribute (which the caller writes) may only agree with the channel's
    workload: another one, or one where the certificate names none, is a 403 ``workload_mismatch``.
    Elsewhere it is Envoy's word, and wins: on the Unix socket only Envoy reaches, and on a plain
    ``tcp://`` listener (no certificate to check it against; whoever reaches it can read keys anyway).
    """
    key = presented_key(headers)
    if key is not None and key.startswith(KEY_PREFIX):
        principal = policy.authenticate(key)
        if principal is None:
            raise ClientError(401, "invalid_api_key", "The Tollway API key is not valid.")
        return principal
    claimed = attributes.get(SPIFFE_ATTRIBUTE) or None
    if mtls and claimed is not None and claimed != sidecar_workload:
        raise ClientError(403, "workload_mismatch", f"The request names a workload ({SPIFFE_ATTRIBUTE}) that is not "
                                                    "the one of this connection's client certificate, which decides.")
    for workload in (claimed, sidecar_workload):
        if workload:
            principal = policy.workload(workload)
            if principal is not None:
                return principal
    if key is not None:
        raise ClientError(401, "invalid_api_key", "This gateway needs a Tollway API key (tw-...), not a provider key.")
    if headers.get("authorization", "").strip():  # a key sent, but not as "Bearer <key>" (never echoed)
        raise ClientError(401, "invalid_api_key", "The Authorization header must be 'Bearer <your Tollway key>'.")
    raise ClientError(401, "missing_api_key", "No Tollway API key was provided and this workload is not known.")


def access(policy: CompiledPolicy, principal: Principal, model: str) -> Target | Alias:
    """What ``model`` names for this caller (a target, or a routing alias), or a 404/403 :class:`ClientError`."""
    shown = model[:200]
    alias = policy.alias(model)
    if alias is not None:
        if not policy.may_use(principal.team, alias.name):
            message = f"Team '{principal.team}' may not use model '{shown}'."
            raise ClientError(403, "model_not_allowed", message, "model")
        return alias
    target = policy.resolve(model)
    if target is None:
        message = f"The model '{shown}' does not exist or you do not have access to it."
        raise ClientError(404, "model_not_found", message, "model")
    if not policy.may_use(principal.team, target.public):
        message = f"Team '{principal.team}' may not use model '{shown}'."
        raise ClientError(403, "model_not_allowed", message, "model")
    return target


IMAGE_TOOL_MODEL = "gpt-image-1"  # the model a Responses image_generation tool calls when it names none


def tool_access(policy: CompiledPolicy, principal: Principal, api: WireAPI, payload: Mapping[str, Any]) -> None:
    """Models a request's tools call besides its own model must be ones the caller may use: a
    Responses ``image_generation`` tool calls an image model (its ``model``, else
    :data:`IMAGE_TOOL_MODEL`) with the provider's key, which the policy must list and let the team
    use (the 404/403 of :func:`access`, naming ``tools[i].model``); an alias is refused (400: the
    provider is sent the name as it is)."""
    if api is not apis.RESPONSES:
        return
    tools = payload.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, dict) or tool.get("type") != "image_generation":
            continue
        where = f"tools[{index}].model"
        model = tool.get("model", IMAGE_TOOL_MODEL)
        if not isinstance(model, str):
            raise ClientError(400, "invalid_type", f"'{where}' must be a string.", where)
        about = f"The image_generation tool calls model '{model[:200]}'"
        try:
            granted = access(policy, principal, model)
        except ClientError as exc:
            raise ClientError(exc.status, exc.code, f"{about} ({where}; {IMAGE_TOOL_MODEL} when it names none): "
                              f"{exc.message}", where) from None
        if isinstance(granted, Alias):
            raise ClientError(400, "invalid_value", f"{about}, a routing alias: name the image model itself.", where)


def target_for(policy: CompiledPolicy, principal: Principal, api: WireAPI, model: str) -> Target:
    """The target serving plain model ``model`` for this caller, or a 404/403/400 :class:`ClientError`."""
    granted = access(policy, principal, model)
    if isinstance(granted, Alias):
        raise ValueError(f"{model!r} is a routing alias: use route()")
    if not can_serve(api, granted.provider.kind):
        raise _mismatch(api, model[:200])
    return granted


def _mismatch(api: WireAPI, shown: str) -> ClientError:
    """What to use instead: an embeddings model for embeddings (no chat API makes vectors), else a chat API."""
    if api is apis.EMBEDDINGS:
        advice = "its provider makes no embeddings; use an embeddings model"
    else:
        advice = "use a chat API with it (chat completions, Messages or Responses)"
    return ClientError(400, "api_mismatch", f"Model '{shown}' cannot serve {api.name} requests: {advice}.", "model")


Draw = Callable[[], float]


def route(
    policy: CompiledPolicy,
    principal: Principal,
    api: WireAPI,
    model: str,
    prompt_tokens: int | None,
    draw: Draw = random.random,
) -> tuple[Target, ...]:
    """The targets to try for this request, in order (one for a plain model), or a ClientError."""
    return plan(principal, api, access(policy, principal, model), model, prompt_tokens, draw)


def plan(principal: Principal, api: WireAPI, granted: Target | Alias, model: str, prompt_tokens: int | None,
         draw: Draw = random.random, expresses: Callable[[Target], bool] | None = None,
         exact: bool = True) -> tuple[Target, ...]:
    """The targets to try for what :func:`access` granted, in order, or a 400 :class:`ClientError`.
    ``expresses``: whether a target's API can express the request (the others are left out of a
    chain, before a weighted draw, unless none can). ``exact``: whether ``prompt_tokens`` is an exact
    count; a model named directly refuses only a prompt counted exactly as too long (an estimate,
    such as a PDF's pages, may be far off, and there is no other target to go to: the provider
    decides), while a chain skips targets on an estimate too."""
    shown = model[:200]
    if isinstance(granted, Alias):
        return chain(granted.plan_for(principal.team), api, prompt_tokens, shown, draw, expresses)
    if not can_serve(api, granted.provider.kind):
        raise _mismatch(api, shown)
    if exact and not _fits(granted, prompt_tokens):
        raise _too_long(api, prompt_tokens, f"model '{shown}' can take (its context window is "
                                            f"{granted.context_window:,} tokens)")
    return (granted,)


def chain(plan: Plan, api: WireAPI, prompt_tokens: int | None, shown: str, draw: Draw = random.random,
          expresses: Callable[[Target], bool] | None = None) -> tuple[Target, ...]:
    """The order to try ``plan``'s targets in for one request (see the module docstring)."""
    usable = [i for i, t in enumerate(plan.targets) if can_serve(api, t.provider.kind)]
    if not usable:
        raise _mismatch(api, shown)
    fits = [i for i in usable if _fits(plan.targets[i], prompt_tokens)]
    if not fits:
        largest = max((plan.targets[i].context_window or 0) for i in usable)
        raise _too_long(api, prompt_tokens, f"any model behind '{shown}' can take (the largest context window is "
                                            f"{largest:,} tokens)")
    if expresses is not None and len(fits) > 1:
        able = [i for i in fits if expresses(plan.targets[i])]
        fits = able or fits  # none can: the first says why
    drawable = _drawable(plan, fits)
    if drawable:
        total = sum(plan.weights[i] for i in drawable)
        point = draw() * total
        for i in drawable:
            point -= plan.weights[i]
            if point < 0:
                fits.remove(i)
                fits.insert(0, i)
                break
    return tuple(plan.targets[i] for i in fits)


def _too_long(api: WireAPI, prompt_tokens: int | None, than: str) -> ClientError:
    """The 400 for a counted prompt larger than ``than`` (what could have taken it) can take."""
    return ClientError(400, "context_length_exceeded", f"The prompt has about {prompt_tokens:,} tokens, more than "
                       f"{than}.", _PROMPT_FIELD.get(api.name, "messages"))


# The field that holds a request's prompt, named by a context_length_exceeded refusal.
_PROMPT_FIELD = {"openai.responses": "input", "openai.completions": "prompt", "openai.embeddings": "input"}


def _drawable(plan: Plan, fits: list[int]) -> list[int]:
    """The targets a weighted plan may draw first among ``fits`` (none: keep priority order)."""
    if plan.strategy != "weighted" or len(fits) < 2:
        return []
    return [i for i in fits if plan.weights[i] > 0]


def _fits(target: Target, prompt_tokens: int | None) -> bool:
    return prompt_tokens is None or not target.context_window or target.context_window >= prompt_tokens


def cluster_name(chain: tuple[Target, ...]) -> str:
    """The Envoy cluster for a chain: the provider's own for one target, else ``a+b+...``."""
    return "+".join(target.provider.cluster for target in chain)


def chains(policy: CompiledPolicy) -> frozenset[tuple[Target, ...]]:
    """Every chain of two or more targets :func:`route` can produce under ``policy``.

    For each alias plan, each client API family, each set of targets a prompt size leaves (every
    target; those with a window above each known window), for weighted plans each target that
    can be drawn first, and each set of translations a request may be unable to go through.
    Deduplicated by Envoy cluster name, which is what Envoy needs.
    """
    out: dict[str, tuple[Target, ...]] = {}
    for alias in policy.aliases.values():
        for plan in (alias.plan, *alias.teams.values()):
            sizes = [None, *sorted({t.context_window + 1 for t in plan.targets if t.context_window})]
            for api in apis.APIS:
                for size in sizes:
                    usable = [i for i, t in enumerate(plan.targets) if can_serve(api, t.provider.kind)]
                    fits = [i for i in usable if _fits(plan.targets[i], size)]
                    for first in _drawable(plan, fits) or fits[:1]:
                        order = tuple(plan.targets[i] for i in (first, *(i for i in fits if i != first)))
                        for found in _translatable_left_out(api, order):
                            if len(found) > 1:
                                out.setdefault(cluster_name(found), found)
    return frozenset(out.values())


def _translatable_left_out(api: WireAPI, order: tuple[Target, ...]) -> list[tuple[Target, ...]]:
    """``order``, and ``order`` without the targets of each set of translations: a request one
    translation cannot express leaves out every target served through it
    (:func:`ext_proc.core.upstream.expresses`)."""
    served = [providers.kind(target.provider.kind).serves(api) for target in order]
    names = [answer.name if answer is not None and answer is not api else "" for answer in served]
    translated = sorted(set(names) - {""})
    out = []
    for size in range(len(translated) + 1):
        for dropped in itertools.combinations(translated, size):
            kept = tuple(target for target, name in zip(order, names, strict=True) if name not in dropped)
            if kept:
                out.append(kept)
    return out
