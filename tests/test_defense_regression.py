"""Regression guards for every defense on a tiny SafetyWorld (hidden 32, 2 layers):
- the released weights differ from the base model's (and from `sft`'s) exactly where the
  method trains: LoRA defenses in the decoder's linear maps of their adapter's targets only,
  Circuit Breakers only up to its highest target layer, TAR everywhere, and so on;
- a pinned five-step loss trajectory (the first five losses each defense's own loop reports),
  so that a change to an update rule shows up as a changed number, not as silence.
To re-pin after an intended change: `pytest tests/test_defense_regression.py --repin` prints the new
values (the test still fails until they are pasted into PINNED)."""

import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from immunity.config import load_run_config
from immunity.defenses import et, sophon, tar
from immunity.engine.pipeline import Pipeline
from immunity.models import clone_model
from immunity.registry import DEFENSES
from immunity.training import loop

TINY = [
    "world.model.hidden=32",
    "world.model.layers=2",
    "world.model.heads=2",
    "world.model.intermediate=64",
    "world.pretrain.epochs=0.05",
    "attack.n=48",
    "attack.epochs=1",
    "attack.batch_size=16",
]
FIVE_STEPS = "defense.epochs=0.06"  # ceil(0.06 * 77 batches) = 5 steps of alignment
BUDGET = {
    "sft": [FIVE_STEPS],
    "deep-alignment": [FIVE_STEPS],
    "constrained-sft": [],
    "vaccine": [FIVE_STEPS],
    "t-vaccine": [FIVE_STEPS],
    "booster": [FIVE_STEPS],
    "repnoise": [FIVE_STEPS],
    "mlac": [FIVE_STEPS, "defense.inner_steps=2"],
    "ntl": [FIVE_STEPS],
    "condition-number": [FIVE_STEPS],
    "circuit-breakers": ["defense.steps=5", "defense.lr=1e-2"],
    "sophon": ["defense.loops=5", "defense.inner_steps=2", "defense.check_every=5", "defense.min_helpful=0"],
    "tar": ["defense.outer_steps=3", "defense.inner_steps=4", "defense.random_mapping_steps=2"],
    "lox": [],
    "none": [],
    "scratch": [],
    "antidote": [],
    "lapt": [FIVE_STEPS, "defense.scan_n=8"],
    "ilu": [FIVE_STEPS, "defense.batch_size=32"],
    "antidote-hypernet": ["defense.epochs=0.15"],  # 5 of its 32 batches of refusals
    "et": [
        "defense.rounds=1",
        "defense.attack_epochs=0.5",
        "defense.attack_n=16",
        "defense.n=16",
        "defense.epochs=1",
        "defense.batch_size=16",
    ],
}
# First five losses reported by each defense's own training loop, in order (seed 0).
PINNED = {
    "sft": [6.645437, 6.668598, 6.690683, 6.632668, 6.63017],
    "deep-alignment": [6.645422, 6.6699, 6.691432, 6.632806, 6.630534],
    "vaccine": [6.81362, 6.853001, 6.888882, 6.793758, 6.795691],
    "t-vaccine": [6.819295, 6.860186, 6.896708, 6.802916, 6.80465],
    "booster": [6.645437, 6.671413, 6.696622, 6.63823, 6.635747],
    "repnoise": [4.354737, 4.377261, 4.400374, 4.34311, 4.340114],
    "mlac": [0.05938625, 0.08439684, 0.1073046, 0.04677343, 0.04225922],
    "ntl": [6.645437, 6.669039, 6.691737, 6.63387, 6.631435],
    "condition-number": [6.645437, 6.66972, 6.693159, 6.636084, 6.633496],
    "circuit-breakers": [9.00175, 9.234741, 7.724042, 6.793021, 6.882287],
    "sophon": [0.00152842, 6.466176, 0.001522312, 6.474874, 0.001506868],
    "tar": [0.8386518, 0.8314425, -7.12268, 6.553679, -7.124281],
    "lapt": [7.06328, 7.054709, 7.065197, 7.041105, 7.043723],
    "ilu": [26.89215, 26.44847, 26.19038, 25.92061, 25.43668],
    "antidote-hypernet": [5.854366, 5.825298, 5.793749, 5.779707, 5.740723],
    "et": [6.543933, 6.511244, 6.545481, 6.523483, 6.513782],  # its simulated ReFT attack's first steps
}


@pytest.fixture
def recorded(monkeypatch):
    """Every loss a training loop checks for finiteness: (stage, step, value)."""
    log = []
    real = loop.check_finite

    def record(value, desc, step):
        log.append((desc, step, value))
        real(value, desc, step)

    for module in (loop, sophon, tar, et):
        monkeypatch.setattr(module, "check_finite", record)
    return log


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    """The tiny world's pretrained base and its default `sft` (what every post-alignment defense
    builds on), built once in this module's own cache: each test starts from a copy of it."""
    cache = tmp_path_factory.mktemp("regression-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMMUNITY_CACHE", str(cache))
        pipeline = Pipeline(load_run_config(None, TINY, defense="lox", seed=0), progress=False)
        base, sft = pipeline.base_model(), pipeline.default_alignment
        pipeline.cached(
            [sft], lambda: (sft.cls(sft.config).apply(clone_model(base), pipeline.context()), pipeline.context())
        )
    return cache


