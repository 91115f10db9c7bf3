"""The per-try session of a fallback chain (:class:`ext_proc.core.attempt.Attempt`) and its dispatch.

Each try of a chained request is rewritten for the target Envoy picked: the endpoint's
``tollway.slot`` host metadata names the position in the chain that the router-level session
left as dynamic metadata (``tollway.targets``, ``tollway.path``). These tests feed an Attempt the
events the upstream ext_proc filter sends, then the same through the servicer with real
protobuf messages.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, text_format

from ext_proc.core import upstream
from ext_proc.core.actions import CONTINUE, Continue, Respond
from ext_proc.core.attempt import Attempt
from ext_proc.core.events import RequestBody, RequestHeaders, ResponseBody, ResponseHeaders, StreamClosed
from ext_proc.llm import apis
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import CompiledPolicy
from ext_proc.server import codec
from ext_proc.server.credentials import CredentialStore, credential_headers
from ext_proc.server.records import RecordWriter
from ext_proc.server.reload import PolicyController, PolicyHolder, Publication
from ext_proc.server.servicer import FILTER_METADATA, ExtProcCall, Processor, Service

POLICY_TEXT = textwrap.dedent("""\
    apiVersion: tollway/v1
    providers:
      openai:
        kind: openai
        credential: {env: OPENAI_API_KEY}
      anthropic:
        kind: anthropic
        credential: {env: ANTHROPIC_API_KEY}
      azure:
        kind: azure-openai
        endpoint: https://contoso.openai.azure.com
        credential: {env: AZURE_API_KEY}
        api_version: "2024-10-21"
      local:
        kind: openai-compatible
        endpoint: http://vllm.local:8000
    models:
      gpt-4o:
        provider: openai
        price: {input: "2.50", output: "10"}
      claude-x:
        provider: anthropic
        price: {input: "1", output: "1"}
    teams:
      all:
        workloads: [local-dev]
        models: ["*"]
      b:
        workloads: [b-app]
        models: ["*"]
    routing:
      aliases:
        smart:
          targets:
            - {provider: openai, model: gpt-4o}
            - provider: anthropic
              model: claude-x
              max_output_tokens: 1000
              price: {input: "3", output: "15", cache_read: "0.30", cache_write: "3.75"}
          teams:
            b:
              targets:
                - {provider: openai, model: gpt-4o}
                - {provider: anthropic, model: claude-x, max_output_tokens: 2000}
        plain:
          targets:
            - {provider: openai, model: gpt-4o-mini}
            - {provider: anthropic, model: claude-y}
        eu:
          targets:
            - {provider: openai, model: gpt-4o-mini}
            - {provider: azure, model: prod-deploy}
        onprem:
          targets:
            - {provider: openai, model: gpt-4o-mini}
            - {provider: local, model: llama-3}
        big:
          targets:
            - {provider: openai, model: gpt-4o-small, context_window: 50}
            - {provider: anthropic, model: claude-z}
    """)
POLICY: CompiledPolicy = compile_policy(POLICY_TEXT)
OPENAI = POLICY.providers["openai"]
ANTHROPIC = POLICY.providers["anthropic"]
AZURE = POLICY.providers["azure"]
LOCAL = POLICY.providers["local"]
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
SMART = "openai gpt-4o, anthropic claude-x"
ENV = {"OPENAI_API_KEY": "sk-openai-test", "ANTHROPIC_API_KEY": "sk-ant-test", "AZURE_API_KEY": "az-test"}

KEY_HEADERS = {"authorization", "x-api-key", "api-key", "anthropic-version"}  # every provider kind's


def host_metadata(slot: int | str, provider: str = "anthropic") -> str:
    """The host metadata attribute as Envoy renders it (protobuf text, one line)."""
    return (
        f'filter_metadata {{ key: "tollway" value {{ fields {{ key: "provider" value {{ string_value: "{provider}" }}'
        f' }} fields {{ key: "slot" value {{ string_value: "{slot}" }} }} }} }} '
    )


def try_head(slot: int | str | None, targets: str | None = SMART, path: str = CHAT,
             client_path: str | None = None, alias: str | None = "smart", team: str = "all") -> RequestHeaders:
    """The request headers of one try, with the attributes the upstream filter sends."""
    attributes: dict[str, str] = {}
    if slot is not None:
        attributes[codec.HOST_METADATA] = host_metadata(slot)
    if targets is not None:
        attributes["tollway." + upstream.TARGETS] = targets
    attributes["tollway." + upstream.CLIENT_PATH] = client_path if client_path is not None else path
    if alias is not None:
        attributes["tollway." + upstream.ALIAS] = alias
        attributes["tollway." + upstream.TEAM] = team
    headers = {":method": "POST", ":path": path, ":authority": "localhost:10000", "x-request-id": "r1"}
    return envoy_head(headers, attributes)


def envoy_head(headers: Any, attributes: dict[str, str]) -> RequestHeaders:
    """A try's request headers event as the codec makes it from Envoy's attributes."""
    attributes = dict(attributes)
    return RequestHeaders(headers, False, 0, attributes, codec.upstream_of(attributes))


def body_event(value: Any) -> RequestBody:
    return RequestBody(orjson.dumps(value), True, 1)


OPENAI_REQUEST = {
    "model": "smart",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "temperature": 0.5,
}
ANTHROPIC_REQUEST = {
    "model": "smart",
    "max_tokens": 300,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Hi"}],
}


def run(slot: int | str | None, payload: Any, **head: Any) -> tuple[Attempt, Any, Any]:
    attempt = Attempt(POLICY)
    first = attempt.handle(try_head(slot, **head))
    second = attempt.handle(body_event(payload) if not isinstance(payload, bytes) else RequestBody(payload, True, 1))
    return attempt, first, second


def header(action: Continue, name: str) -> str | None:
    found = [value for key, value in action.set_headers if key == name]
    assert len(found) <= 1, f"{name} set twice: {action.set_headers}"
    return found[0] if found else None


def check_sized(action: Continue) -> dict[str, Any]:
    assert action.body is not None
    assert header(action, "content-length") == str(len(action.body))
    decoded: dict[str, Any] = orjson.loads(action.body)
    return decoded


# -- the two ends of a chain --------------------------------------------------------------------


def test_slot_0_sends_the_openai_request_with_the_targets_model() -> None:
    attempt, first, second = run(0, OPENAI_REQUEST)
    assert first == CONTINUE  # the headers wait for the body: it decides the length
    assert attempt.request_id == "r1"
    assert isinstance(second, Continue)
    assert check_sized(second) == {**OPENAI_REQUEST, "model": "gpt-4o"}
    assert header(second, ":path") == CHAT
    assert header(second, ":authority") == "api.openai.com"
    assert second.credential == OPENAI
    # Every key header of an earlier try goes; the server adds this provider's own while encoding.
    assert set(second.remove_headers) == KEY_HEADERS and second.credential is not None
    assert attempt.effects == []  # an attempt records nothing


def test_slot_1_sends_an_anthropic_messages_request() -> None:
    _, first, second = run(1, OPENAI_REQUEST)
    assert first == CONTINUE
    assert isinstance(second, Continue)
    sent = check_sized(second)
    assert sent["model"] == "claude-x"
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == 1000  # the target's max_output_tokens
    assert sent["temperature"] == 0.5
    assert [m["role"] for m in sent["messages"]] == ["user"]
    assert "Hi" in orjson.dumps(sent["messages"]).decode()
    assert header(second, ":path") == MESSAGES
    assert header(second, ":authority") == "api.anthropic.com"
    assert second.credential == ANTHROPIC
    assert set(second.remove_headers) == KEY_HEADERS and second.credential is not None


def test_anthropic_max_tokens_defaults_to_4096_without_a_target_limit() -> None:
    _, _, second = run(1, {**OPENAI_REQUEST, "model": "plain"}, targets="openai gpt-4o-mini, anthropic claude-y",
                       alias="plain")
    assert isinstance(second, Continue)
    assert check_sized(second)["max_tokens"] == 4096  # shared_state.default_output_tokens when the policy sets none


@pytest.mark.parametrize("alias", ["plain", "gone"])  # gone: a reload removed the alias under the request
def test_anthropic_max_tokens_is_the_policys_default_output_the_claim_counts(alias: str) -> None:
    """A request that sets no limit is claimed for default_output_tokens (core/limits.py): the try
    sends Anthropic that many, never more than the claim."""
    policy = compile_policy(POLICY_TEXT + "shared_state: {default_output_tokens: 300}\n")
    attempt = Attempt(policy)
    attempt.handle(try_head(1, targets="openai gpt-4o-mini, anthropic claude-y", alias=alias))
    second = attempt.handle(body_event({**OPENAI_REQUEST, "model": "plain"}))
    assert isinstance(second, Continue) and check_sized(second)["max_tokens"] == 300


def test_the_teams_own_plan_gives_the_target_settings() -> None:
    _, _, team_b = run(1, OPENAI_REQUEST, team="b")
    assert isinstance(team_b, Continue) and check_sized(team_b)["max_tokens"] == 2000
    _, _, unknown_team = run(1, OPENAI_REQUEST, team="nobody")  # the alias's default plan
    assert isinstance(unknown_team, Continue) and check_sized(unknown_team)["max_tokens"] == 1000


def test_without_the_alias_metadata_the_target_is_the_bare_provider_model() -> None:
    _, first, second = run(1, OPENAI_REQUEST, alias=None)
    assert first == CONTINUE
    assert isinstance(second, Continue)
    sent = check_sized(second)
    assert sent["model"] == "claude-x" and sent["max_tokens"] == 4096
    assert second.credential == ANTHROPIC


def test_a_client_max_tokens_wins_over_the_target_default() -> None:
    _, _, second = run(1, {**OPENAI_REQUEST, "max_completion_tokens": 77})
    assert isinstance(second, Continue)
    assert check_sized(second)["max_tokens"] == 77


def test_an_anthropic_client_reaches_both_ends() -> None:
    _, _, to_openai = run(0, ANTHROPIC_REQUEST, path=MESSAGES)
    assert isinstance(to_openai, Continue)
    sent = check_sized(to_openai)
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_completion_tokens"] == 300 and "max_tokens" not in sent  # OpenAI: its reasoning models need it
    assert header(to_openai, ":path") == CHAT and header(to_openai, ":authority") == "api.openai.com"
    assert to_openai.credential == OPENAI

    _, _, to_anthropic = run(1, ANTHROPIC_REQUEST, path=MESSAGES)
    assert isinstance(to_anthropic, Continue)
    assert check_sized(to_anthropic) == {**ANTHROPIC_REQUEST, "model": "claude-x"}  # only the model changes
    assert header(to_anthropic, ":path") == MESSAGES
    assert to_anthropic.credential == ANTHROPIC


@pytest.mark.parametrize("slot", [0, 1])
def test_every_try_sets_or_removes_each_provider_key_header(slot: int) -> None:
    """Envoy keeps one try's header changes for the next: nothing of the other kind may stay.

    Checked where it counts, in the message Envoy gets: the server adds the provider's key
    headers while encoding, and drops them from the removals (whatever order Envoy applies).
    """
    _, _, action = run(slot, OPENAI_REQUEST)
    assert isinstance(action, Continue) and action.credential is not None
    owned = {"authorization", "x-api-key", "api-key", "anthropic-version"}
    reply = codec.encode("request_body", action, lambda provider: credential_headers(provider, "k"))
    sets, removes, _ = mutation(reply)
    set_by_credential = {name for name, _ in credential_headers(action.credential, "k")}
    assert set(sets) & owned == set_by_credential
    assert set(removes) == owned - set_by_credential


# -- which target -------------------------------------------------------------------------------


def test_the_client_path_comes_from_the_metadata_not_a_rewritten_path() -> None:
    # An earlier try to Anthropic rewrote :path; Envoy kept it for this try.
    _, first, second = run(0, OPENAI_REQUEST, path=MESSAGES, client_path=CHAT)
    assert first == CONTINUE
    assert isinstance(second, Continue)
    assert check_sized(second) == {**OPENAI_REQUEST, "model": "gpt-4o"}  # read as OpenAI chat, not translated
    assert header(second, ":path") == CHAT  # set back for this try


def test_the_path_header_is_used_without_the_metadata() -> None:
    attempt = Attempt(POLICY)
    event = try_head(1)
    attributes = {k: v for k, v in event.attributes.items() if k != "tollway.path"}
    assert attempt.handle(RequestHeaders(event.headers, False, 0, attributes, event.upstream)) == CONTINUE
    action = attempt.handle(body_event(OPENAI_REQUEST))
    assert isinstance(action, Continue) and header(action, ":path") == MESSAGES


def test_without_the_metadata_the_path_header_loses_the_credentials_its_query_held() -> None:
    attempt = Attempt(POLICY)
    event = try_head(0, path=CHAT + "?api_key=tw-in-the-url-0123456789abcdef&trace=1")
    attributes = {k: v for k, v in event.attributes.items() if k != "tollway.path"}
    assert attempt.handle(RequestHeaders(event.headers, False, 0, attributes, event.upstream)) == CONTINUE
    action = attempt.handle(body_event(OPENAI_REQUEST))
    assert isinstance(action, Continue) and header(action, ":path") == CHAT + "?trace=1"


def test_the_slot_is_found_in_envoys_multi_line_text_too() -> None:
    metadata = base_pb2.Metadata()
    fields = struct_pb2.Struct()
    fields.update({"provider": "anthropic", "slot": "1"})
    metadata.filter_metadata["tollway"].CopyFrom(fields)
    for text in (text_format.MessageToString(metadata), text_format.MessageToString(metadata, as_one_line=True)):
        assert codec.upstream_of(dict({codec.HOST_METADATA: text})).slot == 1
    assert codec.upstream_of(dict({codec.HOST_METADATA: host_metadata(12)})).slot == 12
    assert codec.upstream_of(dict({})).slot is None


def test_a_model_no_longer_routed_is_still_sent_to_its_provider() -> None:
    # The policy changed between the router-level filter and this try: the provider still exists.
    _, first, second = run(1, OPENAI_REQUEST, targets="openai gpt-4o, anthropic claude-old")
    assert first == CONTINUE
    assert isinstance(second, Continue)
    sent = check_sized(second)
    assert sent["model"] == "claude-old" and sent["max_tokens"] == 4096
    assert second.credential == ANTHROPIC


# -- failures, in the target's error format -----------------------------------------------------

CHAIN_MISMATCH_OPENAI = {
    "error": {
        "message": "Tollway could not match this try to its route.",
        "type": "server_error",
        "param": None,
        "code": "chain_mismatch",
    }
}


def responds(action: object) -> tuple[int, Any]:
    assert isinstance(action, Respond), action
    return action.status, orjson.loads(action.body)


@pytest.mark.parametrize(
    ("slot", "targets"),
    [
        (None, SMART),  # no host metadata: not a chain endpoint
        ("2", SMART),  # out of range
        (1, None),  # no chain in the metadata
        (1, "garbled"),  # nothing decodable
        (1, "openai gpt-4o"),  # a shorter chain than the cluster
    ],
)
def test_a_try_that_matches_no_target_is_a_500(slot: int | str | None, targets: str | None) -> None:
    attempt = Attempt(POLICY)
    assert responds(attempt.handle(try_head(slot, targets))) == (500, CHAIN_MISMATCH_OPENAI)
    assert attempt.handle(body_event(OPENAI_REQUEST)) == CONTINUE  # already answered


def test_garbled_host_metadata_is_a_500() -> None:
    attempt = Attempt(POLICY)
    event = try_head(1)
    garbled = 'filter_metadata { key: "tollway" value { fields { key: "slot" value { number_value: 1 } } } }'
    attributes = {**event.attributes, codec.HOST_METADATA: garbled}
    assert responds(attempt.handle(envoy_head(event.headers, attributes))) == (
        500, CHAIN_MISMATCH_OPENAI
    )


def test_without_a_policy_a_try_is_a_500() -> None:
    assert responds(Attempt(None).handle(try_head(0)))[0] == 500


def test_a_chain_mismatch_for_an_anthropic_client_is_in_anthropics_format() -> None:
    status, body = responds(Attempt(POLICY).handle(try_head("5", path=MESSAGES)))
    assert (status, body) == (500, {"type": "error", "error": {
        "type": "api_error", "message": "Tollway could not match this try to its route."}})


def test_a_try_uses_the_policy_its_request_started_with_across_a_reload() -> None:
    """The alias and its Anthropic target leave the policy while the first try is upstream: the
    second try still gets the target's output limit and provider, not a 503 or the default."""
    after = compile_policy(textwrap.dedent("""\
        apiVersion: tollway/v1
        providers:
          openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
        models:
          gpt-4o: {provider: openai}
        teams:
          all: {workloads: [local-dev], models: ["*"]}
        """))
    assert "anthropic" not in after.providers and after.version != POLICY.version
    head = try_head(1)
    head.attributes["tollway." + upstream.POLICY] = POLICY.version  # routed before the reload
    attempt = Attempt(after, {POLICY.version: POLICY}.get)
    assert attempt.handle(head) == CONTINUE
    sent = check_sized(attempt.handle(body_event(OPENAI_REQUEST)))
    assert sent["max_tokens"] == 1000 and sent["model"] == "claude-x"
    status, _ = responds(Attempt(after, {}.get).handle(head))  # its policy no longer kept: gone
    assert status == 503


