"""Condition number kappa(S) of the head's input features, S = X^T X / N, on validation data:
the quantity `condition-number` regularises, measured on released models.

    python benchmarks/feature_kappa.py [--seeds 0,1,2] [defense.lambda_ill=300 ...]

For each seed: the `sft` model and the `condition-number` model (overrides as given; they
are cached by the pipeline, so this reuses `make results`' models), kappa on the benign
validation answers and on harmful compliance answers to validation requests. A linear-probe
attacker on harmful data converges more slowly the larger kappa(S_harm) is (Zheng et al. 2025).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from immunity.config import load_run_config
from immunity.data import collate, encode_chat
from immunity.defenses.condition_number import condition_number, feature_hessian, head_features
from immunity.engine.pipeline import Pipeline


@torch.no_grad()
def kappas(model, tokenizer, data) -> tuple[float, float]:
    def kappa(examples):
        batch = collate([encode_chat(tokenizer, e.prompt, e.answer) for e in examples], tokenizer.pad_token_id)
        return condition_number(feature_hessian(head_features(model.eval(), batch)[1]))

    return kappa(data.benign["val"]), kappa(data.harmful["val"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("overrides", nargs="*", help="defense.KEY=VALUE for condition-number")
    args = parser.parse_args()
    table = {}
    for defense in ("sft", "condition-number"):
        for seed in (int(s) for s in args.seeds.split(",")):
            overrides = args.overrides if defense == "condition-number" else []
            pipeline = Pipeline(load_run_config(None, overrides, defense=defense, seed=seed), progress=False)
            model = pipeline.defend(pipeline.base_model())
            table.setdefault(defense, []).append(kappas(model, pipeline.tokenizer, pipeline.data))
    print("| model | kappa(S_benign) | kappa(S_harm) | kappa(S_harm) / kappa(S_benign) |")
    print("|---|---|---|---|")
    for defense, rows in table.items():
        benign, harm = zip(*rows)
        ratio = [h / b for b, h in rows]
        label = defense + (f" ({' '.join(args.overrides)})" if defense != "sft" and args.overrides else "")
        print(
            f"| {label} | {statistics.mean(benign):.3g} | {statistics.mean(harm):.3g} | "
            f"{statistics.mean(ratio):.3g} (per seed: {', '.join(f'{r:.3g}' for r in ratio)}) |"
        )


if __name__ == "__main__":
    main()
