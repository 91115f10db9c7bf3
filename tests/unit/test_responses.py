"""The Responses API's pieces: its reader, which provider serves it how, the two translations
(requests, answers, errors), the fake provider's answers against the SDK's types, token
counting, the model catalogue and the step that answers it."""

from __future__ import annotations

import functools
import re
import typing
from typing import Any

import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response import IncompleteDetails

from ext_proc.core import upstream
from ext_proc.core.actions import Continue, Respond
from ext_proc.core.events import RequestBody, RequestHeaders
from ext_proc.core.session import Session
from ext_proc.llm import apis, providers, runtime, tokens
from ext_proc.llm.errors import ClientError
from ext_proc.llm.sse import SSEDecoder, SSEEvent
from ext_proc.llm.translate import TranslationError, responses_to_anthropic, responses_to_chat
from ext_proc.llm.translate.common import INCOMPLETE_FROM_FINISH
from ext_proc.mock import responses as mock
from ext_proc.mock.http import Request
from ext_proc.mock.provider import MockProvider
from ext_proc.policy import catalogue, decide
from ext_proc.policy.compile import PolicyError, compile_policy

EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": SCHEMA}


# -- which provider serves a Responses client, and how -------------------------------------------


def test_each_kind_serves_responses_natively_or_through_the_right_api() -> None:
    served = {name: kind.serves(apis.RESPONSES) for name, kind in providers.KINDS.items()}
    assert served == {"openai": apis.RESPONSES, "azure-openai": apis.RESPONSES, "anthropic": apis.MESSAGES,
                      "openai-compatible": apis.CHAT_COMPLETIONS}


def test_azure_takes_responses_on_its_v1_path_with_the_deployment_in_the_body() -> None:
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  az: {kind: azure-openai, api_version: "2024-10-21", endpoint: "https://x.openai.azure.com"}
models:
  gpt: {provider: az, model: my-deployment}
teams:
  t: {workloads: [w], models: ["*"]}
""")
    target = policy.models["gpt"]
    body, path = upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": "hi"}, target, "/v1/responses")
    assert (path, body["model"]) == ("/openai/v1/responses", "my-deployment")
    body, path = upstream.prepare(apis.CHAT_COMPLETIONS, {"model": "gpt", "messages": []}, target, "/v1/x")
    assert path == "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"


def shared_key_target(kind: str, stored: bool) -> Any:
    """The one model of a policy whose provider (``kind``) has a key every team shares, unless
    ``stored`` (``stored_responses``: the key serves one team)."""
    name = {"openai": "gpt", "anthropic": "claude"}[kind]
    policy = compile_policy(f"""
apiVersion: tollway/v1
providers:
  p: {{kind: {kind}, stored_responses: {str(stored).lower()}}}
models:
  {name}: {{provider: p}}
teams:
  t: {{workloads: [w], models: ["*"]}}