def test_a_try_keeps_its_policy_across_several_reloads(tmp_path: Any) -> None:
    """Two edits while the first try is upstream (the alias goes, then Anthropic itself): the
    worker the second try reaches still holds the policy the request started with (it used to
    keep only the one before its last reload: 503 provider_not_configured)."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_TEXT)
    publication = Publication()
    try:
        controller = PolicyController(str(path), publication, settle=0)  # written in place, read at once
        holder = PolicyHolder(publication)
        assert controller.start() and holder.current is not None
        started = holder.current.version
        without_alias = POLICY_TEXT.split("routing:")[0]
        path.write_text(without_alias)
        assert controller.check() and holder.current is not None and holder.current.alias("smart") is None
        path.write_text(without_alias.replace("  anthropic:\n    kind: anthropic\n"
                                              "    credential: {env: ANTHROPIC_API_KEY}\n", "").replace(
            '  claude-x:\n    provider: anthropic\n    price: {input: "1", output: "1"}\n', ""))
        assert controller.check() and holder.current is not None and "anthropic" not in holder.current.providers
        head = try_head(1)
        head.attributes["tollway." + upstream.POLICY] = started
        attempt = Service(RecordWriter(str(tmp_path / "r.jsonl")), policy=holder).attempt()
        assert attempt.handle(head) == CONTINUE
        sent = check_sized(attempt.handle(body_event(OPENAI_REQUEST)))
        assert sent["max_tokens"] == 1000 and sent["model"] == "claude-x"
    finally:
        publication.close()


def test_a_provider_missing_from_the_policy_is_a_503() -> None:
    status, body = responds(Attempt(POLICY).handle(try_head(1, "openai gpt-4o, mistral large-2")))
    assert status == 503
    assert body["error"]["code"] == "provider_not_configured"
    assert "'mistral'" in body["error"]["message"]


def test_a_target_that_cannot_express_the_request_says_why_in_its_format() -> None:
    # OpenAI's n: 2 cannot be asked of Anthropic. The router-level session leaves such a target out
    # of the chain when another can serve the request, so a try reaches it only when none can.
    _, first, second = run(1, {**OPENAI_REQUEST, "n": 2}, targets="anthropic claude-x, anthropic claude-y")
    assert first == CONTINUE
    status, body = responds(second)
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "'n'" in body["error"]["message"] and "anthropic" in body["error"]["message"]
    _, _, wrong = run(1, {**OPENAI_REQUEST, "stop": 5})  # invalid_type: wrong for any target
    assert responds(wrong)[0] == 400


def test_the_same_request_is_fine_for_the_openai_end() -> None:
    _, _, action = run(0, {**OPENAI_REQUEST, "n": 2})
    assert isinstance(action, Continue) and check_sized(action)["n"] == 2


@pytest.mark.parametrize(
    ("raw", "code"), [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_body")]
)
def test_a_body_that_is_not_a_json_object_is_a_400_in_the_targets_format(raw: bytes, code: str) -> None:
    _, _, to_openai = run(0, raw)
    status, body = responds(to_openai)
    assert status == 400 and body["error"]["code"] == code
    _, _, to_anthropic = run(1, raw)
    status, body = responds(to_anthropic)
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_an_azure_target_gets_its_deployment_path_and_keeps_the_model() -> None:
    payload = {**OPENAI_REQUEST, "model": "eu"}
    _, first, second = run(1, payload, targets="openai gpt-4o-mini, azure prod-deploy", alias="eu")
    assert first == CONTINUE
    assert isinstance(second, Continue)
    assert check_sized(second) == payload  # Azure: the deployment is in the path, the model is not rewritten
    assert header(second, ":path") == "/openai/deployments/prod-deploy/chat/completions?api-version=2024-10-21"
    assert header(second, ":authority") == "contoso.openai.azure.com"
    assert second.credential == AZURE
    assert set(second.remove_headers) == KEY_HEADERS


@pytest.mark.parametrize(("kind", "endpoint", "path"), [
    ("openai-compatible", "http://vllm.local:8000/v1", "/v1/chat/completions"),  # the SDKs' base URL
    ("openai-compatible", "http://vllm.local:8000", "/v1/chat/completions"),
    ("openai-compatible", "https://llm-gw.corp/vllm/v1", "/vllm/v1/chat/completions"),  # a proxy's prefix
    ("openai", "https://llm-gw.corp/openai/", "/openai/chat/completions"),  # as the SDK takes that base URL
    ("anthropic", "https://llm-gw.corp/claude", "/claude/v1/messages"),  # translated, behind its prefix
    ("openai-compatible", "https://generativelanguage.googleapis.com/v1beta/openai/",
     "/v1beta/openai/chat/completions"),  # a base URL without /v1: as the openai SDK reads it
    ("anthropic", "https://llm-gw.corp/claude/v1", "/claude/v1/messages"),
    ("azure-openai", "https://apim.corp/az/openai",
     "/az/openai/deployments/m/chat/completions?api-version=2024-10-21"),
    ("azure-openai", "https://contoso.openai.azure.com/openai/v1/",  # Azure's v1 base URL
     "/openai/deployments/m/chat/completions?api-version=2024-10-21"),
    # An APIM prefix whose name starts with "openai" is the gateway's, kept whole (the request lost it)
    ("azure-openai", "https://apim.corp.net/openai-gw",
     "/openai-gw/openai/deployments/m/chat/completions?api-version=2024-10-21"),
    ("azure-openai", "https://apim.corp.net/openai-gw/openai",
     "/openai-gw/openai/deployments/m/chat/completions?api-version=2024-10-21"),
    ("openai-compatible", "https://res.services.ai.azure.com/models", "/models/chat/completions"),  # AI Foundry
])
def test_a_providers_endpoint_path_goes_before_every_request_path(kind: str, endpoint: str, path: str) -> None:
    """An endpoint under a path (an API gateway, a company proxy) gets every request under it: the
    path was dropped, the proxy asked at its root."""
    extra = "anthropic_version: '2023-06-01'" if kind == "anthropic" else "api_version: '2024-10-21'" \
        if kind == "azure-openai" else ""
    policy = compile_policy(textwrap.dedent(f"""\
        apiVersion: tollway/v1
        providers:
          p: {{kind: {kind}, endpoint: "{endpoint}"{", " + extra if extra else ""}}}
        models:
          m: {{provider: p}}
        teams:
          all: {{workloads: [local-dev], models: ["*"]}}
        """))
    target = policy.models["m"]
    _, sent = upstream.prepare(apis.CHAT_COMPLETIONS, {**OPENAI_REQUEST, "model": "m"}, target, CHAT)
    assert (sent or CHAT) == path
    _, queried = upstream.prepare(apis.CHAT_COMPLETIONS, {**OPENAI_REQUEST, "model": "m"}, target, CHAT + "?x=1")
    assert (queried or CHAT + "?x=1").startswith(path.partition("?")[0])  # the client's query kept
    if kind in ("openai", "openai-compatible"):  # served in the client's own API
        assert (queried or CHAT + "?x=1").endswith("?x=1")


def test_an_anthropic_client_reaches_azure_translated() -> None:
    _, _, action = run(1, ANTHROPIC_REQUEST, targets="openai gpt-4o-mini, azure prod-deploy", path=MESSAGES,
                       alias="eu")
    assert isinstance(action, Continue)
    sent = check_sized(action)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert header(action, ":path") == "/openai/deployments/prod-deploy/chat/completions?api-version=2024-10-21"


def test_response_events_and_the_close_are_passed() -> None:
    attempt = Attempt(POLICY)
    attempt.handle(try_head(0))
    assert attempt.handle(ResponseHeaders({":status": "200"}, False, 2)) == CONTINUE
    assert attempt.handle(ResponseBody(b"{}", True, 3)) == CONTINUE
    assert attempt.handle(StreamClosed(4)) is None


# -- the servicer: real protobuf messages ------------------------------------------------------


def service(tmp_path: Any) -> Service:
    return Service(
        RecordWriter(str(tmp_path / "records.jsonl")),
        policy=SimpleNamespace(current=POLICY, started=lambda version: None),  # type: ignore[arg-type]
        credentials=CredentialStore(environ=ENV),
    )


def headers_message(slot: int, targets: str = SMART, path: str = CHAT, client_path: str = CHAT,
                    alias: str = "smart") -> bytes:
    attributes = struct_pb2.Struct()
    attributes.update({codec.HOST_METADATA: host_metadata(slot)})
    metadata = struct_pb2.Struct()
    metadata.update({upstream.TARGETS: targets, upstream.CLIENT_PATH: client_path, upstream.ALIAS: alias,
                     upstream.TEAM: "all"})
    request = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
            base_pb2.HeaderValue(key=":method", raw_value=b"POST"),
            base_pb2.HeaderValue(key=":path", raw_value=path.encode()),
            base_pb2.HeaderValue(key="authorization", raw_value=b"Bearer sk-openai-test"),  # an earlier try's key
        ])),
        attributes={"envoy.filters.http.ext_proc": attributes},
        metadata_context=base_pb2.Metadata(filter_metadata={"tollway": metadata}),
    )
    return request.SerializeToString()


def body_message(value: Any) -> bytes:
    message = pb.ProcessingRequest(request_body=pb.HttpBody(body=orjson.dumps(value), end_of_stream=True))
    return message.SerializeToString()


def mutation(reply: pb.ProcessingResponse) -> tuple[dict[str, str], list[str], bytes]:
    common = reply.request_body.response
    sets = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
    return sets, list(common.header_mutation.remove_headers), common.body_mutation.body


def test_an_upstream_call_is_served_by_an_attempt(tmp_path: Any) -> None:
    call = ExtProcCall(service(tmp_path), upstream=True)
    assert isinstance(call.session, Attempt)
    [first] = call.message(headers_message(1))
    assert pb.ProcessingResponse.FromString(first) == pb.ProcessingResponse(request_headers={})
    [second] = call.message(body_message(OPENAI_REQUEST))
    sets, removes, body = mutation(pb.ProcessingResponse.FromString(second))
    assert sets["x-api-key"] == "sk-ant-test" and sets["anthropic-version"] == "2023-06-01"
    assert sets[":path"] == MESSAGES and sets[":authority"] == "api.anthropic.com"
    assert sets["content-length"] == str(len(body))
    assert "authorization" in removes and "authorization" not in sets
    sent = orjson.loads(body)
    assert sent["model"] == "claude-x" and sent["system"] == "Be brief." and sent["max_tokens"] == 1000
    assert call.end() == (0, "")


def test_the_first_try_gets_the_openai_key(tmp_path: Any) -> None:
    call = ExtProcCall(service(tmp_path), upstream=True)
    call.message(headers_message(0))
    [reply] = call.message(body_message(OPENAI_REQUEST))
    sets, removes, body = mutation(pb.ProcessingResponse.FromString(reply))
    assert sets["authorization"] == "Bearer sk-openai-test"
    assert {"x-api-key", "anthropic-version", "api-key"} <= set(removes)
    assert orjson.loads(body)["model"] == "gpt-4o"


def test_a_router_call_is_served_by_a_session(tmp_path: Any) -> None:
    from ext_proc.core.session import Session

    assert isinstance(ExtProcCall(service(tmp_path)).session, Session)


def test_a_keyless_target_does_not_inherit_an_earlier_tries_key(tmp_path: Any) -> None:
    """Chain openai -> local (no credential): try 1 set ``authorization: Bearer <OpenAI key>`` and
    Envoy keeps it for try 2, so try 2 must remove it, or the OpenAI key goes to the local server."""
    call = ExtProcCall(service(tmp_path), upstream=True)
    call.message(headers_message(1, targets="openai gpt-4o-mini, local llama-3", alias="onprem"))
    [reply] = call.message(body_message({**OPENAI_REQUEST, "model": "onprem"}))
    sets, removes, body = mutation(pb.ProcessingResponse.FromString(reply))
    assert orjson.loads(body)["model"] == "llama-3"
    assert sets[":authority"] == "vllm.local:8000"
    assert "authorization" in removes or "authorization" in sets


class FakeContext:
    """The part of grpc.aio.ServicerContext the Processor reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def process(tmp_path: Any, metadata: tuple[tuple[str, str], ...], messages: list[bytes]) -> list[pb.ProcessingResponse]:
    processor = Processor(service(tmp_path))

    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        for data in messages:
            yield pb.ProcessingRequest.FromString(data)

    async def collect() -> list[pb.ProcessingResponse]:
        return [reply async for reply in processor.process(requests(), FakeContext(metadata))]  # type: ignore[arg-type]

    return asyncio.run(collect())


