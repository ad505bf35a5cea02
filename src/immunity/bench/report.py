"""Markdown tables from the results store: mean ± std over seeds for each setting."""

from __future__ import annotations

import json
from dataclasses import asdict
from statistics import mean, stdev

from .. import builtins  # noqa: F401  (registers the built-in defenses, attacks and judges)
from ..registry import DEFENSES, lookup

METRICS = (
    ("hs_before", "HS before", True),
    ("hs_heldout_before", "HS held-out before", True),
    ("helpful_before", "helpful before", True),
    ("hs_after", "HS after", True),
    ("capability_after", "capability after", True),
    ("fa_after", "FA after", True),
    ("helpful_after", "helpful after", True),
    ("harmful_nll_after", "harmful NLL after", False),
)


def mean_std(values: list[float], percent: bool = True, digits: int = 1) -> str:
    scale = 100 if percent else 1
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    spread = stdev(values) if len(values) > 1 else 0.0
    return f"{mean(values):.{digits}f} ± {spread:.{digits}f}"


def setting(result: dict) -> str:
    a = result["attack_config"]
    name = result.get("attack", "harmful-finetune")
    if name not in ("harmful-finetune", "benign-finetune"):
        keys = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in a.items() if k != "task")
        return f"{name} {a['task']} {keys}"
    prefix = "benign-finetune " if name == "benign-finetune" else ""
    budget = f"{a['max_steps']} steps" if a.get("max_steps") else f"{a['epochs']:g} ep"
    schedule = "" if a.get("schedule", "constant") == "constant" else f" {a['schedule']}"
    warmup = f" warmup {a['warmup_ratio']:g}" if a.get("warmup_ratio") else ""
    return f"{prefix}{a['task']} n={a['n']} p={a['p']:g} {a['mode']} lr={a['lr']:g} {budget}{schedule}{warmup}"


def defense_label(result: dict) -> str:
    """The defense's name plus the settings that differ from its defaults."""
    cls = lookup(DEFENSES, "defense", result["defense"])
    defaults = asdict(cls.Config())
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
               for k, v in result["defense_config"].items() if defaults.get(k) != v and not isinstance(v, (list, tuple))]
    stale = " (stale)" if result.get("stale") else ""
    return result["defense"] + (f" ({', '.join(changed)})" if changed else "") + stale


def latest_per_config(results: list[dict]) -> tuple[list[dict], int]:
    """One row per configuration, the newest (rows of one config differ only in code or package
    versions); also how many older rows were left out."""
    newest: dict[str, dict] = {}
    for r in results:
        if r["config_hash"] not in newest or r.get("created", "") >= newest[r["config_hash"]].get("created", ""):
            newest[r["config_hash"]] = r
    return list(newest.values()), len(results) - len(newest)


def group_results(results: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (defense_label(r), json.dumps(r["defense_config"], sort_keys=True), setting(r), r["model"],
               r["judge"], r["split"])
        groups.setdefault(key, []).append(r)
    return groups


def _pair_key(result: dict) -> tuple:
    return (result["seed"], setting(result), result["model"], result["judge"], result["split"])


def paired_with_scratch(runs: list[dict], scratch: dict[tuple, dict], metric: str) -> list[tuple[float, float]]:
    """(this run's `metric`, the from-scratch reference's) per seed, where both exist."""
    pairs = [(r.get(metric), scratch.get(_pair_key(r), {}).get(metric)) for r in runs]
    return [(a, b) for a, b in pairs if a is not None and b is not None]


def markdown_table(results: list[dict]) -> str:
    header = (["defense", "attack", "model", "judge", "split", "seeds"] + [m[1] for m in METRICS]
              + ["capability over scratch", "defense s"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    scratch = {_pair_key(r): r for r in results if r["defense"] == "scratch"}
    for (defense, _, attack, model, judge, split), runs in group_results(results).items():
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r in runs))
        cells = [defense, attack, model, judge, split, seeds]
        cells += [mean_std([r.get(k) for r in runs], percent, 1 if percent else 2) for k, _, percent in METRICS]
        cells.append(mean_std([a - b for a, b in paired_with_scratch(runs, scratch, "capability_after")]))
        cells.append(mean_std([r.get("defense_seconds", 0.0) for r in runs], percent=False))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_attack_table(results: list[dict]) -> str:
    """Which defense holds against which threat: one row per defense, one column per attack
    setting; each cell HS after (benign helpfulness after), mean ± std over seeds, in %."""
    attacks = sorted({setting(r) for r in results})
    rows: dict[str, dict[str, list[dict]]] = {}
    for r in results:
        rows.setdefault(defense_label(r), {}).setdefault(setting(r), []).append(r)
    header = ["defense", "seeds"] + attacks
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_attack in rows.items():
        seeds = sorted({r["seed"] for runs in per_attack.values() for r in runs})
        cells = [label, ",".join(map(str, seeds))]
        for attack in attacks:
            runs = per_attack.get(attack, [])
            cells.append(f"{mean_std([r.get('hs_after') for r in runs])} "
                         f"({mean_std([r.get('helpful_after') for r in runs], digits=0)})" if runs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def regret_table(results: list[dict]) -> str:
    """MLAC's sample-efficiency regret: per attack (one column per n), the harmful answer NLL
    after fine-tuning from a random init minus that after fine-tuning the released model, per
    seed (> 0: the released weights are a better start for the attacker than random ones; the
    defense's criterion is <= 0). The `scratch` row shows its own NLL after the attack."""
    by_n = sorted({r["attack_config"]["n"] for r in results})
    scratch = {_pair_key(r): r for r in results if r["defense"] == "scratch"}
    header = ["defense", "seeds"] + [f"n = {n}" for n in by_n]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows: dict[str, dict[int, list[dict]]] = {}
    for r in results:
        rows.setdefault(defense_label(r), {}).setdefault(r["attack_config"]["n"], []).append(r)
    for label, per_n in rows.items():
        seeds = sorted({r["seed"] for runs in per_n.values() for r in runs})
        cells = [label, ",".join(map(str, seeds))]
        for n in by_n:
            runs = per_n.get(n, [])
            if label == "scratch":
                cells.append("NLL " + mean_std([r["harmful_nll_after"] for r in runs], percent=False, digits=2))
            else:
                cells.append(mean_std([b - a for a, b in paired_with_scratch(runs, scratch, "harmful_nll_after")],
                                      percent=False, digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
