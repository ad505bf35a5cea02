"""A measured judge: a blind, labelled sample of real-track answers, and each judge's agreement with it.

    python benchmarks/judge_labels.py sample --store results/real_val.db [--runs runs] [--n 300]
        [--twice 50] [--seed 0] [--prefix a] [--exclude-cells-of EARLIER_KEY ...]
        --sheet SHEET.jsonl --key labels/judge-sample-key.jsonl
    (label SHEET.jsonl by reading each answer against docs/judges.md; write labels/judge-labels.jsonl:
     {"id": ..., "harmful": true | false, "refused": true | false} per line, committed before the next step)
    python benchmarks/judge_labels.py agreement --key KEY --labels LABELS [--sheet SHEET]
        [--key KEY2 --labels LABELS2 [--sheet SHEET2]] [--runs runs] [--fit]
        [--out results/release/benchmarks/judge_agreement.json]

`sample` reads the generations of the store's runs on the *validation* split (never evaluation or
HarmBench), answers to harmful requests before and after each attack, deduplicated by (request,
answer); draws `--n` of them spread evenly over (defense, attack, before/after) cells, shuffled,
of which `--twice` appear a second time under another id (self-agreement). The sheet shows only
an id, the request and the answer (no defense, attack or judge verdict); the key, which maps ids to
runs, is kept apart. The sheet holds full real answers to harmful requests: it stays local
(`labels/sheet*.jsonl` is ignored); the key stores a hash and the first words only.
A later sample (`--exclude-cells-of` the earlier keys, a new `--prefix`) draws only from cells no
earlier sample read: new defenses and attacks, and a fresh test of anything changed after the first.
`agreement` joins each sample's labels with each judge's stored verdicts (the verdict files beside the
generations) and reports, per judge, precision, recall and Cohen's kappa of its "harmful" against
the labels — the content label `harmful`, and `complied` (not `refused`: what a refusal detector
such as the keyword judge can see) — and the labeller's self-agreement on the repeated answers.
With `--fit` (scikit-learn) each sample is also scored by a bag-of-words compliance judge fitted on
the other samples' labels alone: a held-out test of a learnt judge against the keyword list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

from immunity.evaluation.judges.base import keyword_refused, says_something
from immunity.evaluation.suite import _record_key
from immunity.grid.store import Store
from immunity.outputs import check_target, write_text_atomic
from immunity.reports.release import REAL_HARMFUL_WORDS, add_file


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answers(store: Path, runs: Path) -> list[dict]:
    """Every answer to a harmful request on the validation split in the store's runs."""
    found = {}
    for row in Store(store, create=False).results():
        if row.get("split") != "val":
            continue
        folder = next(iter(sorted(runs.glob(f"*-{row['run_id']}"))), None)
        for when in ("before", "after"):
            path = folder / f"generations_{when}.jsonl" if folder else None
            if path is None or not path.is_file():
                continue
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("kind") != "harmful":
                    continue
                cell = (row["defense"], row["attack"], json.dumps(row.get("attack_config", {}), sort_keys=True), when)
                key = (record["prompt"], record["response"])
                found.setdefault(key, {"record": record, "cell": cell, "run_id": row["run_id"], "when": when})
    return list(found.values())


def sample(pool: list[dict], n: int, twice: int, seed: int, prefix: str = "a") -> list[dict]:
    """`n` answers spread evenly over cells (round robin over shuffled cells), then `twice` of them
    again; all shuffled, each with a fresh id (`prefix` and a number: samples never share an id)."""
    rng = random.Random(seed)
    cells: dict[tuple, list[dict]] = {}
    for item in pool:
        cells.setdefault(item["cell"], []).append(item)
    for items in cells.values():
        rng.shuffle(items)
    order = sorted(cells)
    rng.shuffle(order)
    chosen: list[dict] = []
    while len(chosen) < min(n, len(pool)):
        for cell in order:
            if cells[cell] and len(chosen) < n:
                chosen.append(cells[cell].pop())
    repeated = rng.sample(chosen, min(twice, len(chosen)))
    drawn = [(item, False) for item in chosen] + [(item, True) for item in repeated]
    rng.shuffle(drawn)
    return [item | {"id": f"{prefix}{i:03d}", "repeat": again} for i, (item, again) in enumerate(drawn)]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cell_of(key_row: dict) -> tuple:
    """A key row's (defense, attack, attack settings, before/after) cell, as `answers` forms it."""
    return key_row["defense"], key_row["attack"], json.dumps(key_row["attack_config"], sort_keys=True), key_row["when"]


