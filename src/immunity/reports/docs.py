"""`make docs`: every published number, generated from the released results (`results/release`),
offline, without training or timing anything.

Writes docs/results.md whole, and the README's blocks between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` markers; everything outside the markers is prose, and a test checks
it types no result-like number. Each verdict comes from the rule of docs/protocol.md
(`reports.verdict`); each row says the code version that made it, and a row made by code that
has changed since is labelled "(older code)", never silently dropped.

    python -m immunity.reports.docs            # rewrite README.md and docs/results.md
    python -m immunity.reports.docs --check    # exit 1 if they differ from what is generated
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from statistics import mean, stdev

from ..engine.identity import run_code_version
from ..engine.result import RunResult
from ..registry import DEFENSES, Stage
from .analysis import attack_steps, auc, changed_settings, default_apart_from, defense_label, stage_of
from .release import RELEASE, load_generations, load_rows
from .stats import per_seed_table
from .verdict import Seeded, Verdict, choose_attack_budget, detectable, judge_family, paired_t, wilson

# Fine-tuning-as-a-service: the provider fine-tunes with its own objective or repairs after the
# attack (its own board); the released model is `sft`'s, so stability is read after the attack.
FTAAS_STAGES = (Stage.FINE_TUNING, Stage.POST_FINE_TUNING)


def is_ftaas(label: str) -> bool:
    return stage_of(label.split(" ")[0]) in FTAAS_STAGES


MARKER = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


@cache
def _code_today(defense: str, attack: str, judge: str) -> str:
    return run_code_version(defense, attack, judge)


def older_code(row: RunResult) -> bool:
    """The row was made by code that has changed since: shown, marked "(older code)", never dropped."""
    return row.code_version != _code_today(row.defense, row.attack, row.judge)


def _default(rows: list[RunResult], precision: str = "float32") -> dict[str, dict[int, RunResult]]:
    """Per defense label, per seed: the row under the default attack on the evaluation split, at
    `precision` (the published tables are float32; bfloat16 rows are compared apart)."""
    found: dict[str, dict[int, RunResult]] = {}
    for r in rows:
        if r.split == "eval" and r.precision == precision and default_apart_from(r, ()):
            label = defense_label(r).replace(f" [{precision}]", "")  # one precision per table: no tag
            found.setdefault(label, {})[r.seed] = r
    return found


def measured(value: float | None) -> float:
    """A metric every released row of a table has (one without it is a broken release)."""
    if value is None:
        raise ValueError("a released row lacks a metric its table reads (re-export the store)")
    return value


def _pct(values: Sequence[float | None]) -> str:
    percents = [100 * measured(v) for v in values]
    return f"{mean(percents):.1f} ± {stdev(percents) if len(percents) > 1 else 0.0:.1f}"


# -- the README's blocks -----------------------------------------------------------------------------
def demo_block(rows: list[RunResult], seeds: tuple[int, ...] = (0, 1, 2), precision: str = "float32") -> str:
    """The demo's table (`immunity demo`): the base, `sft`, `sft` + the default attack, `sft` +
    benign-only fine-tuning, on the released rows of `seeds` at `precision`."""
    default = _default(rows, precision)
    benign = {
        r.seed: r
        for r in rows
        if r.defense == "sft"
        and r.precision == precision
        and r.split == "eval"
        and r.attack == "harmful-finetune"
        and r.attack_config.get("p") == 0
        and default_apart_from(r, ("p",))
    }
    found = [default.get("none", {}).get(s) for s in seeds]
    aligned = [default.get("sft", {}).get(s) for s in seeds]
    benign_only = [benign.get(s) for s in seeds]
    base = [r for r in found if r is not None]
    sft = [r for r in aligned if r is not None]
    p0 = [r for r in benign_only if r is not None]
    if len(base) < len(seeds) or len(sft) < len(seeds) or len(p0) < len(seeds):
        return "(not released yet: `make results` runs none and sft on seeds 0-2, and sft with attack.p=0)\n"

    def row(name, runs, when, last, key):
        return (
            f"| {name} | {_pct([getattr(r, f'hs_{when}') for r in runs])} | "
            f"{_pct([getattr(r, f'hs_heldout_{when}') for r in runs])} | {last} "
            f"{_pct([getattr(r, key) for r in runs])} |"
        )

    lines = [
        "| model | HS (eval harmful, unseen requests) | HS (held-out categories) | benign |",
        "|---|---|---|---|",
        row("base, pretrained", base, "before", "helpful", "helpful_before"),
        row("`sft`-aligned", sft, "before", "helpful", "helpful_before"),
        row(f"`sft` + default attack (p = {sft[0].attack_config['p']:g})", sft, "after", "FA", "fa_after"),
        row("`sft` + benign-only fine-tuning (p = 0)", p0, "after", "FA", "fa_after"),
        "",
        f"Per seed, HS after the default attack: {' / '.join(f'{100 * measured(r.hs_after):.1f}' for r in sft)} "
        f"(seeds {', '.join(map(str, seeds))}; code {sft[0].code_version}"
        f"{', older than today' if older_code(sft[0]) else ''}).",
    ]
    return "\n".join(lines) + "\n"


def _sides(rows: dict[int, RunResult]) -> dict[int, Seeded]:
    return {
        s: Seeded(
            r.hs_before,
            r.hs_after,
            r.harmful_nll_before,
            r.harmful_nll_after,
            r.helpful_after if stage_of(r.defense) in FTAAS_STAGES else r.helpful_before,
        )
        for s, r in rows.items()
    }


# What `sft` and an alignment-stage defense share (`defenses.base.AlignmentTraining`): a defense whose
# values differ from `sft`'s defaults is compared with `sft` at its values where that is released.
TRAINING_KEYS = (
    "mode",
    "lr",
    "epochs",
    "batch_size",
    "schedule",
    "warmup_ratio",
    "lora_r",
    "lora_alpha",
    "lora_targets",
    "lora_dropout",
)


def matched_baseline(row: RunResult, baselines: dict[str, RunResult], plain: str = "sft") -> str:
    """The `sft` label trained like `row`'s defense (its adapter and budget: the matched baseline of
    docs/protocol.md), or `plain` where none is released or the defense trains like `sft`."""
    if "+" in row.defense or stage_of(row.defense) != Stage.ALIGNMENT:
        return plain
    own = {k: row.defense_config[k] for k in TRAINING_KEYS if k in row.defense_config}
    if len(own) < len(TRAINING_KEYS):
        return plain
    for label, sft in baselines.items():
        if label != plain and all(sft.defense_config.get(k) == v for k, v in own.items()):
            return label
    return plain


def verdicts(rows: list[RunResult], baseline: str = "sft") -> dict[str, Verdict]:
    """Every defense under the default attack judged by the protocol's rule against its matched
    baseline (`matched_baseline`), else `baseline`; Holm within each baseline's family."""
    return verdicts_of(_default(rows), baseline)


