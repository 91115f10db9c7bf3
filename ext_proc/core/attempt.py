"""One upstream attempt of a request Envoy may fall back with: rewrite it for the target Envoy picked.

Theory of operation. For an alias with fallback, the router-level session labels the request with
its chain (dynamic metadata) and the chain's cluster; Envoy then tries the cluster's
endpoints by priority, retrying on 429, 5xx, resets, connect failures and stalls. Each try runs
the cluster's upstream ext_proc filter, which opens a stream to Tollway that this class serves:

``REQUEST_HEADERS``  find the target: the endpoint's ``tollway.slot`` metadata is its position
                     in the chain. Nothing is changed yet (the body decides the length).
``REQUEST_BODY``     the client's request, unchanged by earlier tries (Envoy replays the original
                     body), becomes the target's: translated between the OpenAI and Anthropic
                     APIs if need be, with the target's model, path, host and credentials.

Envoy keeps header changes from one try to the next, so every try sets (or removes) every header
it owns: ``:path``, ``:authority``, ``content-length`` and each provider kind's key headers. The
answer itself goes back through the router-level session, which reads which endpoint served
(and after how many tries), translates the answer for the client and records it. No state is
kept between the two streams: both may reach different worker processes.

A try Envoy abandoned at the first-byte timeout (``per_try_idle_timeout``: no byte of an answer
yet) was sent: the provider may be generating, and bills, an answer no one reads. Envoy marks the
try after it (``x-envoy-is-timeout-retry: true``), which adds the abandoned target (the chain's
previous position: each retry moves to the next priority) to the ``tollway.abandoned`` metadata;
the router-level session reads it with the answer's head and records the abandoned tries. A
request whose first try answers pays nothing for this: Envoy sets the header on retries only.

On a ``tls://`` listener any workload the client CA admits (in Istio mode any pod of the mesh) may
open a stream marked as a try and write its metadata (the chain, slot, alias and team) itself:
there nothing of it is the router-level session's word. A try is then served only for the
workload its verified client certificate names (``workload``, which the policy must know), for a
target of the alias's plan of that workload's own team, which must be allowed the alias; any
other is a 403 ``attempt_refused``, logged as a warning, and no target is ever built for a
provider outside such a plan (the provider key goes with the try's header mutations).

Each try uses the policy the request started with (its version travels in the metadata; a
worker keeps the policies its reloads replaced for the requests still in flight, see
:class:`~ext_proc.server.reload.PolicyHolder`), so a reload changes no try of a request already
routed. A request this attempt cannot send (a chain naming a provider the policy no longer has,
once its own policy is no longer kept; a body the target's API cannot express) is answered here
in the target's own error format, so the router-level session translates it like any provider
error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ext_proc.core import upstream
from ext_proc.core.actions import CONTINUE, Action, Ask, Continue, Effect, Respond
from ext_proc.core.events import Event, RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.llm import apis, exact, providers
from ext_proc.llm.errors import ClientError
from ext_proc.policy.compiled import CompiledPolicy, Plan, Target

log = logging.getLogger("tollway.attempt")


class Attempt:
    """One try of a chained request; see the module docstring."""

    __slots__ = ("_api", "_attributes", "_earlier", "_host", "_mtls", "_path", "_policy", "_target",
                 "_workload", "effects", "request_id")

    def __init__(self, policy: CompiledPolicy | None,
                 earlier: Callable[[str], CompiledPolicy | None] | None = None,
                 *, workload: str | None = None, mtls: bool = False) -> None:
        self._policy = policy
        self._workload = workload  # on a tls:// listener: the workload the stream's certificate names
        self._mtls = mtls  # a tls:// listener: the try's metadata is the caller's word, not Envoy's
        self._earlier = earlier  # an earlier policy by its version: a request that started with it keeps it
        self._api: apis.WireAPI | None = None
        self._path = ""
        self._target: Target | None = None
        self._attributes: Mapping[str, str] = {}
        self._host: str | None = None  # the Host the picked endpoint was rendered with
        self.effects: list[Effect] = []  # an attempt records nothing: the router-level session does
        self.request_id: str | None = None

    def handle(self, event: Event) -> Action | Ask | None:
        if isinstance(event, RequestHeaders):
            return self._headers(event)
        if isinstance(event, RequestBody):
            return self._body(event)
        if isinstance(event, (ResponseHeaders, ResponseBody)):
            return CONTINUE  # the filter is configured not to send these
        assert isinstance(event, StreamClosed)
        return None

    def _headers(self, event: RequestHeaders) -> Action:
        headers = event.headers
        self.request_id = headers.get("x-request-id")
        attributes = self._attributes = event.attributes
        self._path = attributes.get("tollway." + upstream.CLIENT_PATH) or upstream.without_credentials(
            headers.get(":path", ""))
        self._api = apis.match(self._path)
        chain = upstream.decode_chain(attributes.get("tollway." + upstream.TARGETS, ""))
        position = event.upstream.slot
        self._host = event.upstream.host
        started = attributes.get("tollway." + upstream.POLICY)
        if started and self._earlier is not None and (self._policy is None or self._policy.version != started):
            self._policy = self._earlier(started) or self._policy  # a reload came while the request was in flight
        if self._api is None or position is None or position >= len(chain) or self._policy is None:
            return self._fail(ClientError(500, "chain_mismatch", "Tollway could not match this try to its route."))
        provider_name, model = chain[position]
        if self._mtls:
            target = self._granted(self._policy, attributes, provider_name, model)
            if target is None:
                return self._fail(ClientError(403, "attempt_refused", "This connection's workload may not send "
                                                                      "this try."))
        else:
            target = _planned(self._policy, attributes, provider_name, model)
        if target is None:
            provider = self._policy.providers.get(provider_name)
            if provider is None:
                message = f"Provider '{provider_name}' is not in the current policy."
                return self._fail(ClientError(503, "provider_not_configured", message))
            target = Target(public=model, provider=provider, upstream_model=model,
                            output_tokens=self._policy.limits.default_output_tokens)
        self._target = target
        retry = headers.get(upstream.TIMEOUT_RETRY_HEADER)
        if retry is None:  # a first try
            return CONTINUE
        # Envoy's mark goes (it sets it again on each retry; it is nothing for the provider). "true":
        # the try before this one, the chain's previous position, was abandoned at its timeout.
        if retry != "true" or not position:
            return Continue(remove_headers=(upstream.TIMEOUT_RETRY_HEADER,))
        before = chain[position - 1]
        abandoned = attributes.get("tollway." + upstream.ABANDONED)
        entry = f"{before[0]} {before[1]}"
        return Continue(remove_headers=(upstream.TIMEOUT_RETRY_HEADER,),
                        metadata=((upstream.ABANDONED, f"{abandoned}, {entry}" if abandoned else entry),))

    def _body(self, event: RequestBody) -> Action:
        api, target = self._api, self._target
        if api is None or target is None:
            return CONTINUE  # the headers were already answered
        try:
            payload: Any = exact.loads(event.body)
        except orjson.JSONDecodeError:
            return self._fail(ClientError(400, "invalid_json", "The request body is not valid JSON."))
        if not isinstance(payload, dict):
            return self._fail(ClientError(400, "invalid_body", "The request body must be a JSON object."))
        try:
            prepared, path = upstream.prepare(api, payload, target, self._path)
        except ClientError as error:  # (a target unable to express it was left out of the chain unless all are)
            return self._fail(error)
        body = exact.dumps(prepared)
        provider = target.provider
        sets = [(":path", path or self._path), ("content-length", str(len(body)))]
        host = upstream.host(provider, self._host)
        if host:
            sets.append((":authority", host))
        # Every provider key header an earlier try may have set goes; the server adds this
        # provider's own while encoding (and never removes what it sets).
        removes = providers.KEY_HEADERS
        return Continue(
            set_headers=tuple(sets),
            remove_headers=removes,
            body=body,
            credential=provider,
        )

    def _granted(self, policy: CompiledPolicy, attributes: Mapping[str, str], provider: str,
                 model: str) -> Target | None:
        """On a tls:// listener: the target of (provider, model) in the alias's plan of the team of
        the workload the certificate names, when that team may use the alias; else None (logged)."""
        principal = policy.workload(self._workload) if self._workload else None
        alias_name = attributes.get("tollway." + upstream.ALIAS, "")
        alias = policy.alias(alias_name)
        target = None
        if principal is not None and alias is not None and policy.may_use(principal.team, alias.name):
            target = _in_plan(alias.plan_for(principal.team), provider, model)
        if target is None:
            log.warning("refused attempt_refused: a fallback try for %r (%s %s) from workload %s, which the "
                        "policy does not let it send (request %s)", alias_name[:200], provider[:100], model[:200],
                        self._workload or "(no SPIFFE ID)", (self.request_id or "-")[:100])
        return target

    def _fail(self, error: ClientError) -> Respond:
        api = self._api or apis.CHAT_COMPLETIONS
        answer_in = upstream.served(self._target, api) if self._target is not None else api
        return Respond(error.status, answer_in.error_body(error))


def _planned(policy: CompiledPolicy, attributes: Mapping[str, str], provider: str, model: str) -> Target | None:
    """The alias plan's own target for (provider, model), with its output limit and price."""
    alias = policy.alias(attributes.get("tollway." + upstream.ALIAS, ""))
    if alias is None:
        return None
    return _in_plan(alias.plan_for(attributes.get("tollway." + upstream.TEAM, "")), provider, model)


def _in_plan(plan: Plan, provider: str, model: str) -> Target | None:
    for target in plan.targets:
        if target.provider.name == provider and target.upstream_model == model:
            return target
    return None
