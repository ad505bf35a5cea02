"""A stored result row for report and store tests, without running anything."""

from dataclasses import asdict

from immunity.attacks.harmful_finetune import HarmfulFinetuneConfig


def stored_row(defense, seed, capability, lr=3e-4, n=500, nll=1.0):
    """A complete result row (as `RunResult` checks it) with the given outcome."""
    key = f"{defense}-{seed}-{capability}-{lr}-{n}"
    return {
        "defense": defense,
        "defense_config": {},
        "seed": seed,
        "model": "safetyworld",
        "judge": "safetyworld",
        "split": "eval",
        "attack": "harmful-finetune",
        "attack_config": asdict(HarmfulFinetuneConfig(lr=lr, n=n)),
        "capability_after": capability,
        "hs_after": capability,
        "harmful_nll_after": nll,
        "data": "safetyworld",
        "data_hashes": {},
        "versions": {},
        "run_id": key,
        "config_hash": key,
        "code_version": "x",
    }