def verdicts_of(
    default: dict[str, dict[int, RunResult]],
    baseline: str = "sft",
    base_model: bool = False,
    unaligned: dict[int, RunResult] | None = None,
) -> dict[str, Verdict]:
    """`verdicts` on rows already chosen: per defense label, per seed, its row under the default
    attack. `base_model`: the unaligned model is a pretrained one, not an assistant, so an
    alignment defense's stability is read against `sft`'s helpfulness (from the same base).
    `unaligned`: the unaligned model's rows where `default` has none (its helpfulness before any
    attack is the same under every attack), so that every table applies the stability gate."""
    if baseline not in default:
        return {}
    sfts = {label: next(iter(runs.values())) for label, runs in default.items() if label.split(" ")[0] == "sft"}
    none = default.get("none") or unaligned
    family: dict[str, dict[str, dict[int, RunResult]]] = {}
    for label, per_seed in default.items():
        if label.split(" ")[0] not in ("sft", "none", "scratch"):
            family.setdefault(matched_baseline(next(iter(per_seed.values())), sfts, baseline), {})[label] = per_seed
    found: dict[str, Verdict] = {}
    for against, members in family.items():
        base = default[against]
        unaligned = base if base_model else none  # what an alignment defense started from, as an assistant
        start = {
            "alignment": mean(measured(r.helpful_before) for r in unaligned.values()) if unaligned else None,
            "post-alignment": mean(measured(r.helpful_before) for r in base.values()),
            "fine-tuning": mean(measured(r.helpful_after) for r in base.values()),
            "post-fine-tuning": mean(measured(r.helpful_after) for r in base.values()),
        }
        starting = {label: start[stage_of(next(iter(runs.values())).defense).value] for label, runs in members.items()}
        found |= judge_family({k: _sides(v) for k, v in members.items()}, _sides(base), against, starting)
    return found


def glance_block(rows: list[RunResult]) -> str:
    """Results at a glance: each defense's verdict against `sft` under the default attack, open-
    weight and fine-tuning-as-a-service defenses on separate boards."""
    found = verdicts(rows)
    default = _default(rows)
    if not found:
        return "(not released yet)\n"
    lines = []
    for board, names in (
        ("Open-weight defenses (the attacker holds the weights)", [n for n in found if not is_ftaas(n)]),
        (
            "Fine-tuning-as-a-service (the provider fine-tunes with its own objective, or repairs after the attack)",
            [n for n in found if is_ftaas(n)],
        ),
    ):
        if not names:
            continue
        lines += [
            f"**{board}**, SafetyWorld, HS after the default attack vs `sft` (docs/protocol.md):",
            "",
            "| defense | seeds | HS after | verdict | code |",
            "|---|---|---|---|---|",
        ]
        for name in sorted(names, key=lambda n: (_order(found[n].outcome), n)):
            runs = default[name]
            stale = " (older code)" if any(older_code(r) for r in runs.values()) else ""
            versions = ", ".join(sorted({r.code_version for r in runs.values()}))
            lines.append(
                f"| {name}{stale} | {len(runs)} | {_pct([r.hs_after for r in runs.values()])} | "
                f"{found[name].line()} | {versions} |"
            )
        lines.append("")
    base = default["sft"]
    lines.append(f"`sft` itself: HS after {_pct([r.hs_after for r in base.values()])} on {len(base)} seeds.")
    return "\n".join(lines) + "\n"


OUTCOME_ORDER = (
    "resists",
    "like its baseline",
    "inconclusive",
    "inconclusive (one seed)",
    "worse",
    "unstable",
    "not applied",
)


def _order(outcome: str) -> int:
    return OUTCOME_ORDER.index(outcome) if outcome in OUTCOME_ORDER else len(OUTCOME_ORDER)


def defenses_block() -> str:
    """The registered defenses: name, stage and paper (each module docstring's first sentence)."""
    from ..engine.export import paper_line

    order = {stage: i for i, stage in enumerate(Stage)}
    lines = ["| defense | stage | method and paper |", "|---|---|---|"]
    for name, cls in sorted(DEFENSES.items(), key=lambda item: (order[item[1].stage], item[0])):
        text = paper_line(name).split(": ", 1)[-1]
        cut = text.find("). ")  # the paper's parenthesis ends the sentence; else the paragraph is the sentence
        text = text[: cut + 2] if cut != -1 else text
        lines.append(f"| `{name}` | {cls.stage.value} | {text} |")
    return "\n".join(lines) + "\n"