def test_grpcio_streams_with_the_upstream_metadata_are_attempts(tmp_path: Any) -> None:
    metadata = ((FILTER_METADATA.decode(), "upstream"), ("user-agent", "envoy"))
    first, second = process(tmp_path, metadata, [headers_message(1), body_message(OPENAI_REQUEST)])
    assert first == pb.ProcessingResponse(request_headers={})
    sets, removes, body = mutation(second)
    assert sets["x-api-key"] == "sk-ant-test" and sets[":path"] == MESSAGES and "authorization" in removes
    assert orjson.loads(body)["model"] == "claude-x"


def test_grpcio_streams_without_it_are_router_sessions(tmp_path: Any) -> None:
    # A router-level session: it drops the client's credential and routing headers at once, and
    # (no key, no known workload) refuses the request before the body.
    [reply] = process(tmp_path, (("user-agent", "envoy"),), [headers_message(1)])
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 401


def test_a_provider_without_endpoint_gets_the_host_its_chain_endpoint_was_rendered_with() -> None:
    # The compiled provider knows no host (no endpoint in the policy, not a kind with a default):
    # the try takes the one `tollway envoy` put in the endpoint's metadata, never the previous try's.
    policy = compile_policy(POLICY_TEXT.replace("    endpoint: http://vllm.local:8000\n", ""))
    assert policy.providers["local"].host is None
    text = ('filter_metadata { key: "tollway" value { fields { key: "host" value { string_value: "vllm.svc:8000" } }'
            ' fields { key: "provider" value { string_value: "local" } } fields { key: "slot" value { string_value:'
            ' "1" } } } } ')
    head = try_head(1, targets="openai gpt-4o, local llama-3")
    attempt = Attempt(policy)
    attempt.handle(envoy_head(head.headers, {**head.attributes, codec.HOST_METADATA: text}))
    action = attempt.handle(body_event(OPENAI_REQUEST))
    assert isinstance(action, Continue) and header(action, ":authority") == "vllm.svc:8000"
    # With an endpoint, the policy's host wins.
    attempt = Attempt(POLICY)
    attempt.handle(envoy_head(head.headers, {**head.attributes, codec.HOST_METADATA: text}))
    action = attempt.handle(body_event(OPENAI_REQUEST))
    assert isinstance(action, Continue) and header(action, ":authority") == "vllm.local:8000"


