"""How much of a training batch is padding, with shuffled batches and with length-grouped ones
(`group_by_length`), on a run's alignment data (what `sft` and the alignment defenses train on)
and its attack data.

    python benchmarks/padding.py [--alignment-batch 16] [--attack-batch 8] [--seeds 0,1,2]
        [--out results/release/benchmarks/padding_smollm2.json [--overwrite]] [model=... data=... overrides]

Prints one line per data set: the padding share of one pass, plain and grouped, averaged over the
seeds' batch orders. Reads the base model's answers from the answers cache the runs filled (or
generates them once). With --out, the numbers go into the release (and its manifest) for `make docs`.
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
from immunity.outputs import check_target, write_text_atomic  # noqa: E402
from immunity.reports.release import add_file  # noqa: E402
from immunity.training import batches, length_grouped, padding_fraction  # noqa: E402


def shares(features: list[dict], batch_size: int, pad_id: int, seeds: list[int]) -> tuple[float, float]:
    plain = mean(padding_fraction(batches(features, batch_size, pad_id, s)) for s in seeds)
    with length_grouped():
        grouped = mean(padding_fraction(batches(features, batch_size, pad_id, s)) for s in seeds)
    return plain, grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alignment-batch", type=int, default=16)
    parser.add_argument("--attack-batch", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args, overrides = parser.parse_known_args()
    if args.out:
        check_target(args.out, kind="file", overwrite=args.overwrite)  # before any work
    seeds = [int(s) for s in args.seeds.split(",")]
    pipeline = Pipeline(load_run_config(None, overrides, defense="sft"), progress=False)
    pipeline.complete_data(pipeline.base_model(), ["align", "attack"])
    context = pipeline.context()
    pad = pipeline.tokenizer.pad_token_id
    sets = {
        "alignment (refusals + benign)": (context.encode(context.alignment_examples()), args.alignment_batch),
        "attack (harmful answers)": (context.encode(context.harmful_compliance_examples("attack")), args.attack_batch),
    }
    print(f"model {pipeline.cfg.model}; padding share of one pass, mean over seeds {args.seeds}")
    found = {"model": pipeline.cfg.model, "seeds": seeds, "sets": []}
    for name, (features, batch_size) in sets.items():
        plain, grouped = shares(features, batch_size, pad, seeds)
        found["sets"].append(
            {"name": name, "examples": len(features), "batch": batch_size, "shuffled": plain, "grouped": grouped}
        )
        print(
            f"{name}: {len(features)} examples, batch {batch_size}: shuffled {plain:.1%}, length-grouped {grouped:.1%}"
        )
    if args.out:
        write_text_atomic(args.out, json.dumps(found, indent=1) + "\n")
        if args.out.resolve().is_relative_to(Path("results/release").resolve()):
            add_file(args.out, "python benchmarks/padding.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
