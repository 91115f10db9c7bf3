"""Per-request decisions taken from the compiled policy: who is calling, and what they may reach.

Identity. A virtual key is read from ``Authorization: Bearer`` (the OpenAI SDK) or ``x-api-key``
(the Anthropic SDK). Only a key with Tollway's prefix (``tw-``) is a Tollway key: an unknown one
is refused (401). Any other value (the dummy key an SDK insists on, or a real provider key sent
by an application whose egress is intercepted) is ignored, never forwarded, and the caller is
identified as a workload instead: by the SPIFFE ID of its client certificate (mTLS), or by the
sidecar's own configured workload. No identity at all is a 401.

Access. The requested model (a public name or alias) must exist (404, as OpenAI answers unknown
models) and the caller's team must be allowed to use it (403). A model served by a provider that
speaks another API than the client's is refused with a 400 until translation exists.
"""

from __future__ import annotations

from collections.abc import Mapping

from ext_proc.core.errors import ClientError
from ext_proc.llm.apis import ClientAPI
from ext_proc.policy.compiled import KEY_PREFIX, CompiledPolicy, Principal, Target

SPIFFE_ATTRIBUTE = "connection.uri_san_peer_certificate"
# Request headers that carry a client's credential: removed before anything goes upstream.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")

_API_KINDS = {
    "openai": frozenset({"openai", "azure-openai", "openai-compatible"}),
    "anthropic": frozenset({"anthropic"}),
}


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential the client sent, if any."""
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def identify(
    policy: CompiledPolicy, headers: Mapping[str, str], attributes: Mapping[str, str], sidecar_workload: str | None
) -> Principal:
    """The caller, or a 401 :class:`ClientError` that names nothing secret."""
    key = presented_key(headers)
    if key is not None and key.startswith(KEY_PREFIX):
        principal = policy.authenticate(key)
        if principal is None:
            raise ClientError(401, "invalid_api_key", "The Tollway API key is not valid.")
        return principal
    for workload in (attributes.get(SPIFFE_ATTRIBUTE), sidecar_workload):
        if workload:
            principal = policy.workload(workload)
            if principal is not None:
                return principal
    if key is not None:
        raise ClientError(401, "invalid_api_key", "This gateway needs a Tollway API key (tw-...), not a provider key.")
    raise ClientError(401, "missing_api_key", "No Tollway API key was provided and this workload is not known.")


def target_for(policy: CompiledPolicy, principal: Principal, api: ClientAPI, model: str) -> Target:
    """The target serving ``model`` for this caller, or a 404/403/400 :class:`ClientError`."""
    target = policy.resolve(model)
    shown = model[:200]
    if target is None:
        message = f"The model '{shown}' does not exist or you do not have access to it."
        raise ClientError(404, "model_not_found", message, "model")
    if not policy.may_use(principal.team, target):
        message = f"Team '{principal.team}' may not use model '{shown}'."
        raise ClientError(403, "model_not_allowed", message, "model")
    if target.provider.kind not in _API_KINDS[api.style]:
        raise ClientError(
            400,
            "api_mismatch",
            f"Model '{shown}' is served through the {target.provider.kind} API; "
            f"call it with that API's client.",
            "model",
        )
    return target


def upstream_path(api: ClientAPI, target: Target, path: str) -> str | None:
    """The request path the provider expects, when it differs from the client's (Azure OpenAI)."""
    provider = target.provider
    if provider.kind != "azure-openai":
        return None
    operation = path.partition("?")[0].rstrip("/").removeprefix("/v1/")
    return f"/openai/deployments/{target.upstream_model}/{operation}?api-version={provider.api_version}"
