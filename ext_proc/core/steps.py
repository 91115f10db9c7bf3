"""The request steps: the ordered decisions taken on every request before it goes upstream.

Theory of operation. A step is a small stateless object with up to two hooks, ``head`` (the
request headers arrived) and ``body`` (the buffered body arrived). The session calls the hooks of
every step in the order :mod:`ext_proc.core.pipeline` lists them, each reading and filling the
request's :class:`~ext_proc.core.flow.Flow`. A hook ends in one of three ways:

- it returns ``None``: the next step runs;
- it raises :class:`~ext_proc.llm.errors.ClientError`: the request is refused (in the client's
  error format, no provider asked) and no further step runs;
- it returns an :class:`~ext_proc.core.actions.Ask`: the step needs shared state (a budget, a
  rate limit). The session hands the question to the server and waits; when the answer arrives
  the step's ``then`` continues (and may ask again, refuse, or let the next step run);
- it returns a :class:`~ext_proc.core.actions.Respond`: the step answered the request itself
  (the endpoints of :mod:`ext_proc.core.local`); no further step runs, no provider is asked,
  and the request is recorded as answered (outcome ``ok``, nothing spent).

Steps hold configuration only (set once, when the service starts); everything about one request
is in its flow, so one step object serves every request.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from ext_proc.core import upstream
from ext_proc.core.actions import Ask, Respond
from ext_proc.core.flow import Flow
from ext_proc.guardrails.detectors import GROUPS
from ext_proc.guardrails.scanner import builtin
from ext_proc.llm import apis
from ext_proc.llm.errors import ClientError
from ext_proc.policy import decide
from ext_proc.policy.compiled import KEY_PREFIX, Alias
from ext_proc.state.queries import Ping, StoreUnavailable

ROUTE_HEADER = "x-tollway-cluster"  # Envoy routes to the cluster this header names
STREAM_HEADER = "x-tollway-stream"  # Envoy picks the streaming route (its first-byte timeout)
# Headers only Tollway may set on the way to the provider; a client's copy is dropped, as is
# any other x-tollway-* header the client sent (identity is Tollway's to establish), and every
# x-envoy-* one: Envoy's router reads a client's retry and timeout headers (x-envoy-retry-on,
# x-envoy-max-retries, x-envoy-upstream-rq-timeout-ms...: a retry sends the request, and bills
# it, again), the per-try filter Envoy's x-envoy-is-timeout-retry (Envoy's own is set on the try,
# after this), and none is the provider's to see. Tollway sets x-envoy-max-retries itself.
_UNTRUSTED = ("accept-encoding", ROUTE_HEADER)
_ENVOY = "x-envoy-"
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
# Model names a client may ask for: a name never steers an upstream path, host or fragment.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]{0,255}")


class Step:
    """Base of the request steps; a hook left as is does nothing."""

    __slots__ = ()
    name = "step"

    def head(self, flow: Flow) -> Ask | Respond | None:
        return None

    def body(self, flow: Flow) -> Ask | Respond | None:
        return None


class Recognise(Step):
    """The client's API from the path, then its body: decoded, checked, asked to report usage.

    Unknown endpoints (404), requests without a body and unsupported encodings are refused at the
    head; a body that is not JSON, names no model or has wrong types for the fields Tollway reads
    is refused at the body. Client-sent routing and ``x-tollway-*`` headers are removed. The
    model list (``GET /v1/models``, in the caller's family's format) has no body: it is answered
    by :class:`~ext_proc.core.local.Local` after the caller is known.
    """

    __slots__ = ()
    name = "recognise"

    def head(self, flow: Flow) -> Ask | Respond | None:
        headers = flow.headers
        path = flow.path = upstream.without_credentials(headers.get(":path", ""))  # what goes upstream (see Rewrite)
        method = headers.get(":method", "?")
        api = flow.api = flow.api or endpoint(headers)  # (the identify step's, with a policy)
        if api is None:
            shown = path.partition("?")[0][:200] or headers.get(":authority", "")[:200]  # (CONNECT: no path)
            raise ClientError(404, "unknown_endpoint", f"Tollway does not serve {method} {shown}.")
        for name, value in headers.items():
            if _CONTROL.search(value):  # a bare CR, a NUL...: a value a client should never send
                raise ClientError(400, "invalid_header", f"The header {name[:100]!r} holds a control character.")
        flow.remove_headers += _UNTRUSTED
        flow.remove_headers += [h for h in headers if h.startswith(("x-tollway-", _ENVOY)) and h != ROUTE_HEADER]
        if method == "GET":
            return None
        if flow.headers_only:
            raise ClientError(400, "invalid_body", "The request body is empty; expected a JSON object.")
        media = headers.get("content-type", "application/json").partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            shown = media[:100] or "(empty)"
            raise ClientError(415, "unsupported_media_type",
                              f"The request body must be JSON (content-type: application/json), not {shown}.")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            flow.gunzip = True
        elif encoding != "identity":
            raise ClientError(415, "unsupported_encoding", f"Unsupported content-encoding {encoding!r}.")
        return None

    def body(self, flow: Flow) -> Ask | Respond | None:
        api = flow.api
        assert api is not None
        if flow.gunzip:
            flow.body = apis.gunzip(flow.body)
            flow.replaced = True
        request = flow.request = api.parse(flow.body)
        flow.asked = request.payload
        if not _MODEL_NAME.fullmatch(request.model) or "/../" in f"/{request.model}/" or "//" in request.model:
            raise ClientError(400, "invalid_model", "The model name may hold only letters, digits and . _ : / + - "
                              "(no spaces, control characters, '..' segments or percent-encoding), at most 256 of "
                              "them, starting with a letter or a digit.", "model")
        if len(request.model) >= _CREDENTIAL_MIN and _credential(request.model) and (
                flow.policy is None or request.model not in flow.policy.model_names):  # (the policy's: served)
            raise ClientError(400, "invalid_model", "The model name holds a credential (an API key?): it is not "
                              "used, echoed or recorded.", "model")
        flow.model = request.model
        flow.stream = request.stream
        if request.stream and api.ask_for_usage(request):
            flow.hide_usage = flow.replaced = flow.reencode = True
        return None


_CREDENTIAL_MIN = 20  # characters: the shortest credential the built-in detectors know (AKIA + 16)


def _credential(name: str) -> bool:
    """Whether a model name holds a credential (a key pasted into the wrong field): it would
    otherwise reach the record, the metrics' labels, the span's name and the dashboard. The names
    found plain are kept (a few distinct names come again and again; 2.5 µs to scan one), never a
    credential."""
    if name in _PLAIN_NAMES:
        return False
    if name.startswith(KEY_PREFIX) or builtin().find(name, GROUPS["credentials"]):
        return True
    if len(_PLAIN_NAMES) >= 1024:
        _PLAIN_NAMES.clear()
    _PLAIN_NAMES.add(name)
    return False


_PLAIN_NAMES: set[str] = set()

def endpoint(headers: Mapping[str, str]) -> apis.WireAPI | None:
    """The API a request's method and path name (None: not one Tollway serves)."""
    if "upgrade" in headers:  # a websocket (the Realtime API): nothing Tollway serves may be upgraded
        return None
    method, path = headers.get(":method"), headers.get(":path", "")
    return apis.match(path) if method == "POST" else apis.catalogue(path, headers) if method == "GET" else None


