"""The JSON types of a client's top-level request fields, checked before a translation reads them.

A provider that speaks the client's API checks its own fields and answers a wrong type with its
400. A translation reads the client's fields into another API's, and a field of the wrong type
would be dropped or turned into something else without a word (``"stop": 5`` simply gone, a
``tool_choice`` of ``123`` ignored when no tools are given): so before translating, each field
a translation reads is held to the types its API documents, and a wrong one is a 400
``invalid_type`` naming the field, in the client's format. ``null`` is accepted wherever the field
may be left out. Fields no translation reads are not checked here: they are dropped (each
translation's docstring lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import TranslationError

Check = tuple[Callable[[Any], bool], str]  # (accepts the value, what the field must be)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


NUMBER: Check = (_number, "a number")
INTEGER: Check = (_integer, "an integer")
STRING: Check = (lambda value: isinstance(value, str), "a string")
BOOLEAN: Check = (lambda value: isinstance(value, bool), "true or false")
OBJECT: Check = (lambda value: isinstance(value, dict), "an object")
ARRAY: Check = (lambda value: isinstance(value, list), "an array")
STRINGS: Check = (_strings, "an array of strings")
STRING_OR_STRINGS: Check = (lambda value: isinstance(value, str) or _strings(value), "a string or an array of strings")
STRING_OR_OBJECT: Check = (lambda value: isinstance(value, str | dict), "a string or an object")
STRING_OR_ARRAY: Check = (lambda value: isinstance(value, str | list), "a string or an array")

_CHAT = {
    "messages": ARRAY, "stop": STRING_OR_STRINGS, "user": STRING, "safety_identifier": STRING,
    "temperature": NUMBER, "top_p": NUMBER, "max_tokens": INTEGER, "max_completion_tokens": INTEGER,
    "n": INTEGER, "tools": ARRAY, "tool_choice": STRING_OR_OBJECT, "functions": ARRAY,
    "function_call": STRING_OR_OBJECT, "parallel_tool_calls": BOOLEAN, "response_format": OBJECT,
    "metadata": OBJECT, "modalities": STRINGS, "reasoning_effort": STRING, "prediction": OBJECT,
}
_MESSAGES = {
    "messages": ARRAY, "system": STRING_OR_ARRAY, "max_tokens": INTEGER, "stop_sequences": STRINGS,
    "temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER, "tools": ARRAY, "tool_choice": OBJECT,
    "metadata": OBJECT, "thinking": OBJECT, "output_config": OBJECT, "output_format": OBJECT,
}
_RESPONSES = {
    "input": STRING_OR_ARRAY, "instructions": STRING_OR_ARRAY, "max_output_tokens": INTEGER,
    "temperature": NUMBER, "top_p": NUMBER, "tools": ARRAY, "tool_choice": STRING_OR_OBJECT,
    "parallel_tool_calls": BOOLEAN, "text": OBJECT, "reasoning": OBJECT, "metadata": OBJECT, "user": STRING,
    "safety_identifier": STRING, "previous_response_id": STRING, "store": BOOLEAN,
}
FIELDS: dict[str, dict[str, Check]] = {
    "openai.chat.completions": _CHAT, "anthropic.messages": _MESSAGES, "openai.responses": _RESPONSES,
}


def check(api_name: str, payload: dict[str, Any]) -> None:
    """Raise :class:`TranslationError` (``invalid_type``) for the first field of ``payload`` whose
    JSON type its API does not allow."""
    for name, (accepts, must) in FIELDS.get(api_name, {}).items():
        value = payload.get(name)
        if value is not None and not accepts(value):
            raise TranslationError(f"'{name}' must be {must}, not {_kind(value)}.", name, "invalid_type")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