# -- tries abandoned at the first-byte timeout -------------------------------------------------


THREE = "openai gpt-4o, anthropic claude-x, local llama"


def timeout_retry(slot: int, mark: str | None, abandoned: str | None = None) -> Any:
    """The answer to a try's head, Envoy marking it (``x-envoy-is-timeout-retry``) as it does a retry."""
    head = try_head(slot, targets=THREE)
    headers = dict(head.headers)
    if mark is not None:
        headers[upstream.TIMEOUT_RETRY_HEADER] = mark
    attributes = {**head.attributes, codec.HOST_METADATA: host_metadata(slot)}
    if abandoned is not None:
        attributes["tollway." + upstream.ABANDONED] = abandoned
    return Attempt(POLICY).handle(envoy_head(headers, attributes))


def test_a_try_after_one_abandoned_at_its_timeout_names_that_target_in_the_metadata() -> None:
    answer = timeout_retry(1, "true")
    assert answer == Continue(remove_headers=(upstream.TIMEOUT_RETRY_HEADER,),
                              metadata=((upstream.ABANDONED, "openai gpt-4o"),))


def test_a_third_try_adds_its_abandoned_predecessor_to_the_earlier_ones() -> None:
    answer = timeout_retry(2, "true", abandoned="openai gpt-4o")
    assert isinstance(answer, Continue)
    assert answer.metadata == ((upstream.ABANDONED, "openai gpt-4o, anthropic claude-x"),)
    assert upstream.decode_chain(answer.metadata[0][1]) == [("openai", "gpt-4o"), ("anthropic", "claude-x")]