class Identify(Step):
    """Who is calling: a Tollway key, else the workload (see :func:`ext_proc.policy.decide.identify`).
    The client's credential headers never go upstream."""

    __slots__ = ()
    name = "identify"

    def head(self, flow: Flow) -> Ask | Respond | None:
        if flow.policy is None:
            return None
        flow.api = endpoint(flow.headers)  # a refusal's record names it (the recognise step judges it)
        try:
            flow.principal = decide.identify(flow.policy, flow.headers, flow.attributes, flow.workload, mtls=flow.mtls)
        except ClientError as error:
            if error.code == "workload_mismatch" and flow.workload:  # the record names the real caller
                flow.principal = flow.policy.workload(flow.workload)
            path = flow.headers.get(":path", "")
            if error.code == "missing_api_key" and upstream.without_credentials(path) != path:
                raise ClientError(401, "missing_api_key", "No Tollway API key was provided: a key in the URL's query "
                                  "string is not read (nor sent on); send it as 'Authorization: Bearer <key>' or "
                                  "'x-api-key'.") from None
            raise
        flow.remove_headers += [h for h in decide.CREDENTIAL_HEADERS if h in flow.headers]
        return None


class Access(Step):
    """The model must exist (404) and the caller's team may use it (403)."""

    __slots__ = ()
    name = "access"

    def body(self, flow: Flow) -> Ask | Respond | None:
        if flow.policy is None:
            return None
        assert flow.principal is not None and flow.model is not None
        flow.granted = decide.access(flow.policy, flow.principal, flow.model)
        if flow.request is not None and flow.api is not None:  # models its tools call (an image model)
            decide.tool_access(flow.policy, flow.principal, flow.api, flow.request.payload)
        return None


