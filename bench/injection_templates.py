"""Benign training data for the injection model: the prompt templates of open-source LLM frameworks.

What applications send through a gateway is full of instructions to the model that are no
injection: "Use the following pieces of context to answer the question", "You are given a
conversation...", "Return only valid JSON", "IMPORTANT: ...". A model that learned injections
mostly from jailbreaks learns that this register itself ("you", "your task", "respond", "output")
is suspicious: before this data, 68 % of deepeval's metric templates scored as injections. The
frameworks' own prompt templates, written by many people for real applications, are the
counterweight (label 0).

Extracted from the wheels on PyPI, licenses and a NOTICE beside the files in
``bench/data/injection/templates/``: LangChain, LlamaIndex, AutoGen and DSPy (MIT), Ragas,
deepeval, smolagents and Haystack (Apache-2.0) to train on; Semantic Kernel, the OpenAI Agents SDK
(MIT), CAMEL and Agno (Apache-2.0) never trained on (:data:`CHECK`), to check on. From the places
:data:`SOURCES` names (Python
modules: their string constants of 60 characters or more; JSON and YAML: every such string).
Placeholders (``{context}``, ``{{ input }}``, ``{% if %}``) become ``...``; a template that speaks
of jailbreaks or prompt injection is left out. Regenerate with

    .venv/bin/python bench/injection_templates.py WHEEL_DIR...   # each an unpacked wheel

which rewrites ``bench/data/injection/templates/<package>.json``.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "injection" / "templates"
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{[A-Za-z_][A-Za-z0-9_.]*\}", re.DOTALL)
MIN_CHARS = 60


def _clean(text: str) -> str:
    text = _PLACEHOLDER.sub("...", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def from_python_file(path: Path) -> list[str]:
    """The long string constants of one Python module."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    return [_clean(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= MIN_CHARS
            and " " in node.value and not node.value.lstrip().startswith(("http", "import ", "def "))]


def _strings(value: object) -> list[str]:
    """Every string of ``MIN_CHARS`` or more in a decoded JSON or YAML document."""
    if isinstance(value, str):
        return [_clean(value)] if len(value) >= MIN_CHARS else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [text for item in items for text in _strings(item)]


def from_json(path: Path) -> list[str]:
    return _strings(json.loads(path.read_text(encoding="utf-8")))


def load(paragraphs: bool = True) -> dict[str, list[str]]:
    """The stored templates, by package; with ``paragraphs``, each template's paragraphs of
    ``MIN_CHARS`` or more as texts of their own too (applications send parts of prompts)."""
    out = {}
    for path in sorted(OUT.glob("*.json")):
        texts = json.loads(path.read_text(encoding="utf-8"))
        if paragraphs:
            texts += [p.strip() for t in texts for p in re.split(r"\n\s*\n", t) if len(p.strip()) >= MIN_CHARS]
        out[path.stem] = texts
    return out


# Where each package keeps its prompts (globs under the package's folder).
SOURCES = {
    "langchain": ("**/*prompt*.py",),
    "llama_index": ("**/*prompt*.py",),
    "ragas": ("**/*prompt*.py",),
    "deepeval": ("templates/metrics/templates.json",),
    "smolagents": ("prompts/*.yaml",),
    "autogen_agentchat": ("**/*prompt*.py",),
    "haystack": ("components/evaluators/*.py", "components/generators/*.py"),
    "dspy": ("propose/*.py", "predict/*.py"),
    "semantic_kernel": ("agents/orchestration/prompts/*.py", "**/*_prompts.py"),
    "agents": ("extensions/handoff_prompt.py", "**/prompts/*.md", "**/prompt.md",
               "sandbox/memory/prompts.py"),
    "camel": ("prompts/*.py", "societies/workforce/prompts.py"),
    "agno": ("compaction/prompts.py", "os/manager/prompts.py", "utils/prompts.py"),
    "mem0": ("configs/prompts.py",),
    "griptape": ("templates/**/*.j2",),
    "pyrit": ("datasets/score/**/*.yaml",),
    "aider": ("**/*prompts.py",),
    "browser_use": ("agent/system_prompts/*.md", "agent/prompts.py"),
    "gpt_researcher": ("prompts.py",),
    "metagpt": ("prompts/**/*.py",),
    "langroid": ("prompts/*.py",),
}
# Kept out of training for good: four more frameworks' templates, the standing check of how the
# model does on applications' prompts it never saw (bench/train_injection.py prints it).
CHECK = ("semantic_kernel", "openai_agents", "camel", "agno")
# Eight more packages' prompts (mem0, Griptape, PyRIT's scorers, aider, browser-use, GPT Researcher,
# MetaGPT, Langroid; MIT and Apache-2.0): trained on with ``train_injection.py --frameworks`` (the
# shipped model) or ``--packages``.
MORE = ("mem0", "griptape", "pyrit", "aider", "browser_use", "gpt_researcher", "metagpt", "langroid")
NAMES = {"agents": "openai_agents"}  # stored under a clearer name than the package's folder
# A template that speaks of attacks is left out: it is no injection, but its words are an injection's.
_ABOUT_ATTACKS = re.compile(r"jailbr|prompt[ -]injection|injection attack|ignore (?:all )?(?:previous|prior|above)",
                            re.IGNORECASE)


def from_yaml(path: Path) -> list[str]:
    import yaml

    return _strings(yaml.safe_load(path.read_text(encoding="utf-8")))


def extract(package: Path, globs: tuple[str, ...]) -> list[str]:
    texts: list[str] = []
    for pattern in globs:
        for path in sorted(package.glob(pattern)):
            if path.suffix == ".py":
                texts += from_python_file(path)
            elif path.suffix == ".json":
                texts += from_json(path)
            elif path.suffix in (".yaml", ".yml"):
                texts += from_yaml(path)
            elif path.suffix in (".md", ".j2"):
                texts.append(_clean(path.read_text(encoding="utf-8")))
    return sorted({t for t in texts if len(t) >= MIN_CHARS and not _ABOUT_ATTACKS.search(t)})


def main() -> int:
    for folder in map(Path, sys.argv[1:]):
        for package in (p for p in folder.iterdir() if p.name in SOURCES):
            texts = extract(package, SOURCES[package.name])
            OUT.mkdir(parents=True, exist_ok=True)
            out = OUT / f"{NAMES.get(package.name, package.name)}.json"
            out.write_text(json.dumps(texts, ensure_ascii=False, indent=0) + "\n")
            print(f"{package.name}: {len(texts)} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
