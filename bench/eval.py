"""``make eval``: detection quality of the built-in guardrails on public, labelled data sets.

PII: presidio-research's synthetic data set (``../shared/eval/pii/presidio_synth_dataset_v2.json``,
MIT): for each entity type Tollway claims, precision (findings of that detector that overlap a
labelled span of that type) and recall (labelled spans found by a finding of that detector). The
whole text is scanned with every detector, as a prompt would be.

Prompt injection: recall on CyberSecEval's prompt-injection cases (the ``user_input`` of every
case, direct and indirect, ``../shared/eval/injection/cyberseceval_prompt_injection.json``, MIT)
and the false-positive rate on NotInject's benign prompts with trigger words (its three files,
MIT), at the policy's default threshold and at a few others.

These files measure; nothing in Tollway was fitted to them.

Then the same scorer on tool content, from the project's own checks (never trained on, see
``bench/injection_data.py``): benign tool content of kinds the model never saw (a bank's
knowledge-base articles of three categories, AgentDojo's tool results as stored) and attacks
inside tool content (AgentDojo's, inspect_evals' CodeIPI and AgentThreatBench, agent-injection-bench's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ext_proc.guardrails import injection  # noqa: E402
from ext_proc.guardrails.instructions import instructions  # noqa: E402
from ext_proc.guardrails.scanner import builtin  # noqa: E402

SHARED = ROOT.parent / "shared" / "eval"
TYPES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "credit_card", "IBAN_CODE": "iban",
         "US_SSN": "us_ssn", "IP_ADDRESS": "ip_address"}


def pii(samples: list[dict[str, Any]], name: str, show: int = 0) -> dict[str, dict[str, float]]:
    """Precision and recall per entity type; ``show``: print that many misses and false findings per
    type (the development set only: the evaluation set's texts are not for reading)."""
    scanner = builtin()
    misses: dict[str, list[str]] = {kind: [] for kind in TYPES.values()}
    found: Counter[str] = Counter()  # findings per detector
    right: Counter[str] = Counter()  # findings that overlap a labelled span of their type
    labelled: Counter[str] = Counter()
    recalled: Counter[str] = Counter()
    started = time.process_time()
    size = 0
    for sample in samples:
        text = sample["full_text"]
        size += len(text.encode())
        findings = scanner.find(text)
        spans = [(TYPES[s["entity_type"]], s["start_position"], s["end_position"]) for s in sample["spans"]
                 if s["entity_type"] in TYPES]
        for kind, start, end in spans:
            labelled[kind] += 1
            if any(f.detector.name == kind and f.start < end and start < f.end for f in findings):
                recalled[kind] += 1
            elif show:
                misses[kind].append(f"missed {text[start:end]!r} in {text!r}")
        for f in findings:
            kind = f.detector.name
            if kind not in TYPES.values():
                continue
            found[kind] += 1
            if any(k == kind and f.start < end and start < f.end for k, start, end in spans):
                right[kind] += 1
            elif show:
                misses[kind].append(f"false {text[f.start:f.end]!r} in {text!r}")
    elapsed = time.process_time() - started
    print(f"PII: {name}, {len(samples)} texts, {size / 1e3:.0f} KB scanned in {elapsed * 1e3:.0f} ms CPU")
    print(f"{'entity':14} {'labelled':>8} {'found':>6} {'precision':>9} {'recall':>7}")
    out = {}
    for label, kind in TYPES.items():
        precision = right[kind] / found[kind] if found[kind] else float("nan")
        recall = recalled[kind] / labelled[kind] if labelled[kind] else float("nan")
        out[label] = {"precision": precision, "recall": recall, "labelled": labelled[kind], "found": found[kind]}
        print(f"{label:14} {labelled[kind]:8} {found[kind]:6} {precision:9.3f} {recall:7.3f}")
    for kind, lines in misses.items():
        for line in lines[:show]:
            print(f"  {kind}: {line}")
    return out


def injection_figures(folder: Path, thresholds: list[float]) -> dict[str, float]:
    cases = json.loads((folder / "cyberseceval_prompt_injection.json").read_text())
    attacks = [case["user_input"] for case in cases]
    benign = [item["prompt"] for name in ("NotInject_one.json", "NotInject_two.json", "NotInject_three.json")
              for item in json.loads((folder / name).read_text())]
    systems = [instructions(case["test_case_prompt"]) for case in cases]
    scores = {
        "alone": ([injection.score(text) for text in attacks], [injection.score(text) for text in benign]),
        # What the gateway sees: each case's user text with its system prompt; NotInject's prompts
        # without one (as they are) and each under one of CyberSecEval's system prompts in turn
        # (benign requests meeting instructions that keep and forbid things).
        "with": ([injection.score(text, context) for text, context in zip(attacks, systems, strict=True)],
                 [injection.score(text) for text in benign],
                 [injection.score(text, systems[i % len(systems)]) for i, text in enumerate(benign)]),
    }
    print(f"\nPrompt injection: {len(attacks)} CyberSecEval cases, {len(benign)} NotInject prompts")
    print(f"{'threshold':>9} {'recall':>7} {'FPR':>6}   user text alone")
    out = {}
    for threshold in thresholds:
        attack_scores, benign_scores = scores["alone"]
        recall = sum(s >= threshold for s in attack_scores) / len(attacks)
        fpr = sum(s >= threshold for s in benign_scores) / len(benign)
        out[f"{threshold:g}"] = recall
        print(f"{threshold:9.2f} {recall:7.3f} {fpr:6.3f}")
    print(f"{'threshold':>9} {'recall':>7} {'FPR':>6} {'FPR*':>6}   with the request's system prompt "
          "(FPR*: NotInject under CyberSecEval's system prompts)")
    for threshold in thresholds:
        attack_scores, benign_scores, paired = scores["with"]
        recall = sum(s >= threshold for s in attack_scores) / len(attacks)
        fpr = sum(s >= threshold for s in benign_scores) / len(benign)
        fpr_paired = sum(s >= threshold for s in paired) / len(benign)
        out[f"with {threshold:g}"] = recall
        print(f"{threshold:9.2f} {recall:7.3f} {fpr:6.3f} {fpr_paired:6.3f}")
    by_kind: dict[str, list[int]] = {}
    for case, alone, together in zip(cases, scores["alone"][0], scores["with"][0], strict=True):
        counts = by_kind.setdefault(case["risk_category"], [0, 0, 0])
        counts[0] += 1
        counts[1] += alone >= 0.5
        counts[2] += together >= 0.5
    for kind, (n, alone_hits, with_hits) in sorted(by_kind.items()):
        print(f"  {kind}: {n} cases, recall at 0.5 {alone_hits / n:.3f} alone, "
              f"{with_hits / n:.3f} with the system prompt")
    # By technique and by where the injection sits (in the user's own words, or in content the user
    # passes on): where the detector misses, counted, never read.
    by_technique: dict[tuple[str, str], list[int]] = {}
    for case, together in zip(cases, scores["with"][0], strict=True):
        counts = by_technique.setdefault((case["injection_variant"], case["injection_type"]), [0, 0])
        counts[0] += 1
        counts[1] += together >= 0.5
    print("  recall at 0.5 with the system prompt, by technique (direct / indirect):")
    for variant in sorted({v for v, _ in by_technique}, key=lambda v: -sum(by_technique.get((v, t), [0])[0]
                                                                           for t in ("direct", "indirect"))):
        cells = []
        for kind in ("direct", "indirect"):
            n, hits = by_technique.get((variant, kind), [0, 0])
            cells.append(f"{hits:2}/{n:<2}" if n else "  -  ")
        print(f"    {variant:32} {cells[0]}  {cells[1]}")
    return out


def tool_content_figures(thresholds: list[float]) -> None:
    import injection_packages

    benign = injection_packages.tool_content("check") + injection_packages.agentdojo_results()
    attacks = injection_packages.agentic_attacks()
    scored_benign = [injection.score(text) for text in benign]
    scored_attacks = [injection.score(text) for text in attacks]
    print(f"\nTool content (the project's own checks, never trained on): {len(attacks)} attacks inside tool "
          f"content, {len(benign)} benign tool results")
    print(f"{'threshold':>9} {'recall':>7} {'FPR':>6}")
    for threshold in thresholds:
        recall = sum(s >= threshold for s in scored_attacks) / len(attacks)
        fpr = sum(s >= threshold for s in scored_benign) / len(benign)
        print(f"{threshold:9.2f} {recall:7.3f} {fpr:6.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help=f"the evaluation folder (default {SHARED})")
    parser.add_argument("--dev", action="store_true",
                        help="score the PII development set instead (bench/devset.py): "
                             "the one to tune on")
    parser.add_argument("--show", type=int, default=0,
                        help="with --dev: print N misses and false findings per type (of the tune part)")
    args = parser.parse_args()
    if args.dev:
        import devset

        pii(devset.generate(), f"development set, tune part (bench/devset.py, seed {devset.SEED})", args.show)
        print()
        # The holdout part's misses are not printed: it says whether the tuning generalises.
        pii(devset.generate(part="holdout"), "development set, holdout part (other locales, regions, templates)")
        return 0
    pii_file = args.data / "pii" / "presidio_synth_dataset_v2.json"
    if not pii_file.exists():
        print(f"make eval: {pii_file} is missing: the evaluation sets are not in the repository (they are "
              f"for measuring, never for tuning); put them in {args.data} or pass --data DIR", file=sys.stderr)
        return 2
    pii(json.loads(pii_file.read_text()), pii_file.name)
    injection_figures(args.data / "injection", [0.4, 0.5, 0.6, 0.7])
    tool_content_figures([0.4, 0.5, 0.6, 0.7])
    return 0


if __name__ == "__main__":
    sys.exit(main())