def test_a_retry_after_an_error_answer_abandons_nothing_and_the_mark_never_reaches_the_provider() -> None:
    assert timeout_retry(1, "false") == Continue(remove_headers=(upstream.TIMEOUT_RETRY_HEADER,))
    assert timeout_retry(0, None) == CONTINUE  # a first try: nothing to do, nothing sent more


def test_the_router_level_reads_the_abandoned_tries_with_the_answers_head() -> None:
    attributes = {codec.HOST_METADATA: host_metadata(2), codec.ATTEMPTS_ATTRIBUTE: "3",
                  codec.ABANDONED_ATTRIBUTE: "openai gpt-4o, anthropic claude-x"}
    assert codec.upstream_of(attributes).abandoned == "openai gpt-4o, anthropic claude-x"
    assert attributes == {}
    assert codec.upstream_of({codec.ATTEMPTS_ATTRIBUTE: "1"}).abandoned is None


# -- a tls:// listener: the try's metadata is the caller's word ---------------------------------


def mesh_try(workload: str | None, slot: int, payload: Any = OPENAI_REQUEST, **head: Any) -> tuple[Any, Any]:
    """A try on a tls:// listener, from the workload the stream's certificate names."""
    attempt = Attempt(POLICY, workload=workload, mtls=True)
    first = attempt.handle(try_head(slot, **head))
    if isinstance(first, Respond):
        return first, None
    return first, attempt.handle(body_event(payload))


