"""``tollway tokens [--model M] [--api chat|completions|embeddings|messages] [--json] < body.json``.

Reads one request body from stdin and prints how many prompt tokens it will cost, by which
method, and whether the count is exact (see :mod:`ext_proc.llm.tokens`). The model defaults to
the body's ``model``; the API to ``messages`` when the body looks like an Anthropic request, to
``completions`` when it has ``prompt``, to ``responses`` when it has ``input`` with Responses fields
(``instructions``, ``tools``, ...) or input items, to ``embeddings`` for another ``input``, else
``chat``. A body that API's parser refuses (as the gateway would, with a 400) is exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from .apis import CHAT_COMPLETIONS, COMPLETIONS, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES
from .apis.base import WireAPI
from .errors import ClientError
from .tokens import EncodingError, count_request, encoding_name_for_model, load_times_ms

APIS = {
    "chat": CHAT_COMPLETIONS.name,
    "completions": COMPLETIONS.name,
    "embeddings": EMBEDDINGS.name,
    "messages": MESSAGES.name,
    "responses": RESPONSES.name,
}
# The parser each API's body must pass: Messages bodies as count_tokens takes them (no max_tokens needed).
_PARSERS: dict[str, WireAPI] = {"chat": CHAT_COMPLETIONS, "completions": COMPLETIONS, "embeddings": EMBEDDINGS,
                                "messages": COUNT_TOKENS, "responses": RESPONSES}
# Fields of a Responses request that an embeddings request has not (both have ``input``).
_RESPONSES_FIELDS = frozenset({"instructions", "tools", "tool_choice", "previous_response_id", "conversation",
                               "max_output_tokens", "reasoning", "text", "store", "background", "include"})
_ANTHROPIC_BLOCKS = {"tool_use", "tool_result", "thinking", "redacted_thinking", "document"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tollway tokens`` options."""
    parser.description = "Count the prompt tokens of a request body read from stdin (JSON)."
    parser.add_argument("--model", help="the model to count for (default: the body's model)")
    parser.add_argument("--api", choices=sorted(APIS), help="the client API (default: guessed from the body)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    """Count; the exit status (2 for a body or model that cannot be counted)."""
    try:
        body = orjson.loads(sys.stdin.buffer.read())
    except orjson.JSONDecodeError as exc:
        return _fail(f"stdin is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _fail("the request body must be a JSON object")
    model = args.model or body.get("model")
    if not isinstance(model, str) or not model:
        return _fail("the body names no model: pass --model")
    api = args.api or guess_api({**body, "model": model})
    try:  # the body as the gateway's parser for that API checks it (the model --model names, if any)
        _PARSERS[api].parse(orjson.dumps({**body, "model": model}))
    except ClientError as error:
        return _fail(f"{APIS[api]} would refuse this body: {error.message}")
    try:
        estimate = count_request(APIS[api], body, model)
    except EncodingError as exc:
        return _fail(str(exc))
    encoding = "o200k_base" if api == "messages" else encoding_name_for_model(model)
    if args.json:
        print(
            orjson.dumps(
                {
                    "tokens": estimate.tokens,
                    "exact": estimate.exact,
                    "method": estimate.method,
                    "api": APIS[api],
                    "model": model,
                    "encoding": encoding,
                    "load_ms": load_times_ms(),
                }
            ).decode()
        )
        return 0
    loaded = ", ".join(f"{name} loaded in {ms:.0f} ms" for name, ms in load_times_ms().items())
    print(f"tokens    {estimate.tokens}")
    print(f"exact     {'yes' if estimate.exact else 'no (estimate)'}")
    print(f"method    {estimate.method}")
    print(f"api       {APIS[api]}")
    print(f"model     {model} ({encoding}{'; ' + loaded if loaded else ''})")
    return 0


def guess_api(body: dict[str, Any]) -> str:
    """The short API name a body most likely belongs to."""
    if "prompt" in body:
        return "completions"
    if "input" in body and "messages" not in body:
        given = body["input"]
        items = isinstance(given, list) and any(isinstance(item, dict) for item in given)
        return "responses" if items or not _RESPONSES_FIELDS.isdisjoint(body) else "embeddings"
    model = body.get("model")
    if "system" in body or (isinstance(model, str) and model.startswith("claude")):
        return "messages"
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and (
                block.get("type") in _ANTHROPIC_BLOCKS or (block.get("type") == "image" and "source" in block)
            ):
                return "messages"
    return "chat"


def _fail(message: str) -> int:
    print(f"tollway tokens: {message}", file=sys.stderr)
    return 2
