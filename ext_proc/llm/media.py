"""Media sizing: what an image or an audio clip in a prompt costs, from its pixels or its duration.

This module owns the per-model image rules and the header readers that find an image's size or a
clip's duration without decoding the whole payload; :mod:`ext_proc.llm.tokens` adds the amounts it
returns to a request's count.

* Images follow OpenAI's vision cost rules per model (:data:`IMAGE_RULES`): 512 px tiles
  (gpt-4o: low detail 85, high/auto 85 + 170 per tile after fitting into 2048x2048 and scaling the
  shortest side to 768) or 32 px patches times a multiplier (gpt-4.1-mini/nano, o4-mini,
  gpt-5-mini/nano). The size is read from the headers of a ``data:`` URL (PNG, JPEG, GIF, WebP);
  a remote URL's size is unknown, so the image counts as the most it can cost at that detail
  (8 tiles, or 1,536 patches) and the count is not exact: for budgets an overestimate is the
  safe side.
* Anthropic images follow Anthropic's documented formula (width x height / 750 after fitting the
  long edge in 1568 px, at most 1,600); a size that cannot be read costs 1,600.
* Audio input is about 10 tokens per second; a WAV clip's duration comes from its header, other
  formats are assumed to be 128 kbit/s. Never exact: OpenAI documents no audio counting rule.
* A file given inline (a PDF above all) costs 3,000 tokens per page, another file its text; never
  exact (:func:`file_tokens`).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from .encodings import base_model

__all__ = [
    "DEFAULT_IMAGE_RULE",
    "IMAGE_RULES",
    "Patches",
    "Tiles",
    "anthropic_image_tokens",
    "audio_tokens",
    "base64_image_size",
    "file_tokens",
    "image_patches",
    "image_size",
    "image_tiles",
    "openai_image_tokens",
]


# -- Images: what they cost --------------------------------------------------------------------


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
    name = base_model(model)
    for prefix, rule in IMAGE_RULES:
        if name.startswith(prefix):
            return rule
    return DEFAULT_IMAGE_RULE


def openai_image_tokens(model: str, detail: str, size: tuple[int, int] | None) -> tuple[int, bool]:
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


# Anthropic's image limit (about 1.15 megapixels).
_ANTHROPIC_IMAGE_MAX = 1600
_ANTHROPIC_IMAGE_EDGE = 1568


def anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    """Anthropic's formula: width x height / 750 after fitting the long edge in 1568 px; max 1600."""
    if size is None:
        return _ANTHROPIC_IMAGE_MAX
    width, height = size
    scale = min(1.0, _ANTHROPIC_IMAGE_EDGE / max(width, height))
    return min(math.ceil(width * scale * height * scale / 750), _ANTHROPIC_IMAGE_MAX)


# -- Images: their size, from the header -------------------------------------------------------

_DATA_URL = re.compile(r"data:[^,;]*(?:;[^,;]*)*;base64,", re.IGNORECASE)


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) from a base64 ``data:`` URL's PNG, JPEG, GIF or WebP header, else None."""
    match = _DATA_URL.match(url)
    return _bytes_image_size(_Base64(url, match.end())) if match else None


def base64_image_size(data: str) -> tuple[int, int] | None:
    """(width, height) from the header of a base64-encoded PNG, JPEG, GIF or WebP, else None."""
    return _bytes_image_size(_Base64(data))


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


# -- Audio -------------------------------------------------------------------------------------

# Audio input: about 10 tokens per second (gpt-4o audio models); WAV duration from its header,
# other formats assumed 128 kbit/s. Never exact: OpenAI documents no audio counting rule.
_AUDIO_TOKENS_PER_SECOND = 10
_AUDIO_DEFAULT_BYTES_PER_SECOND = 16_000


def audio_tokens(audio: dict[str, Any]) -> int:
    """Tokens of an ``input_audio`` part (``data`` base64, ``format``); 0 without data, else at least 1."""
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


# -- Files (PDFs) given inline ------------------------------------------------------------------

PDF_PAGE_TOKENS = 3_000  # a page's text and its image: Anthropic documents 1,500-3,000 per page
_PDF_PAGE = re.compile(rb"/Type\s{0,8}+/Page(?![A-Za-z])")
# Two linear searches, paired by position: one regular expression joining them by a gap was
# quadratic ("/Count 1 " repeated: 70 s for 360 KB), and with a bounded gap still 1 s per MB.
_PDF_PAGES = re.compile(rb"/Type\s{0,8}+/Pages\b")
_PDF_COUNT = re.compile(rb"/Count\s{1,8}+(\d{1,6}+)")
_PDF_NEAR = 256  # bytes between a page tree's /Type and its /Count
_PDF_BYTES_PER_PAGE = 50_000  # when no page object is readable (compressed object streams)
MAX_FILE_BYTES = 64 * 1024 * 1024  # larger than any request body Tollway reads


def file_tokens(data: str) -> int:
    """Tokens of a file given inline (base64, or a base64 ``data:`` URL): a PDF costs
    :data:`PDF_PAGE_TOKENS` per page (pages counted from its page objects, or its size when they
    are compressed), another file its text (bytes / 4; undecodable: its size). Never exact:
    providers render a PDF's pages as text and images by their own rules. Counting a PDF's base64
    as text put a one-page 400 KB scan at 136,811 tokens."""
    match = _DATA_URL.match(data)
    body = data[match.end():] if match else data
    try:
        raw = base64.b64decode(body[: MAX_FILE_BYTES * 4 // 3], validate=False)
    except (binascii.Error, ValueError):
        return math.ceil(len(data) / 4)
    if raw[:5] == b"%PDF-":
        trees = [m.start() for m in _PDF_PAGES.finditer(raw)]
        counted = [int(m.group(1)) for m in _PDF_COUNT.finditer(raw) if _near(trees, m.start())]
        pages = max(counted) if counted else len(_PDF_PAGE.findall(raw))
        pages = min(pages, len(raw) // 32 + 1)  # a page object takes bytes: a count is not believed past them
        if not pages:
            pages = max(1, math.ceil(len(raw) / _PDF_BYTES_PER_PAGE))
        return pages * PDF_PAGE_TOKENS
    return max(1, math.ceil(len(raw) / 4))


def _near(positions: list[int], at: int) -> bool:
    """Whether one of the sorted ``positions`` is within :data:`_PDF_NEAR` bytes of ``at``."""
    i = bisect.bisect_left(positions, at)
    return any(abs(positions[j] - at) <= _PDF_NEAR for j in (i - 1, i) if 0 <= j < len(positions))
