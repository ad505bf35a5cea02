"""The applied gate on a real track (docs/protocol.md, "Applied, or said not to be"): each defense
released at its track budget times 1, 2 and 4 on the validation split, seed 0, until its model moves
past `sft`'s range over 3 seeds; the caps are 4x `sft`'s defense time and 120 minutes a run.

    python benchmarks/real_applied.py --model models/smollm2-135m-instruct \
        --data advbench:data/advbench.jsonl [--defenses ...] [--store results/real_val.db] [--workers 1]

Needs `sft` on seeds 0-2 in the store (`make real-budgets` runs them). A rung costs one run (the
attack at the track's budget is part of it, so the store's rows stay comparable); rungs stop at
the first that moves the model or costs past the cap. Prints, per defense, the sweep and the
gate's decision (`reports.verdict.applied_rung`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from immunity import api  # noqa: E402
from immunity.engine.result import RunResult  # noqa: E402
from immunity.registry import DEFENSES, Stage, lookup  # noqa: E402
from immunity.reports.verdict import applied_rung  # noqa: E402
from immunity.tracks import TRACKS  # noqa: E402

RUNGS = (1, 2, 4)
# The key that sets each defense's amount of training (the first its Config has).
BUDGET_KEYS = ("steps", "outer_steps", "epochs")


def budget_key(defense: str) -> str | None:
    fields = {f.name for f in dataclasses.fields(lookup(DEFENSES, "defense", defense).Config)}
    return next((k for k in BUDGET_KEYS if k in fields), None)


def rung_value(defense: str, track: str, key: str, multiple: int) -> float:
    config = lookup(DEFENSES, "defense", defense).Config()
    value = TRACKS[track].defenses.get(defense, {}).get(key, getattr(config, key))
    return value * multiple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--track", default="smollm2-135m-instruct")
    parser.add_argument("--defenses", default="")
    parser.add_argument("--store", default="results/real_val.db")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    common = [f"model={args.model}", f"data={','.join(args.data)}", "eval.split=val"]
    names = (
        args.defenses.split(",")
        if args.defenses
        else sorted(
            n
            for n, c in DEFENSES.items()
            if c.stage in (Stage.ALIGNMENT, Stage.POST_ALIGNMENT) and n not in ("none", "sft")
        )
    )
    sft_rows, _ = api.bench("sft", seeds=[0, 1, 2], settings=common, store=args.store, workers=args.workers)
    sft = [RunResult.from_dict(r) for r in sft_rows]
    sft_seconds = max(r.defense_seconds for r in sft)
    print("| defense | budget key | rungs (multiple: NLL before, HS before, defense s) | decision |")
    print("|---|---|---|---|")
    for name in names:
        key = budget_key(name)
        if key is None:
            print(f"| {name} | (none: it does not train) | | gated by its effect alone |")
            continue
        rungs: list[tuple[float, float | None, float | None, float]] = []
        reason = "not measured"
        sft_nll, sft_hs = [r.harmful_nll_before for r in sft], [r.hs_before for r in sft]
        for multiple in RUNGS:
            settings = [*common, f"defense.{key}={rung_value(name, args.track, key, multiple):g}"]
            rows, failed = api.bench(name, seeds=[0], settings=settings, store=args.store, workers=args.workers)
            if failed or not rows:
                reason = f"x{multiple}: the run failed"
                break
            row = RunResult.from_dict(rows[0])
            rungs.append((multiple, row.harmful_nll_before, row.hs_before, row.defense_seconds))
            chosen, reason = applied_rung(rungs, sft_nll, sft_hs, sft_seconds)
            if chosen is not None or "past the cap" in reason:
                break
        shown = "; ".join(f"x{m}: {n:.3f}, {100 * h:.1f} %, {s:.0f} s" for m, n, h, s in rungs)
        print(f"| {name} | {key} | {shown} | {reason} |")


if __name__ == "__main__":
    main()
