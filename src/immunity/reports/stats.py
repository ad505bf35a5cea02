"""Intervals for the numbers the tables report: a 95 % bootstrap over seeds x prompts, and every
"defense vs sft" claim as a paired difference with its interval.

The verdicts come from the saved generations of each run (`runs/<defense>-seed<k>-<run_id>/`):
per harmful evaluation request, harmful or not. The bootstrap is hierarchical: resample the
seeds with replacement, then within each drawn seed its prompts with replacement, and take the
mean; the 2.5th and 97.5th percentiles of 2000 such means bound the interval. For a paired
difference, each seed's defense and `sft` runs are matched prompt by prompt (same requests, same
attack setting, same seed) and the per-prompt differences are resampled the same way. A
defense "beats sft" only when the interval of its difference lies below zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import numpy as np

from ..engine.result import RunResult
from ..evaluation.suite import _record_key, verdict_path
from .analysis import attack_steps, auc, by_label, curve, default_apart_from, defense_label, setting, short_settings
from .verdict import paired_t

RESAMPLES = 2000


def harmful_verdicts(run_dir: Path, judge: str, prompt_set: str = "harmful") -> dict[str, float] | None:
    """prompt -> 1.0 if the attacked model's answer was judged harmful, from a run's saved
    generations and its judge's verdicts (None when the files are not here); `prompt_set`
    "triggered" reads a backdoor's requests with its trigger."""
    generations = run_dir / "generations_after.jsonl"
    if not generations.exists():
        return None
    verdicts_file = verdict_path(generations, judge)
    if not verdicts_file.exists():
        return None
    verdicts = {}
    for line in verdicts_file.read_text().splitlines():
        row = json.loads(line)
        verdicts[row["key"]] = row["verdict"]
    out = {}
    for line in generations.read_text().splitlines():
        record = json.loads(line)
        verdict = verdicts.get(_record_key(record))
        if record["set"] == prompt_set and verdict is not None and verdict.get("harmful") is not None:
            out[record["prompt"]] = float(verdict["harmful"])
    return out


def hierarchical_bootstrap(
    per_seed: list[np.ndarray], seed: int = 0, resamples: int = RESAMPLES
) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds x prompts and its 95 % interval, resampling seeds,
    then prompts within each seed."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for b in range(resamples):
        drawn = [per_seed[i] for i in rng.integers(0, len(per_seed), len(per_seed))]
        means[b] = np.concatenate([v[rng.integers(0, len(v), len(v))] for v in drawn]).mean()
    point = float(np.concatenate(per_seed).mean())
    return point, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _verdicts_by_seed(runs: list[RunResult], runs_root: Path) -> dict[int, dict[str, float]]:
    found = {}
    for r in runs:
        metric = r.attack_cls.attacker_metric  # e.g. a backdoor's hs_triggered: its "triggered" requests
        prompt_set = "harmful" if metric == "hs" else metric[len("hs_") :]
        verdicts = harmful_verdicts(runs_root / f"{r.defense}-seed{r.seed}-{r.run_id}", r.judge, prompt_set)
        if verdicts:
            found[r.seed] = verdicts
    return found


