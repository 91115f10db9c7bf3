"""Transcripts of the session under a policy: identity, access, model names, Azure paths, keys."""

from __future__ import annotations

import orjson

from ext_proc.core.actions import Continue
from ext_proc.core.events import RequestBody, RequestHeaders
from ext_proc.core.session import Session
from tests.unit.test_identity import AZURE, KEY, OPENAI, POLICY
from tests.unit.transcript import Record, Responds, Transcript

CHAT = "/v1/chat/completions"


def head(path: str = CHAT, **headers: str) -> RequestHeaders:
    return RequestHeaders({":method": "POST", ":path": path, "x-request-id": "r1", **headers}, False, 0)


def body(value: object) -> RequestBody:
    return RequestBody(orjson.dumps(value), True, 1_000_000)


def session(workload: str | None = None) -> Transcript:
    return Transcript(Session(POLICY, workload))


def test_key_holder_is_routed_with_the_providers_credential_and_model_name() -> None:
    payload = {"model": "gpt4o", "messages": []}
    rewritten = orjson.dumps({"model": "gpt-4o-2024-08-06", "messages": []})
    assert (
        session()
        >> head(authorization=f"Bearer {KEY}", **{"x-tollway-team": "all", "accept-encoding": "gzip"})
        << Continue(remove_headers=("accept-encoding", "x-tollway-cluster", "x-tollway-team", "authorization"))
        >> body(payload)
        << Continue(
            set_headers=(("x-tollway-cluster", "openai"), ("content-length", str(len(rewritten)))),
            body=rewritten, clear_route_cache=True, credential=OPENAI,
        )
    )


def test_the_same_name_needs_no_body_rewrite() -> None:
    assert (
        session("local-dev")
        >> head()
        << Continue(remove_headers=("accept-encoding", "x-tollway-cluster"))
        >> body({"model": "azure-gpt", "messages": []})
        << Continue(
            set_headers=(
                ("x-tollway-cluster", "azure"),
                (":path", "/openai/deployments/prod-deploy/chat/completions?api-version=2024-10-21"),
            ),
            clear_route_cache=True, credential=AZURE,
        )
    )


def test_refusals_are_recorded_with_the_team() -> None:
    assert (
        session()
        >> head(**{"x-api-key": KEY})
        << Continue(remove_headers=("accept-encoding", "x-tollway-cluster", "x-api-key"))
        >> body({"model": "claude", "messages": []})
        << Responds(403, {"error": {"message": "Team 'a' may not use model 'claude'.", "type": "invalid_request_error",
                                    "param": "model", "code": "model_not_allowed"}})
        << Record(team="a", key_id="a-1", status=403, outcome="rejected", error="model_not_allowed", provider=None)
    )


def test_the_clients_other_credentials_never_go_upstream() -> None:
    assert (
        session()
        >> head(**{"x-api-key": KEY, "cookie": "session=abc", "proxy-authorization": "Basic eDp5",
                   "x-goog-api-key": "AIza-not-for-openai", "openai-organization": "org-1"})
        << Continue(remove_headers=("accept-encoding", "x-tollway-cluster", "x-api-key", "proxy-authorization",
                                    "cookie", "x-goog-api-key"))
    )


def test_no_identity_is_answered_before_the_body() -> None:
    assert (
        session()
        >> head("/v1/messages")
        << Responds(401, {"type": "error", "error": {"type": "authentication_error", "message":
                          "No Tollway API key was provided and this workload is not known."}})
        << Record(team=None, status=401, outcome="rejected", error="missing_api_key")
    )