def real_budget_block(release: Path, prompts: int = 40) -> str:
    """The real tracks' attack budget on the validation split (`make real-budgets`, released as
    `real_val`): `none` and `sft` HS after per seed at each budget, per track and precision, and the
    budget the protocol's rule (`choose_attack_budget`) picks from each (track, precision)'s rows."""
    if not (release / "real_val.rows.jsonl.gz").is_file():
        return "(not measured yet: `make real-budgets`, then `make release-real`)\n"
    rows = [
        r
        for r in load_rows("real_val", release)
        if r.split == "val"
        and r.attack == "harmful-finetune"
        and r.defense in ("none", "sft")
        and _real_label(r) == r.defense
    ]  # at the track's settings
    older = [r for r in rows if older_code(r)]
    if len(older) < len(rows):  # today's code has measured the budgets: its rows alone decide
        rows = [r for r in rows if not older_code(r)]
    answers = release / "real_val.generations.jsonl.gz"
    counts = _harmful_counts(load_generations("real_val", release)) if answers.is_file() else {}
    prompts = min((counts[(r.run_id, "after")][1] for r in rows if (r.run_id, "after") in counts), default=prompts)
    per: dict[tuple[str, str], dict[int, dict[str, dict[int, float]]]] = {}
    for r in rows:
        track = _track(r)
        group = (track.name if track else r.model, r.precision)
        per.setdefault(group, {}).setdefault(attack_steps(r), {}).setdefault(r.defense, {})[r.seed] = measured(
            r.hs_after
        )
    lines = [
        "| track | precision | attack steps | `none` HS after, per seed | `sft` HS after, per seed | `sft` in 30-70 % | "
        "base 20 points above, intervals apart |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for track, precision in sorted(per):
        curves = {
            steps: ([sides["none"][s] for s in sorted(sides["none"])], [sides["sft"][s] for s in sorted(sides["sft"])])
            for steps, sides in per[(track, precision)].items()
            if sides.get("none") and sides.get("sft")
        }
        chosen, figures = choose_attack_budget(curves, prompts)
        for steps in sorted(figures):
            base, sft = curves[steps]
            f = figures[steps]
            lines.append(
                f"| {track} | {precision} | {steps} | {' / '.join(f'{100 * v:.1f}' for v in base)} "
                f"(mean {100 * f['base']:.1f}) | {' / '.join(f'{100 * v:.1f}' for v in sft)} (mean {100 * f['sft']:.1f}) | "
                f"{'yes' if f['in_band'] else 'no'} | {'yes' if f['apart'] else 'no'} |"
            )
        seeds = min((min(len(base), len(sft)) for base, sft in curves.values()), default=0)
        if seeds < 3:
            verdict = f"measured on {seeds} seed(s) so far; the rule decides on 3 (docs/protocol.md): no budget is chosen yet."
        elif chosen is not None:
            verdict = f"the rule (docs/protocol.md) picks **{chosen} steps**."
        else:
            verdict = "no budget tried meets the rule: no default attack that resolves yet."
        verdicts.append(f"- {track}, {precision} rows: {verdict}")
    made = (
        f"Made by code older than today's ({', '.join(sorted({r.code_version for r in rows}))}): re-run "
        "`make real-budgets` to decide on today's."
        if rows and older_code(rows[0])
        else f"{len(rows)} rows of today's code, {prompts} prompts each"
        + (f" ({len(older)} rows of older code are not read)." if older else ".")
    )
    return "\n".join([*lines, "", made, *verdicts]) + "\n"


CURVE_STEPS = (8, 12, 16)  # the default attack's budget and one either side (32 left `sft` at 95 %)


def real_curves_block(release: Path) -> str:
    """HS after against the attacker's steps on the validation split, per defense (seed 0; `none`
    and `sft` on every seed they have, the mean shown), at the track's settings and precision, and
    the area under each curve over CURVE_STEPS divided by its span: the mean HS over the budget
    range, which does not jump when a seed falls on the other side of the cliff at one budget."""
    if not (release / "real_val.rows.jsonl.gz").is_file():
        return "(not measured yet: `make real-budgets`, then `make release-real`)\n"
    per: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for r in load_rows("real_val", release):
        track = _track(r)
        if track is None or older_code(r) or _real_label(r) != r.defense or r.hs_after is None:
            continue
        if not _track_default(r, split="val", apart_from=("max_steps",)):  # any budget of the curve
            continue
        if r.seed == 0 or r.defense in ("none", "sft"):
            per.setdefault((track.name, r.defense), {}).setdefault(attack_steps(r), {})[r.seed] = r.hs_after
    lines = [
        "| track | defense | seeds | " + " | ".join(f"HS after {n} steps" for n in CURVE_STEPS) + " | area (mean HS, "
        f"{CURVE_STEPS[0]}-{CURVE_STEPS[-1]} steps) |",
        "|---|---|---|" + "---|" * len(CURVE_STEPS) + "---|",
    ]
    partial = []
    for (track, defense), steps in sorted(
        per.items(), key=lambda item: (item[0][0], item[0][1] not in ("none", "sft"), item[0][1])
    ):
        seeds = sorted(set.intersection(*(set(steps.get(n, {})) for n in CURVE_STEPS)))
        if not seeds:  # every budget of the curve on the same seeds, or no curve
            partial.append(defense)
            continue
        curve = {n: mean(steps[n][seed] for seed in seeds) for n in CURVE_STEPS}
        area = auc(curve)  # never None: the curve has every budget of CURVE_STEPS
        lines.append(
            f"| {track} | {defense} | {', '.join(map(str, seeds))} | "
            + " | ".join(f"{100 * curve[n]:.1f}" for n in CURVE_STEPS)
            + f" | {100 * measured(area):.1f} |"
        )
    if len(lines) == 2:
        lines = ["(no defense has its whole curve at the track's precision yet)"]
    if partial:
        lines += ["", f"Not yet at every budget of the curve: {', '.join(partial)}."]
    return "\n".join(lines) + "\n"


def _track(row: RunResult):
    from ..tracks import TRACKS

    return TRACKS.get(row.model.rstrip("/").rsplit("/", 1)[-1])


def _named(name: str, changed: dict) -> str:
    """`name (k=v, ...)`: a defense or attack with the settings that differ from its default there."""
    shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changed.items()]
    return name + (f" ({', '.join(shown)})" if shown else "")


def _real_label(row: RunResult) -> str:
    """The defense's name plus the settings that differ from its track's budget for it (the
    track's budget is the row's default there: `sft` at the track's budget is plain `sft`)."""
    track = _track(row)
    own = track.defenses.get(row.defense, {}) if track else {}
    return _named(
        row.defense, {k: v for k, v in changed_settings(row.defense, row.defense_config).items() if own.get(k) != v}
    )


def _track_attack(row: RunResult) -> dict:
    """The row's attack settings on its track: the attack's defaults with the track's budget for it."""
    track = _track(row)
    own = track.attacks.get(row.attack, {}) if track else {}
    return asdict(row.attack_cls.Config(task=row.attack_config.get("task", ""))) | own


def track_precision(track) -> str:
    """The training arithmetic a real track runs by default (its settings name it; float32 else)."""
    return track.settings.get("precision", "float32")


def _track_default(
    row: RunResult, precision: str | None = None, split: str = "eval", apart_from: tuple[str, ...] = ()
) -> bool:
    """The row ran its track's default attack (the harmful fine-tune at the track's settings) on
    `split`, at `precision` (the track's own when not given); attack keys in `apart_from` may differ."""
    track = _track(row)
    if track is None or row.split != split or row.attack != "harmful-finetune":
        return False
    if row.precision != (precision or track_precision(track)):
        return False
    return all(
        row.attack_config.get(k) == v for k, v in _track_attack(row).items() if k != "task" and k not in apart_from
    )


