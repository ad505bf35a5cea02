"""Markdown tables from the results store: mean ± std over seeds for each setting."""

from __future__ import annotations

import json
from dataclasses import asdict
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
    schedule = "" if a.get("schedule", "constant") == "constant" else f" {a['schedule']}"
    warmup = f" warmup {a['warmup_ratio']:g}" if a.get("warmup_ratio") else ""
    return f"{a['task']} n={a['n']} p={a['p']:g} {a['mode']} lr={a['lr']:g} {budget}{schedule}{warmup}"


def _defense_label(result: dict) -> str:
    """The defense's name plus the settings that differ from its defaults."""
    from ..registry import DEFENSES, lookup

    cls = lookup(DEFENSES, "defense", result["defense"])
    defaults = asdict(cls.Config())
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
               for k, v in result["defense_config"].items() if defaults.get(k) != v and not isinstance(v, (list, tuple))]
    return result["defense"] + (f" ({', '.join(changed)})" if changed else "")


def group_results(results: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (_defense_label(r), json.dumps(r["defense_config"], sort_keys=True), _setting(r), r["model"],
               r["judge"], r["split"])
        groups.setdefault(key, []).append(r)
    return groups


def _scratch_key(result: dict) -> tuple:
    return (result["seed"], _setting(result), result["model"], result["judge"], result["split"])


def scratch_regret(runs: list[dict], scratch: dict[tuple, dict]) -> list[float]:
    """MLAC's sample-efficiency regret in capability terms, per seed: harmful capability after
    the attack minus what the same attack reaches from a random init (`scratch`); <= 0 means the
    defended weights are no better a starting point than random ones."""
    paired = [(r.get("capability_after"), scratch.get(_scratch_key(r), {}).get("capability_after")) for r in runs]
    return [a - b for a, b in paired if a is not None and b is not None]


def markdown_table(results: list[dict]) -> str:
    header = (["defense", "attack", "model", "judge", "split", "seeds"] + [m[1] for m in METRICS]
              + ["regret vs scratch", "defense s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    scratch = {_scratch_key(r): r for r in results if r["defense"] == "scratch"}
    for (defense, _, setting, model, judge, split), runs in group_results(results).items():
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r in runs))
        cells = [defense, setting, model, judge, split, seeds]
        cells += [mean_std([r.get(k) for r in runs]) for k, _ in METRICS]
        cells.append(mean_std(scratch_regret(runs, scratch)))
        cells.append(mean_std([r.get("defense_seconds", 0.0) for r in runs], percent=False))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
