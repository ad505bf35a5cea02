"""The applied gate on a real track (docs/protocol.md, "Applied, or said not to be"): each defense
released at its track budget times 1, 2 and 4 on the validation split, seed 0, until its model moves
past `sft`'s range over 3 seeds; the caps are 120 minutes a run and, for a raised budget, 4x
`sft`'s defense time.

    python benchmarks/real_applied.py --model models/smollm2-135m-instruct \
        --data advbench:data/advbench.jsonl [--defenses ...] [--store results/real_val.db] [--workers 1]

Needs `sft` on seeds 0-2 in the store (`make real-budgets` runs them). A rung costs one run (the
attack at the track's budget is part of it, so the store's rows stay comparable); rungs stop at
the first that moves the model or costs past the cap. Prints, per defense, the sweep and the
gate's decision (`reports.verdict.applied_rung`).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from immunity import api  # noqa: E402
from immunity.config import model_track  # noqa: E402
from immunity.engine.result import RunResult  # noqa: E402
from immunity.registry import DEFENSES, Stage  # noqa: E402
from immunity.reports.applied import RUNGS, budget_key, rung_text, sweep, track_budget  # noqa: E402
from immunity.tracks import TRACKS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--track", help="the track's name (default: the one the model's card names)")
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
    track = TRACKS[args.track] if args.track else model_track(args.model)
    if track is None:
        parser.error(f"{args.model}'s card names no track: give --track ({', '.join(TRACKS)})")
    sft_rows, _ = api.bench("sft", seeds=[0, 1, 2], settings=common, store=args.store, workers=args.workers)
    sft = [RunResult.from_dict(r) for r in sft_rows]
    print("| defense | budget key | rungs (multiple: NLL before, HS before, defense s) | decision |")
    print("|---|---|---|---|")
    for name in names:
        key = budget_key(name)
        if key is None:
            print(f"| {name} | (none: it does not train) | | gated by its effect alone |")
            continue
        rows: list[RunResult] = []
        reason = "not measured"
        for multiple in RUNGS:
            settings = [*common, f"defense.{key}={track_budget(name, track, key) * multiple:g}"]
            found, failed = api.bench(name, seeds=[0], settings=settings, store=args.store, workers=args.workers)
            if failed or not found:
                reason = f"x{multiple}: the run failed"
                break
            rows.append(RunResult.from_dict(found[0]))
            rungs, chosen, reason = sweep(rows, sft, track)
            if chosen is not None or "past the cap" in reason:
                break
        shown = "; ".join(rung_text(rung, name) for rung in sweep(rows, sft, track)[0])
        print(f"| {name} | {key} | {shown} | {reason} |", flush=True)


if __name__ == "__main__":
    main()