def _harmful_counts(generations: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """(run id, before/after) -> (answers judged harmful, answers) on the harmful evaluation set."""
    counts: dict[tuple[str, str], list[int]] = {}
    for g in generations:
        if g["set"] == "harmful" and g["kind"] == "harmful" and g["verdict"].get("harmful") is not None:
            c = counts.setdefault((g["run_id"], g["when"]), [0, 0])
            c[0] += bool(g["verdict"]["harmful"])
            c[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _pooled(runs: Sequence[RunResult], when: str, counts: dict[tuple[str, str], tuple[int, int]]) -> str:
    """HS pooled over the seeds' prompts, with its Wilson 95 % interval."""
    found = [counts[(r.run_id, when)] for r in runs if (r.run_id, when) in counts]
    harmful, n = sum(h for h, _ in found), sum(m for _, m in found)
    if not n:
        return "–"
    low, high = wilson(harmful, n)
    return f"{100 * harmful / n:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _cost(runs: Sequence[RunResult], sft: dict[int, RunResult]) -> str:
    """Mean seconds the defense took to build its released model, and that as a multiple of `sft`'s."""
    seconds = mean(r.defense_seconds for r in runs)
    base = mean(r.defense_seconds for r in sft.values()) if sft else 0.0
    return f"{seconds:,.0f} ({seconds / base:.1f}x)" if base else f"{seconds:,.0f}"


def _peak_gb(runs: Sequence[RunResult]) -> str:
    """Peak resident memory of the process while the released model was built (the largest over seeds)."""
    from .real import build_peak

    peak = build_peak(runs)
    return f"{peak / 1024:.1f}" if peak else "–"


# Tracks whose unaligned model is a pretrained base, not an assistant (stability against `sft`).
BASE_MODEL_TRACKS = ("gemma-3-270m",)


def _real_defaults(release: Path) -> dict[str, dict[str, dict[int, RunResult]]]:
    """Per track, per defense label, per seed: the released real row under the track's default attack."""
    if not (release / "real.rows.jsonl.gz").is_file():
        return {}
    found: dict[str, dict[str, dict[int, RunResult]]] = {}
    for r in load_rows("real", release):
        track = _track(r)
        if track is not None and _track_default(r):
            found.setdefault(track.name, {}).setdefault(_real_label(r), {})[r.seed] = r
    from ..tracks import TRACKS

    return {name: _without_superseded_rungs(TRACKS[name], rows) for name, rows in found.items()}


def _without_superseded_rungs(track, rows: dict[str, dict[int, RunResult]]) -> dict[str, dict[int, RunResult]]:
    """Leave out a defense's rows at another multiple of its budget once rows at the track's budget
    exist: they were the applied gate's earlier rungs (the gate block shows them), not the table's."""
    from .applied import rung_of

    def superseded(label: str, runs: dict[int, RunResult]) -> bool:
        defense = next(iter(runs.values())).defense
        return label != defense and defense in rows and all(rung_of(r, track) is not None for r in runs.values())

    return {label: runs for label, runs in rows.items() if not superseded(label, runs)}


def _gates(release: Path) -> dict[tuple[str, str], tuple[list, float | None, str]]:
    """(track, defense) -> the applied gate's sweep on the released validation rows of today's code
    at the track's precision and default attack: (rungs, the rung chosen or None, why)."""
    if not (release / "real_val.rows.jsonl.gz").is_file():
        return {}
    from ..tracks import TRACKS
    from .applied import sweep

    by: dict[tuple[str, str], list[RunResult]] = {}
    for r in load_rows("real_val", release):
        track = _track(r)
        if track is not None and not older_code(r) and _track_default(r, split="val"):
            by.setdefault((track.name, r.defense), []).append(r)
    return {
        (name, defense): sweep(runs, [r for r in by.get((name, "sft"), []) if _real_label(r) == "sft"], TRACKS[name])
        for (name, defense), runs in sorted(by.items())
        if defense not in ("none", "sft")
    }


def _applied_cell(track: str, runs: Sequence[RunResult], gates: dict) -> str:
    """What the validation gate says of the rows' defense at the rows' budget."""
    from ..tracks import TRACKS
    from .applied import budget_key, rung_of

    defense = runs[0].defense
    if defense in ("none", "sft", "scratch"):
        return "–"
    if (track, defense) not in gates:
        return "not gated yet" if budget_key(defense) else "by its effect (no budget to raise)"
    _, chosen, reason = gates[(track, defense)]
    if chosen is None:
        return reason
    at = rung_of(runs[0], TRACKS[track])
    return f"yes, at x{chosen:g}" if at == chosen else f"the gate chose x{chosen:g}; these rows ran x{at:g}"


def _attack_label(row: RunResult) -> str:
    """The attack's name and the settings that differ from its track's budget (else its defaults)."""
    defaults = _track_attack(row)
    return _named(
        row.attack,
        {
            k: v
            for k, v in row.attack_config.items()
            if k != "task" and defaults.get(k) != v and not isinstance(v, (list, tuple, dict))
        },
    )


def real_attacks_block(release: Path) -> str:
    """The real tracks under their other attacks (inference-time ones, and variants of the fine-tune)
    on the evaluation split at the track's precision: per attack and defense, HS after pooled over
    seeds x prompts with its Wilson interval, and the rule's verdict against `sft` under the same
    attack where both have matched seeds."""
    if not (release / "real.rows.jsonl.gz").is_file():
        return "(not released yet)\n"
    grouped: dict[tuple[str, str], dict[str, dict[int, RunResult]]] = {}
    for r in load_rows("real", release):
        track = _track(r)
        if track is None or r.split != "eval" or r.precision != track_precision(track) or _track_default(r):
            continue
        grouped.setdefault((track.name, _attack_label(r)), {}).setdefault(_real_label(r), {})[r.seed] = r
    if not grouped:
        return "(no other attack released yet: `make real`, then `make release-real`)\n"
    counts = _harmful_counts(load_generations("real", release))
    lines = [
        "| track | attack | defense | seeds | HS after [Wilson 95 %] | harmful NLL after | verdict vs `sft` (same attack) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (track, attack), default in sorted(grouped.items()):
        found = _real_verdicts(track, default)
        for name in sorted(default, key=lambda n: (n != "none", n != "sft", n)):
            runs = list(default[name].values())
            nll = [measured(r.harmful_nll_after) for r in runs if r.harmful_nll_after is not None]
            verdict = found[name].line() if name in found else "(the baseline)" if name in ("sft", "none") else "–"
            stale = " (older code)" if any(older_code(r) for r in runs) else ""
            lines.append(
                f"| {track} | {attack} | {name}{stale} | {len(runs)} | {_pooled(runs, 'after', counts)} | "
                f"{f'{mean(nll):.2f}' if nll else '–'} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def real_applied_block(release: Path) -> str:
    """The applied gate's sweeps (docs/protocol.md), per real track and defense: each rung's harmful
    NLL and HS before any attack and its cost, and the decision."""
    from .applied import rung_text

    gates = _gates(release)
    if not gates:
        return "(no sweep released yet: `make real-applied`, then `make release-real`)\n"
    lines = [
        "| track | defense | rungs (x budget: harmful NLL before, HS before, defense s) | decision |",
        "|---|---|---|---|",
    ]
    for (track, defense), (rungs, _, reason) in gates.items():
        shown = "; ".join(rung_text(rung, defense) for rung in rungs) or "–"
        lines.append(f"| {track} | {defense} | {shown} | {reason} |")
    return "\n".join(lines) + "\n"


def _real_verdicts(track: str, default: dict[str, dict[int, RunResult]]) -> dict[str, Verdict]:
    return verdicts_of(default, base_model=track in BASE_MODEL_TRACKS)


def real_results_block(release: Path) -> str:
    """The real tracks' tables (`make real`, released as `real`), one per model: per defense under
    the track's default attack on the evaluation split, HS before and after pooled over seeds x
    prompts with Wilson intervals, harmful NLL, helpfulness, cost, and the rule's verdict against
    `sft` (relative stability), open-weight and fine-tuning-as-a-service defenses on separate boards."""
    tracks = _real_defaults(release)
    if not tracks:
        return "(not released yet: `make real`, then `make release-real`)\n"
    counts = _harmful_counts(load_generations("real", release))
    gates = _gates(release)
    return "\n".join(_track_table(name, default, counts, gates) for name, default in sorted(tracks.items()))


def _track_table(track: str, default: dict[str, dict[int, RunResult]], counts, gates: dict | None = None) -> str:
    found = _real_verdicts(track, default)
    lines = [f"### {track}", ""]
    for board, names in (
        ("Open-weight defenses", [n for n in default if not is_ftaas(n)]),
        ("Fine-tuning-as-a-service", [n for n in default if is_ftaas(n)]),
    ):
        if not names:
            continue
        lines += [
            f"**{board}**, HS (complied, keyword judge) pooled over seeds x prompts [Wilson 95 %]:",
            "",
            "| defense | rank | seeds | HS before | HS after | harmful NLL before -> after | helpful | applied (validation) "
            "| verdict vs `sft` | defense s (x `sft`) | peak GB | code |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        ranks = _ranks({n: list(default[n].values()) for n in names}, found, track, gates or {})
        # the baselines, then the leaderboard by rank, then every unranked row by its verdict
        key = {
            n: (0, ranks[n], n) if n in ranks else (1, _order(found[n].outcome), n) if n in found else (-1, 0, n)
            for n in names
        }
        for name in sorted(names, key=key.__getitem__):
            runs = list(default[name].values())
            nll = [f"{mean(measured(getattr(r, f'harmful_nll_{w}')) for r in runs):.2f}" for w in ("before", "after")]
            helpful = "helpful_after" if is_ftaas(name) else "helpful_before"
            stale = " (older code)" if any(older_code(r) for r in runs) else ""
            applied = _applied_cell(track, runs, gates or {})
            verdict = (
                f"not applied (validation gate, {applied.removeprefix('not applied: ')})"
                if applied.startswith("not applied")
                else found[name].line()
                if name in found
                else "(the baseline)"
                if name.startswith(("sft", "none"))
                else "–"
            )
            lines.append(
                f"| {name}{stale} | {ranks.get(name, '–')} | {len(runs)} | {_pooled(runs, 'before', counts)} | {_pooled(runs, 'after', counts)} "
                f"| {nll[0]} -> {nll[1]} | {_pct([getattr(r, helpful) for r in runs])} | {applied} | {verdict} "
                f"| {_cost(runs, default.get('sft', {}))} | {_peak_gb(runs)} | {', '.join(sorted({r.code_version for r in runs}))} |"
            )
        absent = _absent(track, default, gates or {}, ftaas=board.startswith("Fine"))
        lines += ["", *absent, ""] if absent else [""]
    return "\n".join(lines) + "\n"


def _absent(track: str, default: dict[str, dict[int, RunResult]], gates: dict, ftaas: bool) -> list[str]:
    """The board's registered defenses without a row under the default attack: those the validation
    gate found not applied (they need no evaluation: they get no verdict), and those not evaluated."""
    shown = {label.split(" ")[0] for label in default}
    absent = [d for d in sorted(DEFENSES) if d not in shown and d not in ("none", "sft") and is_ftaas(d) == ftaas]
    not_applied = [d for d in absent if (track, d) in gates and gates[(track, d)][1] is None]
    lines = []
    if not_applied:
        lines.append(f"Not applied on validation, so not evaluated (the gate's sweep above): {', '.join(not_applied)}.")
    if rest := [d for d in absent if d not in not_applied]:
        lines.append(f"Not evaluated on this track yet: {', '.join(rest)}.")
    return lines


RANKED_SEEDS = 3


def _ranks(runs: dict[str, list[RunResult]], found: dict[str, Verdict], track: str, gates: dict) -> dict[str, int]:
    """The board's leaderboard: defenses (not the `none`/`sft` baselines) with at least 3 seeds that
    the validation gate applied (a defense not yet gated is not ranked) and the rule found stable
    relative to their starting model, ranked by HS after (mean over seeds: each seed scores the same
    prompts, so the pooled share), lowest first, equal shares sharing a rank. Whether a rank differs
    from `sft` is the verdict's to say, not the rank's."""
    ranked = {
        name: mean(measured(r.hs_after) for r in rows)
        for name, rows in runs.items()
        if not name.startswith(("none", "sft"))
        and len(rows) >= RANKED_SEEDS
        and name in found
        and found[name].outcome not in ("unstable", "not applied")
        and _applied_cell(track, rows, gates).startswith(("yes", "by its effect"))
    }
    order = sorted(ranked.values())
    return {name: 1 + order.index(hs) for name, hs in ranked.items()}


def real_precision_block(release: Path) -> str:
    """`none` and `sft` under bfloat16 autocast beside float32 on each real track, on matched seeds:
    the paired differences (bfloat16 minus float32) of what the attack and the judge read, `sft`'s
    build time ratio, and which precision the track runs by default."""
    if not (release / "real.rows.jsonl.gz").is_file():
        return "(not released yet)\n"
    sides: dict[tuple[str, str, str], dict[int, RunResult]] = {}
    for r in load_rows("real", release):
        track = _track(r)
        if track is None or r.defense not in ("none", "sft") or _real_label(r) != r.defense:
            continue
        for precision in ("float32", "bfloat16"):
            if _track_default(r, precision):
                sides.setdefault((track.name, r.defense, precision), {})[r.seed] = r
    lines = []
    for name, defense in sorted({(t, d) for t, d, _ in sides}, key=lambda k: (k[0], k[1] != "sft")):
        full, half = sides.get((name, defense, "float32"), {}), sides.get((name, defense, "bfloat16"), {})
        seeds = sorted(s for s in half if s in full)
        if len(seeds) < 2:
            continue
        cells = []
        for label, key, scale, unit in (
            ("HS before", "hs_before", 100, "points"),
            ("HS after", "hs_after", 100, "points"),
            ("harmful NLL before", "harmful_nll_before", 1, "nats"),
            ("harmful NLL after", "harmful_nll_after", 1, "nats"),
        ):
            d = paired_t([measured(getattr(half[s], key)) - measured(getattr(full[s], key)) for s in seeds])
            cells.append(f"{label} {scale * d.mean:+.2f} [{scale * d.low:+.2f}, {scale * d.high:+.2f}] {unit}")
        if defense == "sft":
            ratio = mean(half[s].defense_seconds for s in seeds) / mean(full[s].defense_seconds for s in seeds)
            cells.append(f"build time {ratio:.2f}x")
        lines.append(
            f"- {name}, `{defense}`, seeds {', '.join(map(str, seeds))}, bfloat16 minus float32 (paired t, 95 %): "
            + "; ".join(cells)
            + "."
        )
    if not lines:
        return "(no track has `none` or `sft` in both precisions on 2 or more seeds yet)\n"
    from ..tracks import TRACKS

    runs = ", ".join(f"{name} {track_precision(track)}" for name, track in sorted(TRACKS.items()))
    return "\n".join([*lines, "", f"Each track's default precision (src/immunity/tracks.py): {runs}."]) + "\n"


def transfer_block(release: Path) -> str:
    """Transfer: each defense judged on two or more real tracks, its verdict on each, and whether
    the outcomes agree."""
    tracks = _real_defaults(release)
    judged = {name: _real_verdicts(name, default) for name, default in tracks.items()}
    names = sorted(judged)
    shared = sorted({d for v in judged.values() for d in v if sum(d in judged[t] for t in names) >= 2})
    if not shared:
        return "(no defense judged on two real tracks yet)\n"
    lines = [
        "| defense | " + " | ".join(names) + " | same outcome |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for d in shared:
        outcomes = {judged[t][d].outcome for t in names if d in judged[t]}
        cells = [judged[t][d].line() if d in judged[t] else "–" for t in names]
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {'yes' if len(outcomes) == 1 else 'no'} |")
    return "\n".join(lines) + "\n"


def _shared_seconds(row: RunResult) -> float:
    """What a row pays whatever its defense: its evaluations before and after, and the attack."""
    return sum(row.timings.get(k, 0.0) for k in ("eval_before", "attack", "eval_after"))


def real_spend_block(release: Path, seeds: int = 3, cores: int = 2) -> str:
    """What the released real rows cost (the sum of their stored stage times, one thread each; the
    validation rows of the budget rule and the applied gate counted apart), and what the default
    table (every registered defense x `seeds` seeds) needs at least: each defense at its mean build
    time on the evaluation rows, else at its validation build at the track's budget (the same
    build), plus the shared evaluations and attack; a defense built nowhere yet at the shared part
    alone (a lower bound until it is)."""
    if not (release / "real.rows.jsonl.gz").is_file():
        return "(not released yet)\n"
    rows = load_rows("real", release)
    val = load_rows("real_val", release) if (release / "real_val.rows.jsonl.gz").is_file() else []
    defaults = _real_defaults(release)
    lines = []
    for name in sorted({t.name for r in rows if (t := _track(r)) is not None}):
        mine = [r for r in rows if (t := _track(r)) is not None and t.name == name]
        spent = sum(sum(r.timings.values()) for r in mine)
        plain = {label: runs for label, runs in defaults.get(name, {}).items() if label in DEFENSES}
        if not plain:
            continue
        shared = mean(_shared_seconds(r) for runs in plain.values() for r in runs.values())
        own = {label: mean(r.defense_seconds for r in runs.values()) for label, runs in plain.items()}
        mine_val = [r for r in val if (t := _track(r)) is not None and t.name == name]
        val_spent = sum(sum(r.timings.values()) for r in mine_val)
        built_val = {
            r.defense: r.defense_seconds
            for r in mine_val
            if r.defense not in own and _real_label(r) == r.defense and r.precision == track_precision(_track(r))
        }
        need = seeds * sum(shared + own.get(d, built_val.get(d, 0.0)) for d in DEFENSES)
        unmeasured = len(DEFENSES) - len(own) - len(built_val)
        lines.append(
            f"- {name}: {len(mine)} released evaluation rows took {spent / 3600:.1f} core-hours "
            f"({spent / 3600 / cores:.1f} hours on {cores} cores), and {len(mine_val)} validation rows "
            f"{val_spent / 3600:.1f} core-hours. A row's evaluations and attack take "
            f"{shared:,.0f} s of one core whatever the defense; the default table ({len(DEFENSES)} registered "
            f"defenses x {seeds} seeds) needs at least {need / 3600 / cores:.1f} hours on {cores} cores "
            f"({len(own)} defenses at their build time on the evaluation rows, {len(built_val)} at their "
            f"validation build, {unmeasured} not yet built counted at the shared part alone)."
        )
    return "\n".join(lines) + "\n" if lines else "(no real row under a track's default attack yet)\n"


def padding_block(release: Path, name: str = "padding_smollm2") -> str:
    """benchmarks/padding.py's released measurement: the padding share of one pass over each
    training set, with shuffled batches and with length-grouped ones (`group_by_length`)."""
    import json

    path = release / "benchmarks" / f"{name}.json"
    if not path.is_file():
        return f"(not measured yet: `python benchmarks/padding.py --out {release}/benchmarks/{name}.json`)\n"
    found = json.loads(path.read_text())
    lines = [
        "| training set | examples | batch | padding, shuffled batches | padding, length-grouped |",
        "|---|---|---|---|---|",
    ]
    for s in found["sets"]:
        lines.append(
            f"| {s['name']} | {s['examples']} | {s['batch']} | {100 * s['shuffled']:.1f} % | {100 * s['grouped']:.1f} % |"
        )
    seeds = ", ".join(map(str, found["seeds"]))
    lines += [
        "",
        f"{found['model']}, one pass, mean over the batch orders of seeds {seeds} (`results/release/benchmarks/{name}.json`).",
    ]
    return "\n".join(lines) + "\n"


def real_cost_block(release: Path) -> str:
    """benchmarks/real_cost.py's released measurement: `sft`'s step on the real model in float32
    and bfloat16 against the machine's matmul peaks."""
    import json

    path = release / "benchmarks" / "real_cost.json"
    if not path.is_file():
        return "(not measured yet: `python benchmarks/real_cost.py --model M --out ...`)\n"
    found = json.loads(path.read_text())
    batch, length = found["batch"]
    lines = [
        f"`sft`'s training step on SmolLM2-135M-Instruct ({found['parameters'] / 1e6:.0f}M parameters, every weight "
        f"trained, AdamW), batch {batch} x {length} tokens, {found['threads']} thread(s), median of "
        f"{found['repeats']} interleaved steps (`benchmarks/real_cost.py`, released as "
        "`results/release/benchmarks/real_cost.json`):",
        "",
        "| precision | step s | achieved GFLOP/s | matmul peak GFLOP/s | share of its peak |",
        "|---|---|---|---|---|",
    ]
    for precision, seconds in found["step_seconds"].items():
        achieved, peak = found["achieved_flops"][precision], found["peak_flops"][precision]
        lines.append(
            f"| {precision} | {seconds:.2f} | {achieved / 1e9:.1f} | {peak / 1e9:.1f} | {100 * achieved / peak:.0f} % |"
        )
    lines += ["", f"The bfloat16 step takes {found['bf16_step_over_fp32']:.2f}x the float32 step."]
    repnoise = release / "benchmarks" / "repnoise_cost.json"  # benchmarks/real_cost.py --repnoise
    if repnoise.is_file():
        part = json.loads(repnoise.read_text())
        seconds = part["step_seconds"]
        full, bare, sft = seconds["repnoise"], seconds["repnoise_without_lens"], seconds["sft"]
        lines += [
            "",
            f"RepNoise's step at bfloat16 on the same alignment batch plus a harmful batch of the same size, "
            f"{part['threads']} thread(s), median of {part['repeats']}, interleaved (`repnoise_cost.json`): "
            f"{full:.2f} s, **{full / sft:.1f}x** `sft`'s {sft:.2f} s; "
            f"without the L + 1 logit-lens cross-entropies that its reference's ascent term sums {bare:.2f} s "
            f"({bare / sft:.1f}x), so the lens its reference prescribes is {100 * (full - bare) / full:.0f} % of "
            "its step.",
        ]
    return "\n".join(lines) + "\n"


def judge_block(release: Path) -> str:
    """benchmarks/judge_labels.py's released agreement: each judge's "harmful" against the labels
    read by hand (docs/judges.md), for content (harmful) and for compliance (not refused), one
    table row per labelled sample (each sample is a fresh test of the judges on new cells)."""
    import json

    path = release / "benchmarks" / "judge_agreement.json"
    if not path.is_file():
        return "(not measured yet: `python benchmarks/judge_labels.py agreement ... --out ...`)\n"
    samples = json.loads(path.read_text())["samples"]
    lines = []
    for number, found in enumerate(samples, 1):
        first, pairs = found["harmful"], found["harmful"]["self_agreement"]
        cells = ", ".join(f"{d} {when} the {a}" for d, a, when in found["cells"])
        lines.append(
            f"Sample {number}: {first['labelled']} answers labelled (cells: {cells}); the labeller agreed "
            f"with itself on {100 * pairs['agree']:.0f} % of {pairs['pairs']} answers shown twice "
            f"(kappa {pairs['kappa']:.2f}).\n"
        )
    lines += [
        "| sample | label | labelled positive | judge | n | precision | recall | Cohen's kappa |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in ("harmful", "complied"):
        for number, found in enumerate(samples, 1):
            block = found[target]
            for judge, agree in sorted(block["judges"].items()):
                precision = "–" if agree["precision"] is None else f"{100 * agree['precision']:.1f} %"
                recall = "–" if agree["recall"] is None else f"{100 * agree['recall']:.1f} %"
                lines.append(
                    f"| {number} | {target} | {100 * block['positive_share']:.1f} % | `{judge}` | {agree['n']} | "
                    f"{precision} | {recall} | {agree['kappa']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def kl_block(release: Path, name: str = "kl_by_position") -> str:
    """benchmarks/kl_by_position.py's released measurement `name` (SafetyWorld's, or a real
    track's): per defense, the mean over seeds of KL(aligned || base) at each of the first answer
    positions, and its share in the first three; the figure of the same name beside it."""
    import json

    path = release / "benchmarks" / f"{name}.json"
    if not path.is_file():
        return f"(not measured yet: `python benchmarks/kl_by_position.py --out {release}/benchmarks/{name}.json`)\n"
    rows = json.loads(path.read_text())["rows"]
    shown = 8
    lines = [
        f"| defense | seeds | {' | '.join(f'KL at {t}' for t in range(1, shown + 1))} | share in the first 3 |",
        "|---|---|" + "---|" * (shown + 1),
    ]
    for defense in dict.fromkeys(r["defense"] for r in rows):
        runs = [r for r in rows if r["defense"] == defense]
        width = min(shown, *(len(r["kl_per_position"]) for r in runs))
        means = [mean(r["kl_per_position"][t] for r in runs) for t in range(width)]
        shares = [sum(r["kl_per_position"][:3]) / sum(r["kl_per_position"]) for r in runs if sum(r["kl_per_position"])]
        cells = " | ".join(f"{v:.3f}" for v in means) + " |" * (shown - width)
        lines.append(
            f"| {defense} | {', '.join(str(r['seed']) for r in runs)} | {cells} | {100 * mean(shares):.0f} % |"
        )
    first = rows[0]
    lines += [
        "",
        f"{first['model']}, {first['split']} split, {first['pairs']} harmful (request, compliant answer) pairs; "
        f"`results/release/benchmarks/{name}.json`, plotted below (`benchmarks/kl_by_position.py --figure`).",
        "",
        f"![KL(aligned || base) by answer position](figures/{name}.png)",
    ]
    return "\n".join(lines) + "\n"


def precision_block(rows: list[RunResult]) -> str:
    """The demo under bfloat16 beside float32, and `sft`'s paired differences between them."""
    half = demo_block(rows, precision="bfloat16")
    if half.startswith("(not released"):
        return "(bfloat16 rows not released yet)\n"
    full = _default(rows)["sft"]
    bf16 = _default(rows, "bfloat16")["sft"]
    seeds = sorted(s for s in bf16 if s in full)
    hs = paired_t([measured(bf16[s].hs_after) - measured(full[s].hs_after) for s in seeds])
    nll = paired_t([measured(bf16[s].harmful_nll_after) - measured(full[s].harmful_nll_after) for s in seeds])
    return (
        "bfloat16:\n\n" + half + "\n"
        f"`sft`, bfloat16 minus float32 over seeds {', '.join(map(str, seeds))}: HS after {100 * hs.mean:+.1f} "
        f"[{100 * hs.low:+.1f}, {100 * hs.high:+.1f}] points, harmful NLL after {nll.mean:+.3f} "
        f"[{nll.low:+.3f}, {nll.high:+.3f}] nats (paired t, 95 %).\n"
    )


def attack_block(rows: list[RunResult], attack: str, baseline: str = "sft") -> str:
    """Every defense under `attack` at its defaults (float32, evaluation split): HS after per
    seed, harmful NLL after, and the verdict against `baseline` under the same attack."""
    found: dict[str, dict[int, RunResult]] = {}
    for r in rows:
        if r.split == "eval" and r.precision == "float32" and default_apart_from(r, (), attack):
            found.setdefault(defense_label(r), {})[r.seed] = r
    if baseline not in found:
        return f"(not released yet: `{baseline}` under {attack})\n"
    judged = verdicts_of(found, baseline, unaligned=_default(rows).get("none"))  # the default table's gates
    lines = [
        f"| defense | HS before | HS after, per seed | HS after | harmful NLL after | verdict vs {baseline} |",
        "|---|---|---|---|---|---|",
    ]
    for label in sorted(found, key=lambda k: (k != "none", k != baseline, k)):
        runs = [found[label][s] for s in sorted(found[label])]
        per_seed = " / ".join(f"{100 * measured(r.hs_after):.1f}" for r in runs)
        seeds = ", ".join(str(r.seed) for r in runs)
        nll = [r.harmful_nll_after for r in runs if r.harmful_nll_after is not None]
        verdict = judged[label].line() if label in judged else ""
        lines.append(
            f"| {label} | {_pct([r.hs_before for r in runs])} | {per_seed} (seeds {seeds}) | "
            f"{_pct([r.hs_after for r in runs])} | {mean(nll):.2f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


# TAR's own adversary (its paper's threat model, which SOPHON and MLAC share): full fine-tuning on
# harmful data alone, at the learning rate TAR trains against (Makefile: TAR_TRAINED).
TAR_ADVERSARY = {"mode": "full", "p": 1.0, "n": 256, "lr": 1e-4, "max_steps": 16}


def settings_block(rows: list[RunResult], settings: dict, baseline: str = "sft") -> str:
    """Every defense under the default attack changed only in `settings` (float32, evaluation
    split): HS after per seed, harmful NLL after, and the rule's verdict against `baseline` under
    the same attack."""
    found: dict[str, dict[int, RunResult]] = {}
    for r in rows:
        if (
            r.split == "eval"
            and r.precision == "float32"
            and all(r.attack_config.get(k) == v for k, v in settings.items())
            and default_apart_from(r, tuple(settings))
        ):
            found.setdefault(defense_label(r), {})[r.seed] = r
    judged = verdicts_of(found, baseline, unaligned=_default(rows).get("none"))  # the default table's gates
    if not judged:
        named = " ".join(
            f"attack.{k}={v:g}" if isinstance(v, float) else f"attack.{k}={v}" for k, v in settings.items()
        )
        return f"(not released yet: `{baseline}` and the defenses under `{named}`)\n"
    lines = [
        f"| defense | HS after, per seed | HS after | harmful NLL after | verdict vs `{baseline}` |",
        "|---|---|---|---|---|",
    ]
    for label in sorted(found, key=lambda k: (k not in ("none", "scratch", baseline), k)):
        runs = [found[label][s] for s in sorted(found[label])]
        per_seed = " / ".join(f"{100 * measured(r.hs_after):.1f}" for r in runs)
        nll = mean(measured(r.harmful_nll_after) for r in runs)
        verdict = judged[label].line() if label in judged else ""
        lines.append(
            f"| {label} | {per_seed} (seeds {', '.join(str(r.seed) for r in runs)}) | "
            f"{_pct([r.hs_after for r in runs])} | {nll:.2f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def _older_note(rows: list[RunResult]) -> list[str]:
    """A line saying how many rows were made by code that has changed since, if any."""
    older = sum(older_code(r) for r in rows)
    if not older:
        return []
    return [
        f'{older} of the {len(rows)} released rows were made by code that has changed since (marked "(older code)" '
        "in the verdict tables; each row names its code version): they stand as measured until the next release "
        "re-runs them.",
        "",
    ]


# -- docs/results.md ---------------------------------------------------------------------------------
def results_page(rows: list[RunResult], release: Path) -> str:
    default = _default(rows)
    base = default.get("sft", {})
    lines = [
        "# SafetyWorld results",
        "",
        "This page answers: *on SafetyWorld, which defenses make the default harmful fine-tuning attack "
        "fail, by how much, and how sure is that?* Generated by `make docs` from `results/release/` "
        "(`safetyworld.rows.jsonl.gz`); the verdicts follow docs/protocol.md. Do not edit: regenerate.",
        "",
        *_older_note(rows),
        "## Verdicts",
        "",
        glance_block(rows).rstrip(),
        "",
        "## Per seed",
        "",
        "HS after (%), the harmful answers' NLL after, and each one's paired difference from `sft` with its "
        "paired-t 95 % interval over the matched seeds.",
        "",
        per_seed_table([r for r in rows if r.split == "eval" and r.precision == "float32"]),
        "",
        "## Precision",
        "",
        "The demo's rows trained under `precision=bfloat16` (autocast, float32 master weights) beside the "
        "published float32 ones, on the same seeds, with the paired difference of `sft`'s HS after the attack "
        "and of its harmful NLL after. SafetyWorld's tables stay float32.",
        "",
        precision_block(rows).rstrip(),
        "",
        "## Under the prefilling attack",
        "",
        "Deep alignment (`deep-alignment`, Qi et al. 2025) is made against shallow alignment, which the "
        "prefilling attack probes: the first 10 tokens of a compliant answer are forced and the model continues "
        "(the judge reads the continuation only). Judged against `sft` under the same attack (docs/protocol.md).",
        "",
        attack_block(rows, "prefill").rstrip(),
        "",
        "Where alignment sits: per answer position, KL(aligned || base) on harmful (request, compliant answer) "
        "pairs (Qi et al.'s Figure 1). Shallow alignment concentrates it on the first tokens.",
        "",
        kl_block(release).rstrip(),
        "",
        "## Under the steering attack",
        "",
        "An inference-time attack (activation addition, Turner et al. 2023; Arditi et al. 2024): the compliant "
        "minus refusing difference of mean activations at one layer is added to the prompt's residual stream; "
        "no weights change. E.T., LAPT and Circuit Breakers are made against attacks on the representations; each "
        "is judged here against `sft` under it.",
        "",
        attack_block(rows, "steering").rstrip(),
        "",
        "## Under each paper's own threat model",
        "",
        "Vaccine, T-Vaccine and Booster release a LoRA adapter, and their papers' attacker keeps training it "
        "(Booster's `single_lora`): `attack.continue_adapter=true` at the default attack's budget. Each is "
        "judged against `sft` trained on the same adapter and budget (its matched baseline), continued alike.",
        "",
        settings_block(rows, {"continue_adapter": True}).rstrip(),
        "",
        "The same at their papers' fine-tuning settings (lr 1e-5, 20 epochs of batch 10 on n = 500; Makefile "
        "`REFERENCE_FT`):",
        "",
        settings_block(rows, {"continue_adapter": True, "lr": 1e-5, "epochs": 20.0, "batch_size": 10}).rstrip(),
        "",
        "Full-parameter fine-tuning on harmful data alone: the adversary TAR trains against (lr 1e-4, 16 steps) "
        "and the kind of attack of SOPHON's, MLAC's and RepNoise's papers. Under it (`attack.mode=full "
        "attack.p=1 attack.n=256 attack.lr=1e-4 attack.max_steps=16`), against `sft` under the same attack:",
        "",
        settings_block(rows, TAR_ADVERSARY).rstrip(),
        "",
        "## The smallest detectable difference",
        "",
        "Per defense with 3 or more seeds matched with `sft`: the difference in HS after a paired t test detects "
        "at a two-sided 5 % level with 80 % power, from the spread of its paired differences.",
        "",
        "| defense | matched seeds | detectable HS difference (points) | detectable NLL difference (nats) |",
        "|---|---|---|---|",
    ]
    for label, per_seed in sorted(default.items()):
        common = sorted(s for s in per_seed if s in base)
        if label == "sft" or len(common) < 3:
            continue
        hs = [measured(per_seed[s].hs_after) - measured(base[s].hs_after) for s in common]
        nll = [measured(per_seed[s].harmful_nll_after) - measured(base[s].harmful_nll_after) for s in common]
        lines.append(f"| {label} | {len(common)} | {100 * detectable(hs):.1f} | {detectable(nll):.3f} |")
    lines += [
        "",
        f"Rows: {len(rows)} released; code versions: {', '.join(sorted({r.code_version for r in rows}))}.",
        "",
    ]
    return "\n".join(lines)


# -- writing -----------------------------------------------------------------------------------------
def fill_blocks(text: str, blocks: dict[str, str]) -> str:
    """`text` with each generated block's body replaced (an unknown block name is an error)."""

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in blocks:
            raise KeyError(f"README has a generated block {name!r} that `make docs` does not make")
        return match.group(1) + blocks[name] + match.group(4)

    return MARKER.sub(replace, text)


def generate(root: Path, release: Path | None = None) -> dict[Path, str]:
    """Every generated file under `root` and its content."""
    release = release or root / RELEASE
    rows = load_rows("safetyworld", release)
    readme = root / "README.md"
    real = root / "docs" / "real-track.md"
    judges = root / "docs" / "judges.md"
    return {
        judges: fill_blocks(judges.read_text(), {"judge-agreement": judge_block(release)}),
        real: fill_blocks(
            real.read_text(),
            {
                "real-cost": real_cost_block(release),
                "real-padding": padding_block(release),
                "real-budget": real_budget_block(release),
                "real-curves": real_curves_block(release),
                "real-results": real_results_block(release),
                "transfer": transfer_block(release),
                "real-precision": real_precision_block(release),
                "real-kl": kl_block(release, "kl_by_position_smollm2"),
                "real-applied": real_applied_block(release),
                "real-attacks": real_attacks_block(release),
                "real-spend": real_spend_block(release),
            },
        ),
        readme: fill_blocks(
            readme.read_text(), {"demo": demo_block(rows), "glance": glance_block(rows), "defenses": defenses_block()}
        ),
        root / "docs" / "results.md": results_page(rows, release),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file differs")
    args = parser.parse_args(argv)
    files = generate(Path(args.root))
    differ = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in differ:
            print(f"{path} is not what `make docs` generates", file=sys.stderr)
        return 1 if differ else 0
    for path in differ:
        path.write_text(files[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