""")
    return policy.models[name]

@pytest.mark.parametrize("stored", [False, True])
def test_stored_responses_are_reached_natively_only_where_the_policy_says_the_key_is_one_teams(stored: bool) -> None:
    target = shared_key_target("openai", stored)
    reference = [{"type": "message", "role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"}]
    for field, value, param in (("previous_response_id", "resp_1", "previous_response_id"),
                                ("conversation", {"id": "conv_1"}, "conversation"),
                                ("input", reference, "input[1]"),  # a stored item, by its id
                                ("input", [{"id": "msg_1"}], "input[0]"),  # its type is optional
                                # A reference is one whatever else it carries (a stray role).
                                ("input", [{"type": "item_reference", "id": "msg_1", "role": "user"}], "input[0]"),
                                # Stored reasoning, by its id: the Agents SDK gives them back so.
                                ("input", [{"type": "reasoning", "id": "rs_1", "summary": []}, *reference[:1]],
                                 "input[0]")):
        body = {"model": "gpt", "input": "hi", field: value}
        if stored:
            assert upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")[0][field] == value
        else:
            with pytest.raises(ClientError) as refused:
                upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")
            assert (refused.value.status, refused.value.param) == (400, param)
    # Reasoning given back with its encrypted_content (store: false, include) carries itself.
    given = [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"}, *reference[:1]]
    assert upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": given}, target, "/v1/responses")
    if not stored:  # the message says how to give reasoning back without the provider storing it
        with pytest.raises(ClientError, match=r'"store": false and "include": \["reasoning.encrypted_content"\]'):
            upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": [{"type": "reasoning", "id": "rs_1"}]}, target,
                             "/v1/responses")
    with pytest.raises(ClientError, match="Background responses"):  # never: their results are not served
        upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": "hi", "background": True}, target, "/v1/responses")
    assert upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": "hi", "background": False}, target,
                            "/v1/responses")


@pytest.mark.parametrize("stored", [False, True])
def test_items_given_by_their_type_and_id_alone_are_stored_ones(stored: bool) -> None:
    """An input item that carries its type and id but none of what the provider would act on (an
    image_generation_call without its result, a message without its content, a function call
    without its arguments...) is one the provider reads from its storage by that id (OpenAI's
    multi-turn image editing): refused as an item_reference is. Items given back whole, with their
    ids (as the SDKs do without store), pass; an MCP approval must answer a request in the input."""
    target = shared_key_target("openai", stored)
    asked = {"role": "user", "content": "describe the image"}
    refused_items = [
        {"type": "image_generation_call", "id": "ig_1"},
        {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": None},
        {"type": "message", "id": "msg_1"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"},
        {"id": "msg_1", "role": "assistant"},  # no type: a message, without its content
        {"type": "function_call", "id": "fc_1"},
        {"type": "function_call", "id": "fc_1", "call_id": "c"},
        {"type": "function_call_output", "id": "fco_1"},
        {"type": "code_interpreter_call", "id": "ci_1"},
        {"type": "code_interpreter_call", "id": "ci_1", "code": None, "outputs": None, "status": "completed"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "file_search_call", "id": "fs_1"},
        {"type": "computer_call", "id": "cu_1"},
        {"type": "mcp_call", "id": "mcp_1"},
        {"type": "mcp_list_tools", "id": "mcpl_1"},
        {"type": "mcp_approval_request", "id": "mcpr_1"},
        {"type": "mcp_approval_response", "id": "mcpa_1"},
        {"type": "local_shell_call", "id": "ls_1"},
        {"type": "shell_call", "id": "sh_1"},
        {"type": "custom_tool_call", "id": "ct_1"},
        {"type": "compaction", "id": "cmp_1"},
        {"type": "some_future_item", "id": "x_1", "status": "completed"},  # a type not known yet: only its id
        {"type": "program", "id": "pg_1", "call_id": "c"},
        # (review: a status or an empty error is no ended item: the provider would read the stored one)
        {"type": "image_generation_call", "id": "ig_3", "status": "failed"},
        {"type": "image_generation_call", "id": "ig_3", "status": "incomplete"},
        {"type": "image_generation_call", "id": "ig_3", "status": "completed", "error": {}},
        {"type": "image_generation_call", "id": "ig_3", "status": "failed", "error": False},
        {"type": "code_interpreter_call", "id": "ci_3", "status": "incomplete"},
        {"type": "code_interpreter_call", "id": "ci_3", "status": "failed", "code": None},
        {"type": "program_output", "id": "pgo_1", "call_id": "c"},
    ]
    for item in refused_items:
        body = {"model": "gpt", "input": [asked, item]}
        if stored:
            assert upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")[0]["input"][1] == item
            continue
        with pytest.raises(ClientError) as refused:
            upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")
        assert (refused.value.status, refused.value.code, refused.value.param) == \
            (400, "unsupported_parameter", "input[1]"), item
        assert "every team here shares" in refused.value.message
    # An approval of a request the input does not hold: the provider's stored one, by its id.
    approval = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}
    if not stored:
        with pytest.raises(ClientError) as refused:
            upstream.prepare(apis.RESPONSES, {"model": "gpt", "input": [asked, approval]}, target, "/v1/responses")
        assert (refused.value.status, refused.value.param) == (400, "input[1].approval_request_id")
    # Whole items given back with their ids (store: false, multi-turn) carry themselves.
    whole = [
        asked,
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "get_weather", "arguments": "{}",
         "status": "completed"},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBORw0KGgo="},
        # (review: what the SDKs give back that carries no result, code or single action)
        {"type": "image_generation_call", "id": "ig_2", "status": "failed", "result": None,
         "error": {"code": "moderation_blocked", "message": "blocked"}},
        {"type": "code_interpreter_call", "id": "ci_2", "code": None, "outputs": None, "container_id": "cntr_1",
         "status": "incomplete"},
        {"type": "computer_call", "id": "cu_1", "call_id": "c2", "pending_safety_checks": [], "status": "completed",
         "actions": [{"type": "click", "button": "left", "x": 1, "y": 2}, {"type": "type", "text": "hi"}]},
        {"type": "function_call_output", "id": "fco_2", "output": "done"},  # a program's call: no call_id
        {"type": "code_interpreter_call", "id": "ci_1", "code": "print(1)", "outputs": None,
         "container_id": "cntr_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed",
         "action": {"type": "search", "query": "weather"}},
        {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "s", "name": "f", "arguments": "{}"},
        {"type": "mcp_approval_response", "id": "mcpa_1", "approval_request_id": "mcpr_1", "approve": True},
        {"type": "custom_tool_call", "id": "ct_1", "call_id": "c2", "name": "grep", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "found"},
        {"role": "user", "content": "and now?"},
    ]
    body = {"model": "gpt", "input": whole, "store": False}
    assert upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")[0]["input"] == whole


@pytest.mark.parametrize("stored", [False, True])
def test_stored_files_vector_stores_and_containers_are_reached_only_where_the_key_is_one_teams(stored: bool) -> None:
    """Files, vector stores and containers are what the provider stores for its key, whoever made
    them with it: on a key every team shares, one team could read another's by their id. A native
    request naming one is refused as stored responses are (400, param naming the place), unless the
    provider's key serves one team (stored_responses); a chat file part by its file_id too."""
    target = shared_key_target("openai", stored)
    said = [{"type": "input_text", "text": "look"}]
    file = {"type": "input_file", "file_id": "file-1"}
    image = {"type": "input_image", "file_id": "file-2"}
    cases = [
        ({"input": [{"role": "user", "content": [*said, file]}]}, "input[0].content[1].file_id"),
        ({"input": [{"type": "message", "role": "user", "content": [image]}]}, "input[0].content[0].file_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [file]}]},
         "input[0].output[0].file_id"),
        ({"input": "hi", "prompt": {"id": "pmpt_1", "variables": {"doc": file}}}, "prompt.variables.doc.file_id"),
        ({"input": "hi", "tools": [TOOL, {"type": "file_search", "vector_store_ids": ["vs_1"]}]},
         "tools[1].vector_store_ids"),
        ({"input": "hi", "tools": [{"type": "code_interpreter", "container": "cntr_1"}]}, "tools[0].container"),
        ({"input": "hi", "tools": [{"type": "code_interpreter",
                                    "container": {"type": "auto", "file_ids": ["file-1"]}}]},
         "tools[0].container.file_ids"),
        ({"input": "hi", "tools": [{"type": "image_generation", "model": "gpt-image-1",
                                    "input_image_mask": {"file_id": "file-3"}}]}, "tools[0].input_image_mask.file_id"),
        ({"input": [{"type": "computer_call_output", "call_id": "c",  # a screenshot by its file
                     "output": {"type": "computer_screenshot", "file_id": "file-4"}}]}, "input[0].output.file_id"),
        # The hosted shell tool's environment: a container by its id, files and uploaded skills in a new one.
        ({"input": "hi", "tools": [{"type": "shell", "environment": {"type": "container_reference",
                                                                     "container_id": "cntr_1"}}]},
         "tools[0].environment.container_id"),
        ({"input": "hi", "tools": [{"type": "shell", "environment": {"type": "container_auto",
                                                                     "file_ids": ["file-1"]}}]},
         "tools[0].environment.file_ids"),
        ({"input": "hi", "tools": [{"type": "shell", "environment": {"type": "container_auto", "skills": [
            {"type": "inline", "name": "s", "description": "d", "source": {}},
            {"type": "skill_reference", "skill_id": "skill_1"}]}}]}, "tools[0].environment.skills[1].skill_id"),
        # An MCP server reached through the organisation's Secure MCP Tunnel, by its id.
        ({"input": "hi", "tools": [{"type": "mcp", "server_label": "s", "tunnel_id": "tun_1"}]}, "tools[0].tunnel_id"),
        # Tools given in the input (additional_tools, a tool search's output) are tools too.
        ({"input": [{"type": "additional_tools", "role": "developer",
                     "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}]},
         "input[0].tools[0].vector_store_ids"),
        ({"input": [{"type": "tool_search_output", "call_id": "c",
                     "tools": [TOOL, {"type": "code_interpreter", "container": "cntr_1"}]}]},
         "input[0].tools[1].container"),
    ]
    for fields, param in cases:
        body = {"model": "gpt", **fields}
        if stored:
            assert upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")[0] == body
            continue
        with pytest.raises(ClientError) as refused:
            upstream.prepare(apis.RESPONSES, body, target, "/v1/responses")
        assert (refused.value.status, refused.value.code, refused.value.param) == (400, "unsupported_parameter", param)
        assert "every team here shares" in refused.value.message
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": [
        {"type": "text", "text": "read"}, {"type": "file", "file": {"file_id": "file-1"}}]}]}
    if stored:
        assert upstream.prepare(apis.CHAT_COMPLETIONS, chat, target, "/v1/chat/completions")[0] == chat
    else:
        with pytest.raises(ClientError) as refused:
            upstream.prepare(apis.CHAT_COMPLETIONS, chat, target, "/v1/chat/completions")
        assert (refused.value.status, refused.value.param) == (400, "messages[1].content[1].file.file_id")
    # An audio answer given back by its id: OpenAI replays the one it stored under that id.
    audio = {"model": "gpt", "modalities": ["text"], "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "audio": {"id": "audio_1"}},
        {"role": "user", "content": "say it again"}]}
    if stored:
        assert upstream.prepare(apis.CHAT_COMPLETIONS, audio, target, "/v1/chat/completions")[0] == audio
    else:
        with pytest.raises(ClientError) as refused:
            upstream.prepare(apis.CHAT_COMPLETIONS, audio, target, "/v1/chat/completions")
        assert (refused.value.status, refused.value.code, refused.value.param) == \
            (400, "unsupported_parameter", "messages[1].audio.id")
    # What carries itself passes: inline files and images, a new container, a tool's own settings.
    inline = {"model": "gpt", "input": [{"role": "user", "content": [
        {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,AAAA"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
        "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "web_search"},
                  {"type": "file_search", "vector_store_ids": []},
                  {"type": "shell", "environment": {"type": "container_auto", "file_ids": [], "skills": [
                      {"type": "inline", "name": "s", "description": "d", "source": {}}]}},
                  {"type": "shell", "environment": {"type": "local"}},
                  {"type": "mcp", "server_label": "s", "server_url": "https://mcp.example.com"},
                  {"type": "mcp", "server_label": "g", "connector_id": "connector_gmail", "authorization": "tok"}]}
    assert upstream.prepare(apis.RESPONSES, inline, target, "/v1/responses")[0] == inline
    data = {"model": "gpt", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,AAAA"}}]}]}
    assert upstream.prepare(apis.CHAT_COMPLETIONS, data, target, "/v1/chat/completions")[0] == data


def test_an_image_generation_tool_calls_only_an_image_model_the_team_may_use() -> None:
    """A Responses image_generation tool calls an image model (gpt-image-1 unless it names one)
    with the provider's key: one the policy never listed, for any team, was reached. It must be a
    model the team may use (access's 404 / 403, naming tools[i].model), not an alias."""
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  o: {kind: openai}
models:
  gpt: {provider: o}
  gpt-image-1: {provider: o}
  gpt-image-1-mini: {provider: o}
routing:
  aliases:
    drawing: {targets: [{provider: o, model: gpt-image-1}]}
teams:
  art: {workloads: [a], models: [gpt, gpt-image-1, drawing]}
  text: {workloads: [t], models: [gpt]}
""")
    art = decide.identify(policy, {}, {}, "a")
    text = decide.identify(policy, {}, {}, "t")

    def refused(principal: Any, tool: dict[str, Any]) -> tuple[int, str, str | None] | None:
        body = {"model": "gpt", "input": "draw", "tools": [TOOL, tool]}
        try:
            decide.tool_access(policy, principal, apis.RESPONSES, body)
        except ClientError as exc:
            return exc.status, exc.code, exc.param
        return None

    image = {"type": "image_generation"}
    assert refused(art, image) is None  # gpt-image-1, the default, which the team may use
    assert refused(art, {**image, "model": "gpt-image-1"}) is None
    assert refused(text, image) == (403, "model_not_allowed", "tools[1].model")
    assert refused(art, {**image, "model": "gpt-image-1-mini"}) == (403, "model_not_allowed", "tools[1].model")
    assert refused(art, {**image, "model": "dall-e-3"}) == (404, "model_not_found", "tools[1].model")
    assert refused(art, {**image, "model": "drawing"}) == (400, "invalid_value", "tools[1].model")
    assert refused(art, {**image, "model": 3}) == (400, "invalid_type", "tools[1].model")
    # Other APIs' tools are not Responses' built-in tools.
    decide.tool_access(policy, text, apis.CHAT_COMPLETIONS, {"model": "gpt", "tools": [image]})
    # The access step asks it: the request is refused before anything goes upstream.
    for workload, status in (("t", 403), ("a", None)):
        session = Session(policy, workload, runtime=runtime.fixed(now=1_755_000_000))
        head = {":method": "POST", ":path": "/v1/responses", "x-request-id": "r", "content-type": "application/json"}
        assert isinstance(session.handle(RequestHeaders(head, False, 1)), Continue)
        body = orjson.dumps({"model": "gpt", "input": "draw a cat", "tools": [image]})
        answer = session.handle(RequestBody(body, True, 2))
        if status is None:
            assert isinstance(answer, Continue)
        else:
            assert isinstance(answer, Respond) and answer.status == status
            assert orjson.loads(answer.body)["error"]["param"] == "tools[0].model"


def test_stored_responses_is_for_the_kinds_that_store_them() -> None:
    with pytest.raises(PolicyError, match="stored_responses"):
        compile_policy("""
apiVersion: tollway/v1
providers:
  a: {kind: openai-compatible, endpoint: "http://127.0.0.1:9/v1", stored_responses: true}
models:
  c: {provider: a}
teams:
  t: {workloads: [w], models: ["*"]}
""")


@pytest.mark.parametrize("stored", [False, True])
def test_anthropic_files_and_containers_are_reached_only_where_the_key_is_one_teams(stored: bool) -> None:
    """Anthropic's Files API and code execution containers are the key's too: a Messages request
    naming a file (a file source, a container upload, inside a tool result too) or a container to
    reuse is refused on a key every team shares, unless the provider's key serves one team."""
    target = shared_key_target("anthropic", stored)
    said = {"type": "text", "text": "look"}
    document = {"type": "document", "source": {"type": "file", "file_id": "file_011"}}
    image = {"type": "image", "source": {"type": "file", "file_id": "file_012"}}
    cases = [
        ({"messages": [{"role": "user", "content": [said, document]}]}, "messages[0].content[1].source.file_id"),
        ({"messages": [{"role": "user", "content": [image]}]}, "messages[0].content[0].source.file_id"),
        ({"messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "file_013"}]}]},
         "messages[0].content[0].file_id"),
        ({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}, {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [said, image]}]}]},
         "messages[2].content[0].content[1].source.file_id"),
        ({"messages": [{"role": "user", "content": "go"}], "container": "container_011"}, "container"),
        ({"messages": [{"role": "user", "content": "go"}], "container": {"id": "container_011", "skills": []}},
         "container.id"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "content", "content": [
            said, image]}}]}]}, "messages[0].content[0].source.content[1].source.file_id"),
        ({"messages": [{"role": "user", "content": "go"}],  # a skill uploaded to the key's workspace
          "container": {"skills": [{"type": "anthropic", "skill_id": "pptx"}, {"type": "custom", "skill_id": "s_1"}]}},
         "container.skills[1]"),
    ]
    for api, path in ((apis.MESSAGES, "/v1/messages"), (apis.COUNT_TOKENS, "/v1/messages/count_tokens")):
        for fields, param in cases:
            body = {"model": "claude", "max_tokens": 10, **fields}
            if stored:
                assert upstream.prepare(api, body, target, path)[0] == body
                continue
            with pytest.raises(ClientError) as refused:
                upstream.prepare(api, body, target, path)
            assert (refused.value.status, refused.value.code, refused.value.param) == (
                400, "unsupported_parameter", param)
    inline = {"model": "claude", "max_tokens": 10, "container": {"skills": [{"type": "anthropic", "skill_id": "x"}]},
              "messages": [{"role": "user", "content": [
                  {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}},
                  {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}
    assert upstream.prepare(apis.MESSAGES, inline, target, "/v1/messages")[0] == inline


def test_stored_responses_is_for_a_provider_one_team_reaches() -> None:
    """`stored_responses: true` on a provider two teams reach was accepted: under the shared key, one
    team's requests reached the other's stored responses by previous_response_id. It is refused,
    naming the teams that reach it: through "*", a model, or an alias's plan for the team."""
    text = """\
apiVersion: tollway/v1
providers:
  o: {kind: openai, stored_responses: true}
  o2: {kind: openai, cluster: o}
models:
  gpt: {provider: o, aliases: [gpt-latest]}
  other: {provider: o2}
teams:
  search: {workloads: [w1], models: ["*"]}
  support: {workloads: [w2], models: [gpt-latest]}
  ops: {workloads: [w3], models: [chat]}
  ads: {workloads: [w4], models: [other, chat]}
routing:
  aliases:
    chat:
      targets: [{provider: o, model: gpt}]
      teams:
        ads: {targets: [{provider: o2, model: other}]}
"""
    with pytest.raises(PolicyError) as refused:
        compile_policy(text, "p.yaml")
    assert str(refused.value) == (
        "p.yaml:3:21: providers.o.stored_responses: teams 'search', 'support' and 'ops' reach this provider "
        "(through their 'models'): anyone holding its key reads the responses it stored, so each could use "
        "another's by previous_response_id; stored_responses is only for a provider whose key serves one team "
        "(give each team a provider with a key of its own, or remove stored_responses)")
    # One team reaches it (ads, through its own plan for the alias, reaches another provider).
    one = text.replace('search: {workloads: [w1], models: ["*"]}', "search: {workloads: [w1], models: [other]}")
    one = one.replace("models: [gpt-latest]", "models: [other]")
    assert compile_policy(one).providers["o"].stored_responses


SHARED_KEY = """\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_KEY}}
  openai_app: {kind: openai, credential: {env: OPENAI_KEY}, stored_responses: true}
models:
  gpt-4o-mini: {provider: openai}
  gpt-app: {provider: openai_app, model: gpt-4o}
teams:
  app: {workloads: [w1], models: [gpt-app]}
  other: {workloads: [w2], models: [gpt-4o-mini]}
"""


def test_stored_responses_on_a_key_another_teams_provider_uses_is_refused() -> None:
    """`stored_responses: true` on a provider only 'app' reaches was accepted although another entry
    with the same credential served 'other': OpenAI stores 'other''s responses under that key (by
    default), and 'app' continued them by previous_response_id through its provider. The key stores,
    not the entry: the same variable (or file) for a provider another team reaches is refused."""
    with pytest.raises(PolicyError) as refused:
        compile_policy(SHARED_KEY, "p.yaml")
    assert str(refused.value) == (
        "p.yaml:4:61: providers.openai_app.stored_responses: uses the same key (environment variable OPENAI_KEY) "
        "as provider 'openai', which team 'other' reaches: the responses stored for that key are readable "
        "through this provider by previous_response_id, so team 'app' could continue theirs; give this "
        "provider a key of its own (another OpenAI project), or remove stored_responses")
    as_file = SHARED_KEY.replace("{env: OPENAI_KEY}}", "{file: /run/keys/openai}}").replace(
        "{env: OPENAI_KEY}, stored", "{file: /run/keys/../keys/openai}, stored")
    with pytest.raises(PolicyError, match=re.escape("uses the same key (file /run/keys/openai)")):
        compile_policy(as_file)
    # A key of its own, or the shared key's other provider reached by 'app' only, is fine.
    assert compile_policy(SHARED_KEY.replace("{env: OPENAI_KEY}, stored", "{env: APP_KEY}, stored"))
    own = SHARED_KEY.replace("models: [gpt-app]", "models: [gpt-app, gpt-4o-mini]").replace(
        "models: [gpt-4o-mini]", "models: [o3]").replace("models:\n", "models:\n  o3: {provider: third}\n")
    assert compile_policy(own.replace("providers:\n", "providers:\n  third: {kind: openai, credential: {env: K3}}\n"))


def test_stored_responses_on_the_same_key_value_is_refused_where_keys_are_read() -> None:
    """Two variables holding the same key are one key: compared by digest where the keys are read
    (the server's load, `policy check`), named by where they come from, never by value."""
    policy = compile_policy(SHARED_KEY.replace("{env: OPENAI_KEY}, stored", "{env: APP_KEY}, stored"), "p.yaml")
    keys = {"OPENAI_KEY": "sk-the-same-key-0001", "APP_KEY": "sk-the-same-key-0001"}
    clashes = policy.shared_stored_keys(lambda source: keys.get(source.env or ""))
    assert clashes == [
        "p.yaml: providers.openai_app.stored_responses: its key (environment variable APP_KEY) is the same as "
        "provider 'openai''s (environment variable OPENAI_KEY), which team 'other' reaches: the responses stored "
        "for that key are readable through this provider by previous_response_id; give this provider a key of "
        "its own (another OpenAI project), or remove stored_responses"]
    assert "sk-the-same" not in clashes[0]
    keys["APP_KEY"] = "sk-another-key-0002"
    assert policy.shared_stored_keys(lambda source: keys.get(source.env or "")) == []
    assert policy.shared_stored_keys(lambda source: None) == []  # keys not here: nothing to compare


# -- the reader ------------------------------------------------------------------------------------


def _events(data: bytes) -> list[SSEEvent]:
    return SSEDecoder().feed(data)


def test_the_reader_takes_usage_from_the_terminal_event_and_counts_events() -> None:
    gen = mock.Generation(id="resp_1", created=1, model="gpt-4o-x", prompt_tokens=12, pieces=("a", " b"))
    reader = apis.RESPONSES.reader()
    for event in _events(b"".join(mock.responses_events(gen, {}))):
        reader.feed(event)
    assert reader.complete and reader.model == "gpt-4o-x" and reader.error is None
    assert (reader.usage.input_tokens, reader.usage.output_tokens, reader.usage.reasoning_tokens) == (12, 2, 0)
    assert reader.sequence == 10 and reader.text() == "a b"  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", [
    b'event: response.failed\ndata: {"type":"response.failed","sequence_number":3,"response":{"model":"m",'
    b'"status":"failed","error":{"code":"server_error","message":"boom"},"usage":null}}\n\n',
    b'event: error\ndata: {"type":"error","code":"server_error","message":"boom","sequence_number":3}\n\n',
])
def test_a_failure_event_is_an_error_and_never_completes(event: bytes) -> None:
    reader = apis.RESPONSES.reader()
    for sse in _events(event):
        reader.feed(sse)
    assert (reader.complete, reader.error) == (False, "server_error")


def test_bad_requests_are_refused_in_openais_format() -> None:
    with pytest.raises(Exception) as refused:
        apis.RESPONSES.parse(b'{"model": "m", "input": 3}')
    assert getattr(refused.value, "param", None) == "input"
    assert not apis.RESPONSES.ask_for_usage(apis.RESPONSES.parse(b'{"model": "m", "input": "x", "stream": true}'))


# -- requests translated -----------------------------------------------------------------------------

CONVERSATION: list[Any] = [
    {"role": "developer", "content": "Use metric units."},
    {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Weather here?"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"}]},
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
]
REQUEST: dict[str, Any] = {
    "model": "m", "instructions": "Be brief.", "input": CONVERSATION, "tools": [TOOL], "tool_choice": "auto",
    "max_output_tokens": 50, "temperature": 0.5, "store": True, "reasoning": {"effort": "low"},
    "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}}, "include": ["x"], "stream": True,
}


