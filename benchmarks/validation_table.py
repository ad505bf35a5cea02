"""The validation sweep as a compact table (docs/reproduction.md): every setting run under the
default attack on the validation split, mean ± std over its seeds, with each defense's notes
(Circuit Breakers' rerouting cosine).

    python benchmarks/validation_table.py [--store results/validation.db] [defense ...]

Rows made by code older than the current one are included (the sweep ran while the code
evolved; `immunity report` marks them stale) and flagged in the last column. A setting run again
by newer code keeps only the newest row per seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import asdict

from immunity.bench.identity import run_code_version
from immunity.bench.store import Store
from immunity.registry import DEFENSES

DEFAULT_ATTACK = ("lora", 0.1, 500, 0, 3e-4)


def cell(values, percent=True) -> str:
    values = [100 * v if percent else v for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="results/validation.db")
    parser.add_argument("defenses", nargs="*")
    args = parser.parse_args()
    groups = defaultdict(dict)  # (defense, changed settings) -> seed -> newest run
    for r in Store(args.store, create=False).results():
        a = r["attack_config"]
        if r["split"] != "val" or (a["mode"], a["p"], a["n"], a["max_steps"], a["lr"]) != DEFAULT_ATTACK:
            continue
        if args.defenses and r["defense"] not in args.defenses:
            continue
        defaults = json.loads(json.dumps(asdict(DEFENSES[r["defense"]].Config())))
        changed = {k: v for k, v in r["defense_config"].items() if defaults.get(k) != v and k != "target_layers"}
        groups[(r["defense"], json.dumps(changed, sort_keys=True))][r["seed"]] = r  # results() is oldest first
    print("| setting | seeds | HS before | HS held-out before | helpful before | HS after | FA after | helpful after "
          "| notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (defense, changed), by_seed in sorted(groups.items()):
        runs = [by_seed[seed] for seed in sorted(by_seed)]
        settings = ", ".join(f"{k}={v}" for k, v in json.loads(changed).items())
        cosines = [r["defense_notes"]["val_cosine"] for r in runs if "val_cosine" in r.get("defense_notes", {})]
        notes = [f"cosine {statistics.mean(cosines):.3f}"] if cosines else []
        if any(r.get("code_version") != run_code_version(r["defense"], r["attack"], r["judge"]) for r in runs):
            notes.append("earlier code")
        print(f"| {defense}{' ' + settings if settings else ''} | {','.join(str(r['seed']) for r in runs)} | "
              + " | ".join(cell([r[k] for r in runs]) for k in ("hs_before", "hs_heldout_before", "helpful_before",
                                                                "hs_after", "fa_after", "helpful_after"))
              + f" | {'; '.join(notes)} |")


if __name__ == "__main__":
    main()
