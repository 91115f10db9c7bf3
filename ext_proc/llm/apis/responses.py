"""OpenAI's Responses API (``POST /v1/responses``).

Requests carry ``input`` (a string, or a list of items: messages, function calls and their
outputs, reasoning items) and optional ``instructions``; errors are OpenAI's
``{"error": {"message", "type", "param", "code"}}``. A JSON answer is a ``response`` object
whose ``usage`` holds ``input_tokens`` (cache reads included, in
``input_tokens_details.cached_tokens``) and ``output_tokens`` (reasoning included, in
``output_tokens_details.reasoning_tokens``).

A stream is typed SSE events (``event: response.output_text.delta`` with the same ``type`` in
its data), each with a ``sequence_number`` counting from 0: ``response.created``,
``response.in_progress``, output items and their deltas, then one terminal event.
``response.completed`` (status ``completed``) and ``response.incomplete`` (the model stopped at
``max_output_tokens`` or a content filter) end the answer properly and carry the usage: every
stream reports usage, nothing needs asking. ``response.failed`` and ``error`` are the provider
failing: the reader notes their code and the stream is not complete. An error Tollway adds to a
client's stream is an ``error`` event, numbered after the events the client already received
(the ``openai`` SDK yields it as a ``ResponseErrorEvent``; the Agents SDK raises on it), after
an empty response's ``response.created`` and ``.in_progress`` when the client got nothing yet
(``ext_proc.core.response``: the SDK's ``responses.stream()`` takes no event before
``response.created``)."""

from __future__ import annotations

from typing import Any

import orjson

from ext_proc.llm.errors import ClientError
from ext_proc.llm.sse import SSEEvent
from ext_proc.llm.usage import apply_responses, apply_service_tier, apply_streamed

from .base import ParsedRequest, Reader, safe_code
from .openai import OpenAIAPI

_TERMINAL = frozenset({"response.completed", "response.incomplete"})
_FAILED = frozenset({"response.failed", "error"})
_DELTAS = frozenset({
    "response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta",
    "response.reasoning_summary_text.delta", "response.reasoning_text.delta",
})


# What an output item given back must carry for the provider to act on it without reading its
# stored copy by the item's id: each group, one of its fields (present, not null). The fields the
# API requires of the item (a request lacking one is valid only as a lookup), or, where they may be
# null, the ones the item's content is in (an image_generation_call's image is its ``result``).
_CARRIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "message": (("content",),),
    "function_call": (("call_id",), ("name",), ("arguments",)),
    "function_call_output": (("output",),),  # (its call_id may be absent: a program's call)
    "custom_tool_call": (("call_id",), ("name",), ("input",)),
    "custom_tool_call_output": (("call_id",), ("output",)),
    "computer_call": (("call_id",), ("action", "actions")),  # (the GA tool's batched actions)
    "computer_call_output": (("call_id",), ("output",)),
    "image_generation_call": (("result",),),
    "code_interpreter_call": (("code", "outputs"),),
    "web_search_call": (("action",),),
    "file_search_call": (("queries",),),
    "local_shell_call": (("call_id",), ("action",)),
    "local_shell_call_output": (("output",),),
    "shell_call": (("call_id",), ("action",)),
    "shell_call_output": (("call_id",), ("output",)),
    "apply_patch_call": (("call_id",), ("operation",)),
    "apply_patch_call_output": (("call_id",),),
    "mcp_list_tools": (("server_label",), ("tools",)),
    "mcp_approval_request": (("server_label",), ("name",), ("arguments",)),
    "mcp_approval_response": (("approval_request_id",), ("approve",)),
    "mcp_call": (("server_label",), ("name",), ("arguments",)),
    "compaction": (("encrypted_content",),),
    "tool_search_call": (("arguments",),),
    "tool_search_output": (("tools",),),
    "program": (("code",),),
    "program_output": (("result",),),
}
# An item that ended without its content, passed back as the SDK gives it: an image generation
# that failed with its error (``moderation_blocked``), a code interpreter call cut short in its
# container (both fields the SDK always writes; a status alone is no such item).
_ENDED = frozenset({"incomplete", "failed"})
# What every item may carry beside its content: an item of no other field is only its id.
_LABELS = frozenset({"type", "id", "status"})


def stored_state(payload: dict[str, Any]) -> str | None:
    """The field by which a Responses request refers to what the provider stores (its earlier
    turns): ``previous_response_id``, ``conversation`` or an item given by its id (``input[3]``):
    any ``item_reference`` (whatever else it carries), an item with its id but without what the
    provider would act on (:data:`_CARRIES`: a message of no ``content``, typed or not, an
    ``image_generation_call`` of no ``result``, a ``function_call`` without its ``arguments``...;
    an item of a type not listed there, when it carries nothing but its type, id and status), a
    ``reasoning`` item with its id but without its ``encrypted_content`` (the provider reads the
    reasoning it stored under that id), or an ``mcp_approval_response`` answering a request that
    is not in the input (``input[3].approval_request_id``: the stored one); None when the request
    carries its whole conversation."""
    for name in ("previous_response_id", "conversation"):
        if payload.get(name) is not None:
            return name
    given = payload.get("input")
    items = given if isinstance(given, list) else []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "mcp_approval_response" and not _asked(items, item.get("approval_request_id")):
            return f"input[{index}].approval_request_id"
        if item.get("id") is None:
            continue
        if kind == "item_reference" or (kind == "reasoning" and not item.get("encrypted_content")) \
                or _only_its_id(item, "message" if kind is None else kind):
            return f"input[{index}]"
    return None


