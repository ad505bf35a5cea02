"""Helper of tests/test_data_parallel.py (not a test): the first five losses each defense's own
training loop reports, trained data-parallel, written as JSON by the first process.

    torchrun --nproc_per_node 2 tests/dp_worker.py OUT 1 [METHODS] [fsdp]   # 2 processes x 1 micro-batch
    python tests/dp_worker.py OUT 2 [METHODS]                                  # 1 process x 2 micro-batches
"""

import json
import sys

import torch
from test_defense_regression import BUDGET, TINY

from immunity.config import load_run_config
from immunity.defenses import sophon, tar
from immunity.engine.pipeline import Pipeline
from immunity.training import loop, parallel

METHODS = [
    "sft",
    "vaccine",
    "t-vaccine",
    "booster",
    "repnoise",
    "circuit-breakers",
    "mlac",
    "sophon",
    "tar",
    "ntl",
    "condition-number",
]


TRAINED_AS = set()  # class names of the parameters `train` updated (DTensor under FSDP)


def _recording_steps(real):
    def steps(model, *args, **kwargs):
        TRAINED_AS.update(type(p).__name__ for p in model.parameters() if p.requires_grad)
        return real(model, *args, **kwargs)

    return steps


def first_losses(defense: str, micro_batches: int, fsdp: bool) -> list[float]:
    log = []
    real = loop.check_finite

    def record(value, desc, step):
        log.append((desc, value))
        real(value, desc, step)

    for module in (loop, sophon, tar):
        module.check_finite = record
    cfg = load_run_config(None, TINY + BUDGET[defense], defense=defense, seed=0)
    pipeline = Pipeline(cfg, progress=False)
    base = pipeline.base_model()
    with parallel.data_parallel(micro_batches, fsdp):
        pipeline.defend(base)
    for module in (loop, sophon, tar):
        module.check_finite = real
    return [v for d, v in log if d != "pretrain" and (defense == "sft" or d != "align (sft)")][:5]


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, micro = sys.argv[1], int(sys.argv[2])
    methods = sys.argv[3].split(",") if len(sys.argv) > 3 else METHODS
    fsdp = sys.argv[4:] == ["fsdp"]
    loop._steps = _recording_steps(loop._steps)
    losses = {m: first_losses(m, micro, fsdp) for m in methods}
    if parallel.is_main():
        with open(out, "w") as f:
            json.dump({"processes": parallel.world_size(), "losses": losses, "trained_as": sorted(TRAINED_AS)}, f)
