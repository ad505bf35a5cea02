"""Markdown tables from the results store: mean ± std over seeds for each setting."""

from __future__ import annotations

import json
from statistics import mean, stdev

METRICS = (
    ("hs_before", "HS before"),
    ("hs_heldout_before", "HS held-out before"),
    ("helpful_before", "helpful before"),
    ("hs_after", "HS after"),
    ("capability_after", "capability after"),
    ("fa_after", "FA after"),
    ("helpful_after", "helpful after"),
)


def mean_std(values: list[float], percent: bool = True) -> str:
    scale = 100 if percent else 1
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    spread = stdev(values) if len(values) > 1 else 0.0
    return f"{mean(values):.1f} ± {spread:.1f}"


def _setting(result: dict) -> str:
    a = result["attack_config"]
    budget = f"{a['max_steps']} steps" if a.get("max_steps") else f"{a['epochs']:g} ep"
    return f"{a['task']} n={a['n']} p={a['p']:g} {a['mode']} lr={a['lr']:g} {budget}"


def group_results(results: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r["defense"], json.dumps(r["defense_config"], sort_keys=True), _setting(r), r["model"],
               r["judge"], r["split"])
        groups.setdefault(key, []).append(r)
    return groups


def markdown_table(results: list[dict]) -> str:
    header = ["defense", "attack", "model", "judge", "split", "seeds"] + [m[1] for m in METRICS] + ["wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (defense, _, setting, model, judge, split), runs in group_results(results).items():
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r in runs))
        cells = [defense, setting, model, judge, split, seeds]
        cells += [mean_std([r.get(k) for r in runs]) for k, _ in METRICS]
        cells.append(mean_std([sum(r["timings"].values()) for r in runs], percent=False))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