def test_a_request_reaches_a_chat_server_as_the_same_conversation() -> None:
    sent = responses_to_chat.request(REQUEST, "llama")
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                               "parameters": SCHEMA}}]
    assert (sent["max_tokens"], sent["temperature"], sent["tool_choice"]) == (50, 0.5, "auto")
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}
    assert sent["stream_options"] == {"include_usage": True}
    assert not {"store", "reasoning", "include", "input", "instructions"} & set(sent)


def test_a_request_reaches_anthropic_with_system_tools_and_tool_results() -> None:
    sent = responses_to_anthropic.request(REQUEST, "claude-x", default_max_tokens=1000)
    assert sent["system"].startswith("Be brief.\n\nUse metric units.") and '"city"' in sent["system"]
    assert sent["max_tokens"] == 50 and sent["stream"] is True
    assert sent["tools"] == [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"][-1] == {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                                  "input": {"city": "Paris"}}
    assert sent["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "Sunny"}]
    assert responses_to_anthropic.request({"model": "m", "input": "hi"}, "c", default_max_tokens=77)["max_tokens"] == 77


@pytest.mark.parametrize(("change", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["vs"]}]}, "tools[1]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0]"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]}, "input[0]"),
])
def test_what_cannot_be_translated_is_refused_naming_the_field(change: dict[str, Any], param: str) -> None:
    body = {"model": "m", "input": "hi", **change}
    with pytest.raises(TranslationError) as refused:
        responses_to_anthropic.request(body, "claude-x")
    assert refused.value.param == param
    if param != "input[0]" or "oops" not in str(change):  # a chat server takes arguments as they are
        with pytest.raises(TranslationError):
            responses_to_chat.request(body, "llama")


IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
         "AAAABJRU5ErkJggg==")
SHOT: list[Any] = [
    {"role": "user", "content": "Screenshots please"},
    {"type": "function_call", "call_id": "call_1", "name": "shot", "arguments": "{}"},
    {"type": "function_call", "call_id": "call_2", "name": "shot", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1",
     "output": [{"type": "input_text", "text": "here"}, {"type": "input_image", "image_url": IMAGE}]},
    {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_image", "image_url": IMAGE}]},
    {"role": "user", "content": "Which is brighter?"},
]


def test_images_a_function_returned_reach_a_chat_server_in_a_user_message_after_the_tool_messages() -> None:
    """Chat Completions takes text only in a ``tool`` message (an ``image_url`` part there was
    sent, and refused): the images follow the run of tool messages in a user message, each call's
    after a text naming it, and each tool message says so. Claude takes them in the tool_result."""
    sent = responses_to_chat.request({"model": "m", "input": SHOT}, "llama")["messages"]
    image = {"type": "image_url", "image_url": {"url": IMAGE}}
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "text", "text": "here"},
            {"type": "text", "text": "[1 image(s) attached in the following user message]"}]},
        {"role": "tool", "tool_call_id": "call_2", "content": [
            {"type": "text", "text": "[1 image(s) attached in the following user message]"}]},
        {"role": "user", "content": [{"type": "text", "text": "Images returned by tool call call_1:"}, image,
                                     {"type": "text", "text": "Images returned by tool call call_2:"}, image]},
        {"role": "user", "content": "Which is brighter?"},
    ]
    claude = responses_to_anthropic.request({"model": "m", "input": SHOT}, "claude-x")["messages"]
    result = claude[2]["content"][0]
    assert result["type"] == "tool_result" and [b["type"] for b in result["content"]] == ["text", "image"]


