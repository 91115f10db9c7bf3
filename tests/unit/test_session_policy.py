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
        << Continue(remove_headers=("authorization", "accept-encoding", "x-tollway-cluster", "x-tollway-team"))
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
        << Continue(remove_headers=("x-api-key", "accept-encoding", "x-tollway-cluster"))
        >> body({"model": "claude", "messages": []})
        << Responds(403, {"error": {"message": "Team 'a' may not use model 'claude'.", "type": "invalid_request_error",
                                    "param": "model", "code": "model_not_allowed"}})
        << Record(team="a", key_id="a-1", status=403, outcome="rejected", error="model_not_allowed", provider=None)
    )


def test_the_clients_other_credentials_never_go_upstream() -> None:
    assert (
        session()
        >> head(**{"x-api-key": KEY, "cookie": "session=abc", "proxy-authorization": "Basic eDp5",
                   "x-goog-api-key": "AIza-not-for-openai", "openai-organization": "org-1",
                   "openai-project": "proj_1", "openai-beta": "assistants=v2"})
        # The organization and project the shared key bills are the platform's choice, not a caller's.
        << Continue(remove_headers=("x-api-key", "proxy-authorization", "cookie", "x-goog-api-key",
                                    "openai-organization", "openai-project", "accept-encoding", "x-tollway-cluster"))
    )


def test_the_caller_is_known_before_its_endpoint_is_judged() -> None:
    """Every request is identified first: a bad key is a 401 on any path, and a known caller's
    request to an endpoint Tollway does not serve, or with a body it cannot read, is its team's."""
    assert (
        session()
        >> head("/v1/files", authorization="Bearer tw-not-a-key-of-this-policy")
        << Responds(401, {"error": {"message": "The Tollway API key is not valid.", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_api_key"}})
        << Record(team=None, api=None, status=401, outcome="rejected", error="invalid_api_key")
    )
    assert (  # a known endpoint: the record names its API
        session()
        >> head(authorization="Bearer tw-not-a-key-of-this-policy")
        << Responds(401, {"error": {"message": "The Tollway API key is not valid.", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_api_key"}})
        << Record(team=None, api="openai.chat.completions", status=401, outcome="rejected", error="invalid_api_key")
    )
    assert (
        session()
        >> head("/v1/files", **{"x-api-key": KEY})
        << Responds(404, {"error": {"message": "Tollway does not serve POST /v1/files.", "type":
                                    "invalid_request_error", "param": None, "code": "unknown_endpoint"}})
        << Record(team="a", key_id="a-1", status=404, outcome="rejected", error="unknown_endpoint")
    )
    assert (
        session()
        >> head(**{"x-api-key": KEY, "content-type": "multipart/form-data"})
        << Responds(415, {"error": {"message": "The request body must be JSON (content-type: application/json), not "
                                    "multipart/form-data.", "type": "invalid_request_error", "param": None,
                                    "code": "unsupported_media_type"}})
        << Record(team="a", key_id="a-1", status=415, outcome="rejected", error="unsupported_media_type")
    )


def test_no_identity_is_answered_before_the_body() -> None:
    assert (
        session()
        >> head("/v1/messages")
        << Responds(401, {"type": "error", "error": {"type": "authentication_error", "message":
                          "No Tollway API key was provided and this workload is not known."}})
        << Record(team=None, status=401, outcome="rejected", error="missing_api_key")
    )


def test_a_key_in_the_query_string_does_not_authenticate_and_is_not_echoed() -> None:
    """The key belongs in a header: one in the URL is not read (nor sent on), and the 401 says where it goes."""
    for name in ("key", "api_key", "token"):
        assert (
            session()
            >> head(f"{CHAT}?{name}={KEY}")
            << Responds(401, {"error": {"message": "No Tollway API key was provided: a key in the URL's query string "
                                        "is not read (nor sent on); send it as 'Authorization: Bearer <key>' or "
                                        "'x-api-key'.", "type": "invalid_request_error", "param": None,
                                        "code": "missing_api_key"}})
            << Record(team=None, status=401, outcome="rejected", error="missing_api_key")
        )