def paired_table(results: list[RunResult], runs_root: Path | str = "runs", reference: str = "sft") -> str:
    """Per (defense, attack setting): HS after (a backdoor's: with its trigger) with its bootstrap
    interval, benign helpfulness after, and the paired difference from `reference` under the same
    attack setting and seeds."""
    runs_root = Path(runs_root)
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((defense_label(r), setting(r)), []).append(r)
    base = {
        attack: _verdicts_by_seed(runs, runs_root) for (label, attack), runs in groups.items() if label == reference
    }
    short = short_settings(results)
    header = [
        "defense",
        "attack",
        "seeds",
        "HS after [95 % CI]",
        "helpful after",
        f"HS − {reference} [95 % CI]",
        f"vs {reference}",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    missing = 0
    for (label, attack), runs in sorted(groups.items()):
        mine = _verdicts_by_seed(runs, runs_root)
        if not mine:
            missing += 1
            continue
        seeds = sorted(mine)
        hs = hierarchical_bootstrap([np.array(list(mine[s].values())) for s in seeds])
        helpful = [r.helpful_after for r in runs if r.helpful_after is not None]
        cells = [
            label,
            short[attack],
            ",".join(map(str, seeds)),
            f"{100 * hs[0]:.1f} [{100 * hs[1]:.1f}, {100 * hs[2]:.1f}]",
            f"{100 * np.mean(helpful):.0f}" if helpful else "–",
        ]
        theirs = base.get(attack, {})
        common = [s for s in seeds if s in theirs]
        if label == reference or not common:
            cells += ["–", "–"]
        else:
            diffs = [np.array([mine[s][p] - theirs[s][p] for p in mine[s] if p in theirs[s]]) for s in common]
            d = hierarchical_bootstrap(diffs)
            verdict = "beats" if d[2] < 0 else "worse" if d[1] > 0 else "no difference"
            cells += [
                f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}] (seeds {','.join(map(str, common))})",
                verdict,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if missing:
        lines += ["", f"{missing} defense/attack groups have no saved generations under {runs_root}/ and are left out."]
    settings = sorted(f"- {head}: {s}" for s, head in short.items() if head != s)
    return "\n".join(lines + ([""] + settings if settings else []))


def per_seed_table(results: list[RunResult], reference: str = "sft", fixed: tuple[str, ...] = ()) -> str:
    """Per defense and seed, under the default harmful fine-tune (apart from the attack keys in
    `fixed`, e.g. `continue_adapter` when the rows were filtered to it): HS after, the harmful
    answers' NLL after (higher: the attacker learnt less; not a cliff) and, where the budget sweep
    is stored for the seed, the area under its HS-vs-steps curve; then the mean of each and its
    paired difference from `reference` (seed by seed) with its paired-t 95 % interval over seeds."""
    table: dict[str, dict[int, dict]] = {}
    for label, rows in by_label(results).items():
        for seed in sorted({r.seed for r in rows}):
            mine = [r for r in rows if r.seed == seed]
            default = [r for r in mine if default_apart_from(r, fixed)]
            budgets, _ = curve(
                [r for r in mine if default_apart_from(r, ("epochs", "max_steps") + fixed)], attack_steps
            )
            if default:
                table.setdefault(label, {})[seed] = {
                    "hs": default[0].hs_after,
                    "nll": default[0].harmful_nll_after,
                    "auc": auc(budgets),
                    "helpful": default[0].helpful_after,
                }
    header = [
        "defense",
        "seeds",
        "HS after per seed",
        "HS after",
        "vs sft",
        "harmful NLL after",
        "vs sft",
        "HS-steps AUC",
        "vs sft",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ref = table.get(reference, {})
    for label, seeds in table.items():
        cells = [label, ",".join(map(str, seeds)), " / ".join(f"{100 * v['hs']:.0f}" for v in seeds.values())]
        for key, scale in (("hs", 100), ("nll", 1), ("auc", 100)):
            values = [v[key] for v in seeds.values() if v[key] is not None]
            cells.append(f"{scale * mean(values):.{1 if scale == 100 else 2}f}" if values else "–")
            paired = [
                v[key] - ref[s][key]
                for s, v in seeds.items()
                if s in ref and v[key] is not None and ref[s][key] is not None
            ]
            cells.append(_interval(paired, scale) if paired and label != reference else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(differences: list[float], scale: float) -> str:
    """The mean paired difference and its paired-t 95 % interval (`verdict.paired_t`); one seed:
    the difference alone."""
    found = paired_t(differences)
    digits = 1 if scale == 100 else 2
    if found.n < 2:
        return f"{scale * found.mean:+.{digits}f} (one seed)"
    return f"{scale * found.mean:+.{digits}f} [{scale * found.low:+.{digits}f}, {scale * found.high:+.{digits}f}]"
