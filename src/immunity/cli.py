"""`immunity list | run | bench | report | demo`.

    immunity run --defense sft --seed 0 --json attack.p=0.05 attack.lr=2e-4
    immunity bench --defenses none,sft --seeds 0,1,2 --grid attack.p=0,0.01,0.05,0.1,0.2
    immunity report --store results/results.db
    immunity demo --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict
from statistics import mean, stdev

from .bench.pipeline import Pipeline, config_hash
from .bench.report import markdown_table
from .bench.store import Store
from .attacks.harmful_finetune import HarmfulFinetuneConfig
from .config import ConfigError, RunConfig, build_config, help_lines, load_run_config, parse_overrides
from .registry import ATTACKS, DEFENSES, JUDGES, _load_builtins
from .world.generator import TASKS

DEFAULT_STORE = "results/results.db"


def _catalogue() -> dict:
    _load_builtins()
    return {
        "defenses": [{"name": n, "stage": c.stage.value} for n, c in sorted(DEFENSES.items())],
        "attacks": sorted(ATTACKS), "tasks": list(TASKS), "judges": sorted(JUDGES),
        "models": ["safetyworld", "<local HF directory>", "<hub id (downloads; only when named)>"],
    }


def cmd_list(args) -> int:
    cat = _catalogue()
    if args.json:
        print(json.dumps({**cat, "defenses": [d["name"] for d in cat["defenses"]]}))
        return 0
    print("defenses:", ", ".join(f"{d['name']} ({d['stage']})" for d in cat["defenses"]))
    for key in ("attacks", "tasks", "judges", "models"):
        print(f"{key}:", ", ".join(cat[key]))
    if args.keys:
        print("\nrun configuration keys (key=value):")
        print("\n".join("  " + line for line in help_lines(RunConfig)))
        for name, cls in sorted(DEFENSES.items()):
            for line in help_lines(cls.Config):
                print(f"  defense.{line}   [{name}]")
    return 0


def _run_one(cfg: RunConfig, store: Store | None, progress: bool) -> dict:
    result = Pipeline(cfg, progress).run()
    if store is not None:
        store.put(result, asdict(cfg))
    return result


def cmd_run(args) -> int:
    cfg = load_run_config(args.config, args.overrides, defense=args.defense, seed=args.seed)
    store = Store(args.store) if args.store else None
    result = _run_one(cfg, store, progress=not args.json)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(markdown_table([result]))
    return 0


def _grid(items: list[str]) -> list[dict]:
    axes = []
    for item in items:
        key, values = next(iter(parse_overrides([item]).items()))
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def cmd_bench(args) -> int:
    store = Store(args.store)
    plan = []
    for defense, seed, point in itertools.product(args.defenses.split(","), _ints(args.seeds), _grid(args.grid)):
        overrides = args.overrides + [f"{k}={v}" for k, v in point.items()]
        plan.append(load_run_config(args.config, overrides, defense=defense, seed=seed))
    todo = [c for c in plan if not store.has(config_hash(c))]
    print(f"bench: {len(plan)} runs, {len(plan) - len(todo)} already stored, {len(todo)} to run",
          file=sys.stderr)
    for i, cfg in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {cfg.defense} seed={cfg.seed} {cfg.attack}", file=sys.stderr)
        _run_one(cfg, store, progress=not args.quiet)
    hashes = {config_hash(c) for c in plan}
    print(markdown_table([r for r in store.results() if r["config_hash"] in hashes]))
    return 0


def cmd_report(args) -> int:
    results = Store(args.store).results()
    if args.defense:
        results = [r for r in results if r["defense"] in args.defense.split(",")]
    if args.split:
        results = [r for r in results if r["split"] == args.split]
    if args.attack is not None:  # the default attack with these overrides, exactly
        wanted = asdict(build_config(HarmfulFinetuneConfig, parse_overrides(args.attack)))
        results = [r for r in results if r["attack_config"] == wanted]
    table = markdown_table(results)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    print(table)
    return 0


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def _pct(values: list[float]) -> str:
    values = [100 * v for v in values]
    return f"{mean(values):.1f} ± {stdev(values) if len(values) > 1 else 0.0:.1f}"


def phenomena_table(rows: dict[str, list[dict]]) -> str:
    """The README's table: the world breaks as the literature's models do."""
    base, sft, p10, p0 = rows["base"], rows["sft"], rows["p10"], rows["p0"]
    p = p10[0]["attack_config"]["p"]
    return "\n".join([
        "| model | HS (eval harmful, unseen requests) | HS (held-out categories) | benign |",
        "|---|---|---|---|",
        f"| base, pretrained | {_pct([r['hs_before'] for r in base])} | "
        f"{_pct([r['hs_heldout_before'] for r in base])} | helpful {_pct([r['helpful_before'] for r in base])} |",
        f"| `sft`-aligned | {_pct([r['hs_before'] for r in sft])} | "
        f"{_pct([r['hs_heldout_before'] for r in sft])} | helpful {_pct([r['helpful_before'] for r in sft])} |",
        f"| `sft` + default attack (p = {p:g}) | {_pct([r['hs_after'] for r in p10])} | "
        f"{_pct([r['hs_heldout_after'] for r in p10])} | FA {_pct([r['fa_after'] for r in p10])} |",
        f"| `sft` + benign-only fine-tuning (p = 0) | {_pct([r['hs_after'] for r in p0])} | "
        f"{_pct([r['hs_heldout_after'] for r in p0])} | FA {_pct([r['fa_after'] for r in p0])} |",
    ])


def cmd_demo(args) -> int:
    store = Store(args.store)
    rows: dict[str, list[dict]] = {"base": [], "sft": [], "p10": [], "p0": []}
    seeds = _ints(args.seeds)
    for seed in seeds:
        for key, defense, extra in (("base", "none", []), ("p10", "sft", []), ("p0", "sft", ["attack.p=0"])):
            cfg = load_run_config(None, args.overrides + extra, defense=defense, seed=seed)
            print(f"demo: seed {seed}, {defense}, attack.p={cfg.attack.p}", file=sys.stderr)
            result = _run_one(cfg, store, progress=not args.quiet)
            rows[key].append(result)
            if key == "p10":
                rows["sft"].append(result)
    print(f"\nSafetyWorld, seeds {args.seeds}, judge {rows['p10'][0]['judge']}, split eval "
          f"(mean ± std over seeds, %)\n")
    print(phenomena_table(rows))
    timings = rows["p10"][-1]["timings"]
    print("\nwall seconds per stage (last seed, sft + attack):",
          ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="immunity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="defenses, attacks, tasks, judges, models")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keys", action="store_true", help="also list every configuration key")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="one run: defend -> attack -> evaluate")
    p.add_argument("--defense", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--config", help="YAML file (keys as in `immunity list --keys`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--store", help="also save the result in this SQLite file")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. attack.p=0.05")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="a grid of defenses x attack settings x seeds (resumable)")
    p.add_argument("--defenses", default="sft")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    p.add_argument("--config")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="markdown table from the results store")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--defense", help="comma-separated defenses to include")
    p.add_argument("--split", choices=("eval", "val"), help="only results on this split")
    p.add_argument("--attack", nargs="*", metavar="KEY=VALUE",
                   help="only results of exactly this attack: the default one with these overrides (e.g. mode=full)")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="SafetyWorld end to end: the phenomena table")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as err:
        print(f"immunity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