class Route(Step):
    """Count the prompt, then choose the targets: one, or a fallback chain for an alias (targets
    that cannot serve the client's API, whose context window is too small, or whose API cannot
    express this request are left out)."""

    __slots__ = ()
    name = "route"

    def body(self, flow: Flow) -> Ask | Respond | None:
        api, request = flow.api, flow.request
        assert api is not None and request is not None
        if flow.policy is None:  # open mode: the API's own provider, the client's own key
            flow.provider = flow.cluster = api.home
            flow.served = api
            flow.meter.before_send(api.name, request.payload, request.model)
            return None
        granted, principal = flow.granted, flow.principal
        assert granted is not None and principal is not None
        counted_as = (granted.plan_for(principal.team).targets[0] if isinstance(granted, Alias) else granted)
        flow.meter.before_send(api.name, request.payload, upstream.counted_model(counted_as))
        estimate = flow.meter.estimate
        chain = flow.chain = decide.plan(
            principal, api, granted, request.model, estimate.tokens if estimate else None, flow.runtime.random,
            functools.partial(upstream.expresses, api, request.payload), estimate.exact if estimate else False,
        )
        first = flow.target = chain[0]
        flow.provider = first.provider.name
        flow.cluster = decide.cluster_name(chain)
        return None


class Probe(Step):
    """Asks shared state whether it answers before the request goes on (``--store-probe``).

    The first step built on ask-and-continue, and a readiness check of the store the budget and
    rate-limit steps will ask: the request waits for the answer; a store that is down or too
    slow refuses it (503), as those steps will.
    """

    __slots__ = ()
    name = "probe"

    def body(self, flow: Flow) -> Ask | Respond | None:
        return Ask(Ping(), then=_probed)


def _probed(answer: Any) -> Ask | None:
    if isinstance(answer, BaseException):
        reason = str(answer) if isinstance(answer, StoreUnavailable) else "no answer"
        raise ClientError(503, "state_unavailable", f"Tollway's shared state store is unavailable ({reason}).")
    return None


class Rewrite(Step):
    """The request as the provider must receive it, and the labels Envoy routes it by.

    One target: this filter rewrites it (model, path, translation) and names the provider whose
    key the server adds. A chain: each try's own filter does that for the target Envoy picked
    (:mod:`ext_proc.core.attempt`); the chain travels as dynamic metadata, with one Envoy retry per
    further target.
    """

    __slots__ = ()
    name = "rewrite"

    def body(self, flow: Flow) -> Ask | Respond | None:
        request = flow.request
        assert request is not None and flow.cluster is not None
        headers = flow.set_headers
        headers.append((ROUTE_HEADER, flow.cluster))
        chain = flow.chain
        if len(chain) == 1:
            first = chain[0]
            assert flow.api is not None
            flow.credential = first.provider
            payload, path = upstream.prepare(flow.api, request.payload, first, flow.path)
            if path is None and flow.path != flow.headers.get(":path", ""):
                path = flow.path  # the client's, without the credentials its query held
            flow.remove_headers += [h for h in upstream.foreign(flow.api, first) if h in flow.headers]
            if path is not None:
                headers.append((":path", path))
                if upstream.served(first, flow.api) is not flow.api:  # another family's path
                    flow.metadata = ((upstream.CLIENT, flow.api.home),)
            if payload is not request.payload or payload.get("model") != request.model:
                request.payload = payload
                flow.replaced = flow.reencode = True
        elif chain:
            assert flow.principal is not None and flow.api is not None
            flow.metadata = (
                (upstream.TARGETS, upstream.encode_chain(chain)), (upstream.CLIENT_PATH, flow.path),
                (upstream.ALIAS, request.model), (upstream.TEAM, flow.principal.team),
                (upstream.CLIENT, flow.api.home), (upstream.POLICY, flow.policy.version if flow.policy else ""),
            )
            headers.append((upstream.RETRIES_HEADER, str(len(chain) - 1)))
        elif flow.path != flow.headers.get(":path", ""):  # open mode: the client's path, its credentials taken out
            headers.append((":path", flow.path))
        if request.stream:
            headers.append((STREAM_HEADER, "1"))
        return None