def test_malformed_input_for_claude_is_the_clients_error_and_keeps_claude_in_the_chain() -> None:
    """An image whose data URL is not base64 is input no API takes: ``invalid_request``, as for a
    chat client (it was reported as ``unsupported_for_provider``, "served by anthropic"), and an
    alias keeps its Claude target, whose try answers that 400, instead of leaving it out as one
    that cannot express the request and sending the request on to the next target."""
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  o: {kind: openai}
  a: {kind: anthropic}
models:
  gpt: {provider: o}
routing:
  aliases:
    vision:
      targets: [{provider: a, model: claude-x}, {provider: o, model: gpt}]
teams:
  t: {workloads: [w], models: ["*"]}
""")
    body = {"model": "vision", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png,not-base64"}]}]}
    with pytest.raises(TranslationError) as translated:
        responses_to_anthropic.request(body, "claude-x")
    assert translated.value.code == "invalid_request"
    plan = policy.aliases["vision"].plan
    with pytest.raises(ClientError) as refused:
        upstream.prepare(apis.RESPONSES, dict(body), plan.targets[0], "/v1/responses")
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, "invalid_request", "input[0]")
    assert "served by" not in refused.value.message
    assert decide.chain(plan, apis.RESPONSES, None, "vision",
                        expresses=functools.partial(upstream.expresses, apis.RESPONSES, body)) == plan.targets
    # What Claude has no counterpart for still leaves it out: the OpenAI target serves it.
    searching = {**body, "input": "News?", "tools": [{"type": "web_search"}]}
    assert decide.chain(plan, apis.RESPONSES, None, "vision",
                        expresses=functools.partial(upstream.expresses, apis.RESPONSES, searching)) == plan.targets[1:]


# -- answers translated ------------------------------------------------------------------------------


def test_answers_become_response_objects_the_sdk_reads() -> None:
    tool = mock.ToolCall.build("toolu_1", "get_weather", SCHEMA)
    text = mock.Generation(id="msg_01", created=1, model="claude-x", prompt_tokens=10, pieces=("Hi", " there"),
                           truncated=True)
    called = mock.Generation(id="msg_02", created=1, model="claude-x", prompt_tokens=10, pieces=(), tool=tool)
    fixed = runtime.fixed()
    out = Response.model_validate(responses_to_anthropic.response(orjson.loads(mock.anthropic_message_json(text)),
                                                                  runtime=fixed))
    assert (out.output_text, out.status, out.incomplete_details.reason) == ("Hi there", "incomplete",  # type: ignore[union-attr]
                                                                           "max_output_tokens")
    assert out.id == "resp_01" and out.usage is not None and out.usage.input_tokens == 10
    out = Response.model_validate(responses_to_anthropic.response(orjson.loads(mock.anthropic_message_json(called)),
                                                                  runtime=fixed))
    (call,) = out.output
    assert (call.type, call.call_id, call.arguments, out.status) == ("function_call", "toolu_1", '{"city":"mock"}',
                                                                   "completed")
    chat = mock.Generation(id="chatcmpl-9", created=5, model="llama", prompt_tokens=4, pieces=(), tool=tool)
    out = Response.model_validate(responses_to_chat.response(orjson.loads(mock.openai_chat_json(chat)),
                                                             runtime=fixed))
    assert out.id == "resp_9" and out.output[0].type == "function_call" and out.created_at == 5


@pytest.mark.parametrize(("stop_reason", "incomplete"), [
    ("end_turn", None), ("stop_sequence", None), ("tool_use", None), ("pause_turn", None),
    ("max_tokens", "max_output_tokens"), ("model_context_window_exceeded", "max_output_tokens"),
    ("refusal", "content_filter"), ("a_reason_from_next_year", None),
])
def test_an_answer_cut_short_is_incomplete_whole_and_streamed(stop_reason: str, incomplete: str | None) -> None:
    """Claude's answer cut by the context window filling up (Sonnet 4.5 and later) is as
    incomplete as one cut by max_tokens: ``incomplete`` (``max_output_tokens``), the only reason
    the SDK knows that fits, never a complete-looking ``completed``."""
    from tests.unit.test_translate_openai_to_anthropic import TEXT_MESSAGE, text_stream

    assert set(INCOMPLETE_FROM_FINISH.values()) <= set(typing.get_args(IncompleteDetails.model_fields["reason"]
                                                                      .annotation.__args__[0]))  # Optional[Literal]
    status = "incomplete" if incomplete else "completed"
    whole = Response.model_validate(responses_to_anthropic.response({**TEXT_MESSAGE, "stop_reason": stop_reason}))
    assert (whole.status, whole.incomplete_details and whole.incomplete_details.reason) == (status, incomplete)
    translator = responses_to_anthropic.StreamTranslator(model="claude-x")
    raw = b"".join(translator.event(name, data) for name, data in text_stream(["Cut he"], stop_reason))
    last = EVENT.validate_json(raw.rsplit(b"data: ", 1)[1])
    assert (last.type, last.response.status) == (f"response.{status}", status)
    assert (last.response.incomplete_details and last.response.incomplete_details.reason) == incomplete


def test_provider_errors_reach_the_client_in_openais_format() -> None:
    body = orjson.loads(responses_to_anthropic.error(429, mock.anthropic_error(429)))
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert orjson.loads(responses_to_chat.error(502, b"<html><title>Bad gateway</title></html>"))["error"][
        "message"] == "The provider answered HTTP 502: Bad gateway"
    passed = orjson.loads(responses_to_chat.error(400, mock.openai_error(400, "nope", param="input")))
    assert passed["error"] == {"message": "nope", "type": "invalid_request_error", "param": "input", "code": None}


# -- the fake provider, checked against the SDK's types ------------------------------------------------


def _mock(body: dict[str, Any], path: str = "/v1/responses", **controls: str) -> Any:
    request = Request("POST", path, "", [(b"content-type", b"application/json")], orjson.dumps(body), controls)
    return MockProvider().handle(request)


@pytest.mark.parametrize("extra", [{}, {"tools": [TOOL], "tool_choice": "required"}, {"max_output_tokens": 2},
                                   {"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"}}])
def test_the_fake_provider_answers_as_the_sdk_types_say(extra: dict[str, Any]) -> None:
    body = {"model": "gpt-4o", "instructions": "Be brief.", "input": "Say hi", **extra}
    reply = _mock(body)
    answer = Response.model_validate_json(reply.body)
    assert answer.usage is not None and answer.usage.input_tokens == 3 + 2 + 3 + 2
    reply = _mock({**body, "stream": True})
    parsed = [EVENT.validate_json(event.data) for event in _events(b"".join(reply.events))]
    assert [event.sequence_number for event in parsed] == list(range(len(parsed)))
    assert parsed[-1].response.output == answer.output and parsed[-1].response.usage == answer.usage


def test_the_fake_provider_scopes_failures_and_answers_tool_results_with_text() -> None:
    assert _mock({"model": "m", "input": "x"}, **{"openai-status": "429"}).status == 429
    assert _mock({"model": "m", "input": "x"}, **{"anthropic-status": "429"}).status == 200
    answered = {"model": "m", "tools": [TOOL], "tool_choice": "required", "input": [
        {"type": "function_call_output", "call_id": "c", "output": "Sunny"}]}
    assert Response.model_validate_json(_mock(answered).body).output_text
    azure = _mock({"model": "my-deployment", "input": "x"}, path="/openai/v1/responses")
    assert Response.model_validate_json(azure.body).model == "my-deployment"


# -- token counting ------------------------------------------------------------------------------------


def test_a_responses_request_counts_as_the_chat_request_it_renders_to() -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hello world"}]}
    response = {"model": "gpt-4o", "instructions": "Be brief.", "input": "hello world"}
    counted = tokens.count_request("openai.responses", response, "gpt-4o")
    assert counted.tokens == tokens.count_request("openai.chat.completions", chat, "gpt-4o").tokens
    assert (counted.exact, counted.method) == (False, "openai-responses")
    with_tools = tokens.count_request("openai.responses", {**response, "tools": [TOOL]}, "gpt-4o")
    assert with_tools.tokens > counted.tokens
    loop = tokens.count_request("openai.responses", {"model": "gpt-4o", "input": CONVERSATION}, "gpt-4o")
    assert loop.tokens > 20 and not loop.exact


# -- the catalogue --------------------------------------------------------------------------------------


def test_a_team_sees_its_models_their_aliases_and_its_routing_aliases_only() -> None:
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai}
  anthropic: {kind: anthropic}
models:
  gpt-4o: {provider: openai, aliases: [gpt-4o-latest], context_window: 128000}
  claude: {provider: anthropic}
routing:
  aliases:
    chat: {targets: [{provider: openai, model: gpt-4o}, {provider: anthropic, model: claude}]}
teams:
  a: {workloads: [wa], models: [gpt-4o, chat]}
  b: {workloads: [wb], models: [claude]}
""")
    assert [(m.id, m.owned_by) for m in catalogue.visible(policy, "a")] == [
        ("chat", "tollway"), ("gpt-4o", "openai"), ("gpt-4o-latest", "openai")]
    assert [m.id for m in catalogue.visible(policy, "b")] == ["claude"]
    assert catalogue.find(policy, "b", "gpt-4o") is None and catalogue.find(policy, "nobody", "claude") is None
    listed = orjson.loads(apis.ANTHROPIC_MODELS.listing(catalogue.visible(policy, "a"), "limit=2&after_id=chat"))
    assert [m["id"] for m in listed["data"]] == ["gpt-4o", "gpt-4o-latest"] and listed["has_more"] is False
    assert listed["data"][0]["max_input_tokens"] == 128000


