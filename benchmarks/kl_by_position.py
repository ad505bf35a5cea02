"""Where does alignment sit in an answer? Per answer position, the KL divergence between an aligned
model and the unaligned base on harmful (request, compliant answer) pairs (Qi et al., ICLR 2025,
"Safety Alignment Should Be Made More Than Just a Few Tokens Deep", their Figure 1): shallow
alignment puts almost all of it on the first few tokens, deep alignment spreads it further.

    python benchmarks/kl_by_position.py [--defenses sft,deep-alignment] [--seeds 0,1,2]
        [--split eval] [--positions 16] [--out results/release/benchmarks/kl_by_position.json]
        [--figure docs/figures/kl_by_position.png] [--overwrite] [model=... data=... overrides]

Each defense is released as a run would release it (from the model cache the runs filled, or
trained once); `evaluation.probes.token_kl` reads its first `--positions` answer positions on
every harmful pair of `--split` that has an answer. With --out, the numbers go into the release
(and its manifest) for `make docs`; with --figure, a plot beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from statistics import mean

os.environ.setdefault("OMP_NUM_THREADS", "1")

from immunity.config import load_run_config  # noqa: E402
from immunity.engine.pipeline import Pipeline  # noqa: E402
from immunity.evaluation.probes import token_kl  # noqa: E402
from immunity.models import clone_model  # noqa: E402
from immunity.outputs import check_target, write_text_atomic  # noqa: E402
from immunity.reports.release import add_file  # noqa: E402


def measure(defense: str, seed: int, split: str, positions: int, overrides: list[str]) -> dict:
    cfg = load_run_config(None, overrides, defense=defense, seed=seed)
    pipeline = Pipeline(cfg, progress=False)
    base = pipeline.base_model()
    pipeline.complete_data(base)
    released = pipeline.defend(clone_model(base))
    pairs = [e for e in pipeline.data.get("harmful", split) if e.answer]
    found = token_kl(released, base, pipeline.tokenizer, pairs, positions)
    return {
        "defense": defense,
        "seed": seed,
        "model": cfg.model,
        "split": split,
        "pairs": len(pairs),
        "code_version": pipeline.identity.code_version,
    } | found


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for defense in dict.fromkeys(r["defense"] for r in rows):
        curves = [r["kl_per_position"] for r in rows if r["defense"] == defense]
        width = min(map(len, curves))
        means = [mean(c[t] for c in curves) for t in range(width)]
        seeds = ", ".join(str(r["seed"]) for r in rows if r["defense"] == defense)
        ax.plot(range(1, width + 1), means, marker="o", label=f"{defense} (seeds {seeds})")
    ax.set_xlabel("answer position (token)")
    ax.set_ylabel("KL(aligned || base), nats")
    ax.set_yscale("log")
    ax.set_title(f"Where alignment sits: {rows[0]['model']}, {rows[0]['split']} split")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--defenses", default="sft,deep-alignment")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--split", default="eval")
    parser.add_argument("--positions", type=int, default=16)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out / --figure")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for target in (args.out, args.figure):
        if target:
            check_target(target, kind="file", overwrite=args.overwrite)  # before any work
    rows = [
        measure(d, int(s), args.split, args.positions, args.overrides)
        for d in args.defenses.split(",")
        for s in args.seeds.split(",")
    ]
    print("| defense | seed | KL at positions 1..5 | share of the KL in the first 3 positions | depth (90 %) |")
    print("|---|---|---|---|---|")
    for r in rows:
        kl = r["kl_per_position"]
        share = sum(kl[:3]) / sum(kl) if sum(kl) else 0.0
        first = " / ".join(f"{v:.3f}" for v in kl[:5])
        print(f"| {r['defense']} | {r['seed']} | {first} | {100 * share:.0f} % | {r['depth']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps({"rows": rows}, indent=1) + "\n")
        if args.out.resolve().is_relative_to(Path("results/release").resolve()):
            add_file(args.out, "python benchmarks/kl_by_position.py " + " ".join(sys.argv[1:]))
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
