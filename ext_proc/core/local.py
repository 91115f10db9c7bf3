"""The endpoints Tollway answers itself: the model catalogue, and token counting for targets
Anthropic does not serve.

Theory of operation. These requests run the same steps as every other one: ``recognise`` finds
the endpoint (``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/messages/count_tokens``),
``identify`` the caller, ``access`` the model (count_tokens names one). Then this step answers
with a :class:`~ext_proc.core.actions.Respond` instead of letting the request go on: a step hook
may return one, and the session ends the request there with that answer, outcome ``ok``, no
provider, nothing spent (the record says 0 tokens and a cost of 0). So the caller's identity
and team decide the answer, an unknown key still gets its 401, and nothing in the session
knows which endpoints are answered locally: only this step does.

* The model list is the caller's team's catalogue (:mod:`ext_proc.policy.catalogue`): every
  model and alias it may call, nothing else; ``/v1/models/{id}`` of a model it may not see is a
  404 in the client's format, as for a model that does not exist. Without a policy (open mode)
  Tollway has no catalogue: the request goes to the provider of the caller's family, with the
  caller's own key, like every request in open mode.
* Token counting for a model whose first target is an Anthropic model goes on to the next steps
  and is forwarded, as a Messages request would be. For any other target Tollway counts what it
  would send that target: the request translated to the API the target speaks, counted with
  that API's rules for the target's model (:func:`ext_proc.llm.tokens.count_request`), and
  answers ``{"input_tokens": N}`` with the method in ``x-tollway-token-count`` (``exact`` or
  ``estimate``, and the rule). The prompt goes through the team's guardrails first, as the
  forwarded request's would (:func:`ext_proc.core.guard.screen`): a block is the same refusal, and
  what is counted is the prompt as it would go out, redacted. A request ``/v1/messages`` would
  refuse for that model (malformed, or what its API cannot express) gets the same 400: there is
  nothing to count of what cannot be sent.
"""

from __future__ import annotations

import orjson

from ext_proc.core import guard, upstream
from ext_proc.core.actions import Ask, Respond
from ext_proc.core.flow import Flow
from ext_proc.core.steps import ROUTE_HEADER, Step
from ext_proc.llm import apis, providers
from ext_proc.llm.apis.local import Catalogue
from ext_proc.llm.errors import ClientError
from ext_proc.policy import catalogue
from ext_proc.policy.compiled import Alias

_JSON = (("content-type", "application/json"),)


class Local(Step):
    """Answers the endpoints Tollway serves itself (see the module docstring)."""

    __slots__ = ()
    name = "local"

    def head(self, flow: Flow) -> Ask | Respond | None:
        api = flow.api
        if not isinstance(api, Catalogue):
            return None
        if flow.policy is None:  # open mode: no catalogue; the provider answers, with the caller's key
            flow.provider = flow.cluster = api.home
            flow.served = api
            flow.set_headers.append((ROUTE_HEADER, api.home))
            if flow.path != flow.headers.get(":path", ""):
                flow.set_headers.append((":path", flow.path))  # without the credentials its query held
            return None
        assert flow.principal is not None
        team = flow.principal.team
        wanted = api.model_id(flow.path)
        if wanted is None:
            return Respond(200, api.listing(catalogue.visible(flow.policy, team), flow.path.partition("?")[2]),
                           _JSON)
        found = catalogue.find(flow.policy, team, wanted)
        if found is None:
            message = f"The model '{wanted[:200]}' does not exist or you do not have access to it."
            raise ClientError(404, "model_not_found", message, "model")
        return Respond(200, api.one(found), _JSON)

    def body(self, flow: Flow) -> Ask | Respond | None:
        if flow.api is not apis.COUNT_TOKENS or flow.policy is None:
            return None
        granted, request = flow.granted, flow.request
        assert granted is not None and request is not None and flow.principal is not None
        target = granted.plan_for(flow.principal.team).targets[0] if isinstance(granted, Alias) else granted
        kind = providers.kind(target.provider.kind)
        if kind.serves(apis.COUNT_TOKENS) is apis.COUNT_TOKENS:
            return None  # Anthropic counts its own: the request is routed and forwarded
        # What would be sent: the prompt through the guardrails (blocked, redacted) as the
        # request's own would go, and a request /v1/messages would refuse for this model refused.
        guard.screen(flow)
        payload, _ = upstream.prepare(apis.MESSAGES, request.payload, target, flow.path)
        flow.meter.before_send(upstream.served(target, apis.MESSAGES).name, payload,
                               upstream.counted_model(target))
        estimate = flow.meter.estimate
        if estimate is None:
            raise ClientError(503, "count_unavailable", "Tollway could not count this request's tokens.")
        how = f"{'exact' if estimate.exact else 'estimate'}; {estimate.method}"
        return Respond(200, orjson.dumps({"input_tokens": estimate.tokens}),
                       (*_JSON, ("x-tollway-token-count", how)))