def test_a_streamed_call_without_arguments_gets_an_empty_object() -> None:
    """Claude streams an empty fragment for a tool that takes no arguments: the Responses client
    gets "{}" (as OpenAI sends), in the delta, the done event and the completed response."""
    from tests.unit.test_translate_openai_to_anthropic import NO_ARGUMENTS

    translator = responses_to_anthropic.StreamTranslator(model="claude-x")
    raw = b"".join(translator.event(name, data) for name, data in NO_ARGUMENTS) + translator.end()
    events = [orjson.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if b"data: " in block]
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    completed = next(e for e in events if e["type"] == "response.completed")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert (deltas, done["arguments"], completed["response"]["output"][0]["arguments"]) == ("{}", "{}", "{}")


def test_parallel_calls_whose_fragments_interleave_are_items_open_side_by_side() -> None:
    """A chat server interleaving two calls' fragments: each call is an item of its own
    ``output_index``, its fragments go to it, and no item is done before the finish reason (done
    with its whole arguments, in order), as the completed response says."""
    translator = responses_to_chat.StreamTranslator(model="llama")
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama"}

    def call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": arguments}
        if name:
            function["name"] = name
        return {"index": index, "id": f"call_{index}", "type": "function", "function": function} if name \
            else {"index": index, "function": function}

    deltas = [{"role": "assistant", "content": "Looking."}, {"tool_calls": [call(0, '{"q":', "lookup")]},
              {"tool_calls": [call(1, '{"city":', "weather")]}, {"tool_calls": [call(0, '"a"}')]},
              {"tool_calls": [call(1, '"b"}')]}]
    chunks = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    raw = b"".join(translator.feed(SSEEvent("", orjson.dumps(c), b"")) for c in chunks)
    raw += translator.feed(SSEEvent("", b"[DONE]", b"")) + translator.end()
    events = [orjson.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if b"data: " in block]
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    args = {1: "", 2: ""}
    done: list[int] = []
    for event in events:
        if event["type"] == "response.function_call_arguments.delta":
            assert event["output_index"] not in done, event  # never a fragment to an item done
            args[event["output_index"]] += event["delta"]
        elif event["type"] == "response.output_item.done":
            done.append(event["output_index"])
            if event["item"]["type"] == "function_call":
                assert event["item"]["arguments"] == args[event["output_index"]]
    assert args == {1: '{"q":"a"}', 2: '{"city":"b"}'} and done == [0, 1, 2]
    completed = events[-1]
    assert completed["type"] == "response.completed"
    assert [(item["type"], item.get("arguments")) for item in completed["response"]["output"]] == [
        ("message", None), ("function_call", '{"q":"a"}'), ("function_call", '{"city":"b"}')]