def refused(answer: Any) -> bool:
    return (isinstance(answer, Respond) and answer.status == 403
            and orjson.loads(answer.body)["error"]["code"] == "attempt_refused")


@pytest.mark.parametrize("workload", [None, "spiffe://cluster.local/ns/rogue/sa/app"])
def test_on_tls_a_try_from_a_workload_the_policy_does_not_know_is_refused(workload: str | None) -> None:
    """Any pod of the mesh may open a stream marked as a try and write its chain: without a
    workload of the policy no provider key is handed out, for any provider, alias or team."""
    for slot, targets, alias in ((0, SMART, "smart"), (1, SMART, "smart"), (0, "openai gpt-4o", None),
                                 (0, "azure prod-deploy", None), (1, "openai gpt-4o-mini, local llama-3", "onprem")):
        first, second = mesh_try(workload, slot, targets=targets, alias=alias)
        assert refused(first) and second is None, (slot, targets, alias)


def test_on_tls_a_try_is_served_only_within_its_workloads_own_plan() -> None:
    # b-app's team b: the alias's plan of team b (its own limit), whatever team the metadata names.
    first, second = mesh_try("b-app", 1, team="all")
    assert first == CONTINUE and isinstance(second, Continue)
    assert second.credential == ANTHROPIC and check_sized(second)["max_tokens"] == 2000
    # A provider/model outside the plan, or no alias (a bare provider target), is refused.
    for targets, alias in (("openai gpt-4o, azure prod-deploy", "smart"), ("openai gpt-4o, anthropic claude-y",
                                                                            "smart"),
                           ("openai gpt-4o, anthropic claude-x", None), ("openai gpt-4o, anthropic claude-x", "nope")):
        first, _ = mesh_try("b-app", 1, targets=targets, alias=alias)
        assert refused(first), (targets, alias)