def _only_its_id(item: dict[str, Any], kind: Any) -> bool:
    """Whether ``item`` (given with its id) lacks what the provider would act on without its stored copy."""
    groups = _CARRIES.get(kind) if isinstance(kind, str) else None
    if _ended(item, kind):
        return False
    if groups is None:
        return kind != "reasoning" and item.keys() <= _LABELS
    return not all(any(item.get(field) is not None for field in group) for group in groups)


def _ended(item: dict[str, Any], kind: Any) -> bool:
    """Whether ``item`` is one that ended without its content as the SDK gives it back (see :data:`_ENDED`)."""
    if item.get("status") not in _ENDED:
        return False
    if kind == "image_generation_call":
        error = item.get("error")
        return item.get("status") == "failed" and isinstance(error, dict) and bool(error.get("code"))
    return kind == "code_interpreter_call" and isinstance(item.get("container_id"), str)


def _asked(items: list[Any], request: Any) -> bool:
    """Whether ``items`` hold the ``mcp_approval_request`` of id ``request`` (None: no id, nothing to find)."""
    return request is None or any(isinstance(item, dict) and item.get("type") == "mcp_approval_request"
                                  and item.get("id") == request for item in items)


def stored_objects(payload: dict[str, Any]) -> str | None:
    """The first place where a Responses request names, by id, an object the provider stores for
    its key (whoever uploaded or made it with that key): a file (``input_file`` / ``input_image``
    ``file_id`` in an input item's content or a function call's output, in the prompt's
    ``variables``, an image_generation tool's ``input_image_mask``), a vector store
    (``file_search``'s ``vector_store_ids``), a container (``code_interpreter``'s ``container``
    given by its id, or files put in an ``auto`` one: its ``file_ids``; a ``shell`` tool's
    ``environment``: a ``container_reference``'s ``container_id``, a ``container_auto``'s
    ``file_ids`` and ``skill_reference`` skills), an ``mcp`` tool's Secure MCP Tunnel
    (``tunnel_id``): in the request's ``tools`` or those an input item gives (``additional_tools``,
    ``tool_search_output``). None when it names none."""
    given = payload.get("input")
    for index, item in enumerate(given if isinstance(given, list) else ()):
        if not isinstance(item, dict):
            continue
        for field in ("content", "output"):
            found = _file_part(item.get(field), f"input[{index}].{field}")
            if found is not None:
                return found
    prompt = payload.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    for name, value in variables.items() if isinstance(variables, dict) else ():
        if _file_ref(value):
            return f"prompt.variables.{name}.file_id"
    for index, item in enumerate(given if isinstance(given, list) else ()):
        found = _stored_tools(item.get("tools") if isinstance(item, dict) else None, f"input[{index}].tools")
        if found is not None:
            return found
    return _stored_tools(payload.get("tools"), "tools")


def _stored_tools(tools: Any, at: str) -> str | None:
    """The first place where ``tools`` (a request's, or an ``additional_tools`` or
    ``tool_search_output`` input item's) name a stored object by its id."""
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        found = _stored_tool(tool, f"{at}[{index}]") if isinstance(tool, dict) else None
        if found is not None:
            return found
    return None


def _stored_tool(tool: dict[str, Any], at: str) -> str | None:
    kind = tool.get("type")
    if kind == "file_search" and tool.get("vector_store_ids"):
        return f"{at}.vector_store_ids"
    container = tool.get("container")
    if kind == "code_interpreter" and isinstance(container, str):
        return f"{at}.container"
    if kind == "code_interpreter" and isinstance(container, dict) and container.get("file_ids"):
        return f"{at}.container.file_ids"
    mask = tool.get("input_image_mask")
    if kind == "image_generation" and isinstance(mask, dict) and mask.get("file_id") is not None:
        return f"{at}.input_image_mask.file_id"
    if kind == "mcp" and tool.get("tunnel_id") is not None:
        return f"{at}.tunnel_id"
    environment = tool.get("environment")
    if kind == "shell" and isinstance(environment, dict):
        return _stored_environment(environment, f"{at}.environment")
    return None


def _stored_environment(environment: dict[str, Any], at: str) -> str | None:
    """Where a ``shell`` tool's environment names a stored object: a container by its
    ``container_id``, files (``file_ids``) or uploaded skills (``skill_reference``) put in a new one."""
    if environment.get("container_id") is not None:
        return f"{at}.container_id"
    if environment.get("file_ids"):
        return f"{at}.file_ids"
    skills = environment.get("skills")
    for index, skill in enumerate(skills if isinstance(skills, list) else ()):
        if isinstance(skill, dict) and skill.get("skill_id") is not None:
            return f"{at}.skills[{index}].skill_id"
    return None