def released(defense: str, built_once: Path):
    shutil.copytree(built_once, os.environ["IMMUNITY_CACHE"], dirs_exist_ok=True)  # into the test's own cache
    cfg = load_run_config(None, TINY + BUDGET[defense], defense=defense, seed=0)
    pipeline = Pipeline(cfg, progress=False)
    base = pipeline.base_model()
    return pipeline, base, pipeline.defend(base)


def changed(a, b) -> set[str]:
    pb = dict(b.named_parameters())
    return {n for n, p in a.named_parameters() if not torch.equal(p, pb[n])}


LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QKV = ("q_proj", "k_proj", "v_proj")
EXPECTED_CHANGES = {  # defense -> (from what, which parameters must change, and no others)
    "sft": ("base", LINEAR),
    "deep-alignment": ("base", LINEAR),
    "constrained-sft": ("sft", ()),  # the provider's fine-tuning loss: it releases `sft`'s model
    "vaccine": ("base", LINEAR),
    "t-vaccine": ("base", LINEAR),
    "booster": ("base", QKV),
    "repnoise": ("base", LINEAR),
    "mlac": ("base", LINEAR),
    "ntl": ("base", LINEAR),
    "condition-number": ("base", LINEAR),
    "sophon": ("sft", LINEAR),
    "lox": ("sft", LINEAR),
    "circuit-breakers": ("sft", LINEAR),
    "tar": ("sft", None),
    "scratch": ("base", None),
    "none": ("base", ()),
    "antidote": ("sft", ()),
    "lapt": ("sft", LINEAR),
    "ilu": ("sft", None),
    "antidote-hypernet": ("sft", LINEAR),
    "et": ("sft", LINEAR),  # at most: a block defense is kept only if it passes E.T.'s gates
}


@pytest.mark.parametrize("defense", sorted(DEFENSES))
def test_released_weights_change_where_the_method_trains(defense, recorded, request, built_once):
    """Every registered defense has its row here: a new defense without one fails."""
    assert defense in EXPECTED_CHANGES and defense in BUDGET, f"{defense}: add its budget and expected changes"
    pipeline, base, model = released(defense, built_once)
    reference_from, leaves = EXPECTED_CHANGES[defense]
    sft = pipeline.default_alignment  # what later-stage defenses build on: served from the cache `defend` filled
    reference = (
        pipeline.cached(
            [sft], lambda: (sft.cls(sft.config).apply(clone_model(base), pipeline.context()), pipeline.context())
        ).model
        if reference_from == "sft"
        else base
    )
    moved = changed(model, reference)
    if leaves is None:  # full-parameter training or a fresh init: every parameter moves
        assert moved == {n for n, _ in model.named_parameters()}
    elif defense == "et":  # only linear maps of the defended blocks, if any defense was kept
        assert {n.rsplit(".", 2)[-2] for n in moved} <= set(leaves) and all(n.endswith(".weight") for n in moved)
    else:  # exactly the adapter's target maps move (a LoRA merge touches only their weights)
        assert {n.rsplit(".", 2)[-2] for n in moved} == set(leaves), sorted(moved)
        assert all(n.endswith(".weight") for n in moved)
    if defense == "circuit-breakers":  # adapter on layers 0..max(target) only: target 1 of 2 layers
        assert moved and all(n.startswith(("model.layers.0.", "model.layers.1.")) for n in moved)
    if defense == "antidote":  # released = sft; the repair prunes the attack's adapter after the attack
        attacked = pipeline.run_attack(model)
        repair, context = pipeline.chain[0], pipeline.context()
        repair.cls(repair.config).apply(attacked, context)
        assert context.notes["pruned_weights"] > 0

    own = [(d, v) for d, _, v in recorded if d not in ("pretrain", "attack")]  # the defense's own steps
    losses = [v for d, v in own if defense == "sft" or d != "align (sft)"][:5]
    if request.config.getoption("--repin") and losses:
        print(f'\n    "{defense}": [{", ".join(f"{v:.7g}" for v in losses)}],')
    assert (defense in PINNED) == bool(losses), f"{defense}: a defense that trains has a pinned trajectory"
    if defense in PINNED:
        assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
        # 2e-5: tight enough to see a changed learning rate in five steps, loose enough for other CPUs' sums
        assert losses == pytest.approx(PINNED[defense], rel=2e-5), f"{defense}: {[round(v, 6) for v in losses]}"
