"""The smallest difference from `sft` the default protocol can detect, from a results store.

For each defense with runs under the default attack on the same seeds as `sft`, the per-seed
paired difference in HS after (and in the harmful answers' NLL after); their standard
deviation s over n seeds gives the minimal detectable difference at a two-sided 5 % level and 80 %
power of a paired t test, (t(0.975, n - 1) + t(0.8, n - 1)) s / sqrt(n) (`reports.verdict.detectable`;
t quantiles, not normal ones: at n = 3 the normal figure is 1.9x too small). Printed per defense, with the median over defenses: a defense
closer to `sft` than that cannot be told apart from it by this protocol.

    python benchmarks/detectable.py --store results/safetyworld.db
"""

from __future__ import annotations

import argparse
from statistics import median, stdev

from immunity.grid.store import Store
from immunity.reports.analysis import default_apart_from, defense_label
from immunity.reports.render import current_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="results/safetyworld.db")
    parser.add_argument("--reference", default="sft")
    args = parser.parse_args()
    rows = [r for r in current_rows(Store(args.store, create=False)) if r.split == "eval" and default_apart_from(r, ())]
    per: dict[str, dict[int, object]] = {}
    for r in rows:
        per.setdefault(defense_label(r), {})[r.seed] = r
    reference = per.get(args.reference, {})
    print(
        "| defense | seeds | sd of the paired HS difference | detectable HS difference (points) | "
        "sd of the paired NLL difference | detectable NLL difference |"
    )
    print("|---|---|---|---|---|---|")
    detectable = []
    for label, seeds in sorted(per.items()):
        common = sorted(s for s in seeds if s in reference)
        if label == args.reference or len(common) < 3:
            continue
        hs = [seeds[s].hs_after - reference[s].hs_after for s in common]
        nll = [seeds[s].harmful_nll_after - reference[s].harmful_nll_after for s in common]
        d_hs, d_nll = detectable(hs), detectable(nll)
        detectable.append((d_hs, d_nll))
        print(
            f"| {label} | {len(common)} | {100 * stdev(hs):.1f} | {100 * d_hs:.1f} | {stdev(nll):.3f} | {d_nll:.3f} |"
        )
    if detectable:
        print(
            f"\nMedian over defenses: a difference from `{args.reference}` of {100 * median(d for d, _ in detectable):.1f}"
            f" points of HS after, or {median(n for _, n in detectable):.3f} nats of harmful NLL after, is detectable"
            " (two-sided 5 %, power 80 %)."
        )


if __name__ == "__main__":
    main()