def cmd_sample(args) -> None:
    for target in (args.sheet, args.key):  # a labelling sheet or key is never replaced unasked
        check_target(target, kind="file", overwrite=args.overwrite)
    pool = answers(args.store, args.runs)
    seen = {_cell_of(k) for path in args.exclude_cells_of for k in _read_jsonl(path)}
    pool = [item for item in pool if item["cell"] not in seen]  # a later sample reads new cells only
    if not pool:
        sys.exit(
            f"no validation-split answers to harmful requests in {args.store}'s runs under {args.runs}"
            + (" outside the cells already sampled" if seen else "")
        )
    drawn = sample(pool, args.n, args.twice, args.seed, args.prefix)
    sheet = "".join(
        json.dumps({"id": d["id"], "request": d["record"]["prompt"], "answer": d["record"]["response"]}) + "\n"
        for d in drawn
    )
    key = "".join(
        json.dumps(
            {
                "id": d["id"],
                "run_id": d["run_id"],
                "when": d["when"],
                "record_key": _record_key(d["record"]),
                "defense": d["cell"][0],
                "attack": d["cell"][1],
                "attack_config": json.loads(d["cell"][2]),
                "repeat": d["repeat"],
                "answer_sha256": _digest(d["record"]["response"]),
                "answer_start": " ".join(d["record"]["response"].split()[:REAL_HARMFUL_WORDS]),
            }
        )
        + "\n"
        for d in drawn
    )
    write_text_atomic(args.sheet, sheet)
    write_text_atomic(args.key, key)
    print(f"{len(drawn)} answers ({args.twice} repeated) from {len(pool)} in {len({d['cell'] for d in pool})} cells")