def test_a_translated_stream_without_usage_says_null_not_zero() -> None:
    """A chat server that ignores include_usage reports none: the completed response's usage is
    null, as the same answer given whole says, never 0 tokens."""
    translator = responses_to_chat.StreamTranslator(model="llama")
    chunks = [{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
              {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "llama",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    raw = b"".join(translator.feed(SSEEvent("", orjson.dumps(c), b"")) for c in chunks)
    raw += translator.feed(SSEEvent("", b"[DONE]", b"")) + translator.end()
    events = [EVENT.validate_json(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if b"data: " in block]
    assert events[-1].type == "response.completed" and events[-1].response.usage is None


def test_cache_writes_a_chat_server_reports_reach_the_responses_client() -> None:
    """OpenAI's chat usage counts cache writes in ``prompt_tokens_details.cache_write_tokens``:
    the translated response says them in ``input_tokens_details``, whole and streamed."""
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
             "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x", "usage": usage,
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}
    whole = responses_to_chat.response(answer, runtime=runtime.fixed())
    translator = responses_to_chat.StreamTranslator(model="gpt-x")
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]},
              {**head, "choices": [], "usage": usage}]
    raw = b"".join(translator.feed(SSEEvent("", orjson.dumps(c), b"")) for c in chunks)
    raw += translator.feed(SSEEvent("", b"[DONE]", b"")) + translator.end()
    streamed = [orjson.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if b"data: " in block][-1]
    assert streamed["type"] == "response.completed"
    for got in (whole["usage"], streamed["response"]["usage"]):
        assert got["input_tokens_details"] == {"cached_tokens": 20, "cache_write_tokens": 30}
        assert got["input_tokens"] == 100