def _file_part(parts: Any, at: str) -> str | None:
    """The first content part of ``parts`` (a list) that names a stored file by its ``file_id``;
    ``parts`` one such part itself (a computer call's output, its screenshot)."""
    if isinstance(parts, dict):
        return f"{at}.file_id" if _file_ref(parts) else None
    for index, part in enumerate(parts if isinstance(parts, list) else ()):
        if _file_ref(part):
            return f"{at}[{index}].file_id"
    return None


def _file_ref(part: Any) -> bool:
    return isinstance(part, dict) and part.get("file_id") is not None


def stored_reasoning(payload: dict[str, Any], name: str) -> bool:
    """Whether ``name`` (what :func:`stored_state` found) is a ``reasoning`` item given by its id."""
    given = payload.get("input")
    if not name.startswith("input[") or not name.endswith("]") or not isinstance(given, list):
        return False
    item = given[int(name[6:-1])]
    return isinstance(item, dict) and item.get("type") == "reasoning"


class ResponsesReader(Reader):
    """Usage and completion from the terminal event (or the whole ``response`` object).

    ``sequence`` is the number of events read: the ``sequence_number`` the next event of the
    stream would carry.
    """

    __slots__ = ("sequence",)

    def __init__(self) -> None:
        super().__init__()
        self.sequence = 0

    def _body(self, payload: dict[str, Any]) -> None:
        apply_responses(self.usage, payload.get("usage"))
        apply_service_tier(self.usage, payload)
        self._finished(payload)
        if payload.get("status") == "failed":
            self.error = _failure_code(payload.get("error"))

    def _event(self, event: SSEEvent) -> None:
        data = event.data
        if not data:
            return
        self.sequence += 1
        name = event.event
        payload: dict[str, Any] | None = None
        if not name:  # the event line is optional in SSE: the type is in the data too
            payload = event.json()
            name = str(payload.get("type", "")) if payload is not None else ""
        if name in _DELTAS:
            self.keep(data)
            return
        if name == "response.created" or name in _TERMINAL or name in _FAILED:
            payload = payload if payload is not None else event.json()
            if payload is None:
                return
            if name == "error":
                self.error = _failure_code(payload)
                return
            response = payload.get("response")
            if not isinstance(response, dict):
                return
            if isinstance(response.get("model"), str):
                self.model = response["model"]
            if name == "response.created":
                return
            apply_streamed(apply_responses, self.usage, response.get("usage"))
            apply_service_tier(self.usage, response)  # the tier served (response.created's may be "auto")
            self._finished(response)
            if name in _TERMINAL:
                self.complete = True
            else:
                self.error = _failure_code(response.get("error"))

    def _text(self, event: dict[str, Any], parts: list[str]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str):
            parts.append(delta)

    def _finished(self, response: dict[str, Any]) -> None:
        """``completed``; for an ``incomplete`` response, why (``max_output_tokens``, ``content_filter``)."""
        status = response.get("status")
        details = response.get("incomplete_details")
        if isinstance(details, dict) and isinstance(details.get("reason"), str):
            self.finish_reasons.append(details["reason"])
        elif isinstance(status, str) and status != "in_progress":
            self.finish_reasons.append(status)


def _failure_code(error: Any) -> str:
    """The code of a ``response.failed`` response's error, or of an ``error`` event (see :func:`safe_code`)."""
    return safe_code(error)


# What a Responses request may give instead of ``input``: a stored prompt, the conversation the
# provider stores, the instructions alone.
_INPUT_ELSEWHERE = ("prompt", "previous_response_id", "conversation", "instructions")


class ResponsesAPI(OpenAIAPI):
    """``/v1/responses``: OpenAI's error format; its own stream error event and reader."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("openai.responses", "/v1/responses", output_fields=("max_output_tokens",))

    def parse(self, body: bytes) -> ParsedRequest:
        request = super().parse(body)
        payload = request.payload
        given = payload.get("input")
        if given is None and not any(payload.get(name) is not None for name in _INPUT_ELSEWHERE):
            raise self.missing("input")
        if given is not None and not isinstance(given, (str, list)):
            raise ClientError(400, "invalid_type", "'input' must be a string or an array of input items.", "input")
        instructions = payload.get("instructions")
        if instructions is not None and not isinstance(instructions, (str, list)):
            raise ClientError(400, "invalid_type", "'instructions' must be a string.", "instructions")
        tools = payload.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ClientError(400, "invalid_type", "'tools' must be an array.", "tools")
        return request

    def ask_for_usage(self, request: ParsedRequest) -> bool:
        return False  # response.completed always carries the usage

    def stream_error(self, error: ClientError, sequence: int = 0) -> bytes:
        event = {"type": "error", "code": error.code, "message": error.message, "param": error.param,
                 "sequence_number": sequence}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"

    def reader(self) -> Reader:
        return ResponsesReader()


RESPONSES = ResponsesAPI()