def test_on_tls_a_try_needs_its_team_to_be_allowed_the_alias() -> None:
    team_b = '  b:\n    workloads: [b-app]\n    models: '
    text = POLICY_TEXT.replace(team_b + '["*"]', team_b + "[gpt-4o]")
    assert text != POLICY_TEXT
    policy = compile_policy(text)
    attempt = Attempt(policy, workload="b-app", mtls=True)
    assert refused(attempt.handle(try_head(0)))


def test_on_tls_an_upstream_stream_gets_no_key_for_an_unknown_certificate(tmp_path: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    on_tls = service(tmp_path)
    on_tls.mtls = True
    call = ExtProcCall(on_tls, upstream=True, peer="spiffe://cluster.local/ns/rogue/sa/app")
    [reply] = call.message(headers_message(0))
    answer = pb.ProcessingResponse.FromString(reply)
    assert answer.immediate_response.status.code == 403
    assert b"sk-openai-test" not in reply and b"sk-ant-test" not in reply
    assert "refused attempt_refused" in caplog.text and "ns/rogue/sa/app" in caplog.text
    known = ExtProcCall(on_tls, upstream=True, peer="local-dev")  # a workload of the policy: served
    known.message(headers_message(0))
    [reply] = known.message(body_message(OPENAI_REQUEST))
    assert mutation(pb.ProcessingResponse.FromString(reply))[0]["authorization"] == "Bearer sk-openai-test"


def test_on_tls_a_trusted_relays_try_is_believed_as_the_unix_sockets_is(tmp_path: Any,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """tollway serve --tls-relay-san: a central gateway's Envoy (its callers use Tollway keys) names
    no workload; its tries are its own router-level session's, served as on the Unix socket. The same
    certificate without the relay flag is refused."""
    on_tls = service(tmp_path)
    on_tls.mtls = True
    gateway = "spiffe://cluster.local/ns/platform/sa/gateway"  # names no workload of the policy
    for slot, key in ((0, "Bearer sk-openai-test"), (1, None)):
        relayed = ExtProcCall(on_tls, upstream=True, peer=gateway, relay=True)
        [first] = relayed.message(headers_message(slot))
        assert not pb.ProcessingResponse.FromString(first).HasField("immediate_response")
        [reply] = relayed.message(body_message(OPENAI_REQUEST))
        headers = mutation(pb.ProcessingResponse.FromString(reply))[0]
        if key:
            assert headers["authorization"] == key
        else:
            assert headers["x-api-key"] == "sk-ant-test"
    assert "attempt_refused" not in caplog.text
    strict = ExtProcCall(on_tls, upstream=True, peer=gateway)  # not a relay: the certificate's workload decides
    [reply] = strict.message(headers_message(0))
    assert pb.ProcessingResponse.FromString(reply).immediate_response.status.code == 403
    assert b"sk-openai-test" not in reply and "refused attempt_refused" in caplog.text