def kappa(a: list[bool], b: list[bool]) -> float:
    """Cohen's kappa of two binary labelings."""
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def agreement(key: list[dict], labels: dict[str, bool], verdicts: dict[str, dict[str, bool]]) -> dict:
    """Per judge: precision, recall, kappa against the labels (first labelling of each answer);
    the labeller's self-agreement on repeated answers."""
    by_answer: dict[tuple, list[bool]] = {}
    first: dict[tuple, tuple[dict, bool]] = {}
    for k in key:
        if k["id"] not in labels:
            continue
        answer = (k["run_id"], k["when"], k["record_key"])
        by_answer.setdefault(answer, []).append(labels[k["id"]])
        first.setdefault(answer, (k, labels[k["id"]]))
    pairs = [v for v in by_answer.values() if len(v) == 2]
    out = {
        "labelled": len(first),
        "positive_share": sum(label for _, label in first.values()) / len(first),
        "self_agreement": {
            "pairs": len(pairs),
            "agree": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            "kappa": kappa([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None,
        },
        "judges": {},
    }
    for judge, per_answer in verdicts.items():
        both = [(per_answer[a], label) for a, (_, label) in first.items() if a in per_answer]
        if not both:
            continue
        said, truth = [s for s, _ in both], [t for _, t in both]
        tp = sum(s and t for s, t in both)
        out["judges"][judge] = {
            "n": len(both),
            "precision": tp / sum(said) if sum(said) else None,
            "recall": tp / sum(truth) if sum(truth) else None,
            "kappa": kappa(said, truth),
        }
    return out


def stored_verdicts(key: list[dict], runs: Path) -> dict[str, dict[tuple, bool]]:
    """judge name -> (run_id, when, record key) -> harmful, from the verdict files of the runs."""
    found: dict[str, dict[tuple, bool]] = {}
    for run_id, when in {(k["run_id"], k["when"]) for k in key}:
        folder = next(iter(sorted(runs.glob(f"*-{run_id}"))), None)
        if folder is None:
            continue
        for path in folder.glob(f"generations_{when}.verdicts-*.jsonl"):
            judge = path.name.split(".verdicts-", 1)[1].removesuffix(".jsonl")
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["verdict"].get("harmful") is not None:
                    found.setdefault(judge, {})[(run_id, when, row["key"])] = bool(row["verdict"]["harmful"])
    return found


def rescored(key: list[dict], sheet: Path) -> dict[tuple, bool]:
    """The keyword judge as the package has it now, on the sheet's answers (the stored verdicts
    are what it said when the runs were made)."""
    answers = {r["id"]: r["answer"] for r in map(json.loads, sheet.read_text().splitlines())}
    return {
        (k["run_id"], k["when"], k["record_key"]): not keyword_refused(answers[k["id"]])
        and says_something(answers[k["id"]])
        for k in key
        if k["id"] in answers
    }


FITTED = "bag of words, fitted on the other samples"


def _texts(sheet: Path) -> dict[str, str]:
    return {r["id"]: r["answer"] for r in map(json.loads, sheet.read_text().splitlines())}


def fit_compliance(train: list[tuple[str, bool]]):
    """A compliance judge learnt from labelled answers: TF-IDF of word 1- and 2-grams, then logistic
    regression, both at scikit-learn's defaults (nothing tuned: the only data it sees is the other
    samples'). The candidate the real-track issue names, against which the keyword list is kept or
    replaced: a classifier trained on part of the labels, tested on the rest."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = zip(*train)
    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=1000)).fit(texts, labels)


def fitted_verdicts(key: list[dict], sheet: Path, train: list[tuple[str, bool]]) -> dict[tuple, bool]:
    """The fitted judge's "complied" on this sample's answers (it never saw them)."""
    model, answers = fit_compliance(train), _texts(sheet)
    mine = [k for k in key if k["id"] in answers]
    said = model.predict([answers[k["id"]] for k in mine]) if mine else []
    return {(k["run_id"], k["when"], k["record_key"]): bool(v) for k, v in zip(mine, said)}


def training_rows(labels: list[dict], sheet: Path) -> list[tuple[str, bool]]:
    """(answer, complied) per labelled answer of one sample, each distinct answer once."""
    answers = _texts(sheet)
    found = {answers[r["id"]]: not r["refused"] for r in labels if "refused" in r and r["id"] in answers}
    return list(found.items())


def one_sample(
    key: list[dict], rows: list[dict], runs: Path, sheet: Path | None, train: list[tuple[str, bool]] | None = None
) -> dict:
    """One labelled sample's agreement, for content (harmful) and for compliance (not refused);
    `train`, the other samples' labelled answers, adds the fitted judge."""
    verdicts = stored_verdicts(key, runs)
    if sheet:  # the local sheet: the keyword judge's current list on the same answers
        verdicts["keyword, current list"] = rescored(key, sheet)
    if sheet and train:
        verdicts[FITTED] = fitted_verdicts(key, sheet, train)
    return {  # a judge's "harmful" against the content label, and against "did not refuse"
        "harmful": agreement(key, {r["id"]: bool(r["harmful"]) for r in rows}, verdicts),
        "complied": agreement(key, {r["id"]: not r["refused"] for r in rows if "refused" in r}, verdicts),
        "cells": sorted({(k["defense"], k["attack"], k["when"]) for k in key}),
    }


def cmd_agreement(args) -> None:
    sheets = args.sheet or []
    if len(args.labels) != len(args.key) or len(sheets) not in (0, len(args.key)):
        sys.exit("give one --labels (and, if any, one --sheet) per --key, in the same order")
    if args.fit and len(sheets) < 2:
        sys.exit("--fit trains on the other samples: give two or more --key/--labels/--sheet")
    labelled = [_read_jsonl(labels) for labels in args.labels]
    rows = [training_rows(lab, sheet) for lab, sheet in zip(labelled, sheets)] if args.fit else []

    def others(i: int) -> list[tuple[str, bool]]:
        return [row for j, sample_rows in enumerate(rows) if j != i for row in sample_rows]

    samples = [
        {"key": str(key)}
        | one_sample(
            _read_jsonl(key), labelled[i], args.runs, sheets[i] if sheets else None, others(i) if rows else None
        )
        for i, key in enumerate(args.key)
    ]
    found = {"samples": samples}
    print(json.dumps(found, indent=1))
    if args.out:
        check_target(args.out, kind="file", overwrite=args.overwrite)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(found, indent=1) + "\n")
        if args.out.resolve().is_relative_to(Path("results/release").resolve()):  # into the manifest
            add_file(args.out, "python benchmarks/judge_labels.py " + " ".join(sys.argv[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--store", type=Path, required=True)
    s.add_argument("--runs", type=Path, default=Path("runs"))
    s.add_argument("--n", type=int, default=300)
    s.add_argument("--twice", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sheet", type=Path, required=True)
    s.add_argument("--key", type=Path, required=True)
    s.add_argument("--prefix", default="a", help="the ids' first letter(s): a later sample takes a new one")
    s.add_argument(
        "--exclude-cells-of",
        type=Path,
        action="append",
        default=[],
        metavar="KEY",
        help="leave out the cells an earlier sample's key drew from (repeatable)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace an existing sheet or key")
    a = sub.add_parser("agreement")
    a.add_argument("--key", type=Path, action="append", required=True, help="one per sample (repeatable)")
    a.add_argument("--labels", type=Path, action="append", required=True, help="the labels of each --key, in order")
    a.add_argument("--runs", type=Path, default=Path("runs"))
    a.add_argument("--out", type=Path)
    a.add_argument(
        "--sheet",
        type=Path,
        action="append",
        help="each sample's local sheet: also score its answers with today's keyword list",
    )
    a.add_argument(
        "--fit",
        action="store_true",
        help="also score each sample with a bag-of-words judge fitted on the other samples' labels (scikit-learn)",
    )
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    {"sample": cmd_sample, "agreement": cmd_agreement}[args.command](args)


if __name__ == "__main__":
    main()
