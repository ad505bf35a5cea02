"""What every attack's config shares, and the attack interface.

An attack is registered with `@register_attack(name)`, has a `Config` dataclass (its own typed
keys, set as `attack.KEY=VALUE` after `attack=NAME`) and `run(model, tokenizer, data, seed,
progress, merge) -> model`: the attacked model, which the pipeline evaluates like any other.
Inference-time attacks return the model with their intervention attached as a forward hook and
declare `writes_weights = False` (there are no weights to export).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import decoder_layers
from ..world import TASKS


@dataclass
class AttackTask:
    task: str = field(default="sentiment", metadata={
        "help": f"benign task (fine-tuning data, and the FA metric): SafetyWorld's {' | '.join(TASKS)}, or the kind "
                "of a --task source"})


def chosen_layer(model, layer: int) -> int:
    """`attack.layer` as a decoder-layer index: -1 means the middle layer (depth // 2)."""
    depth = len(decoder_layers(model))
    index = depth // 2 if layer == -1 else layer
    if index >= depth:
        raise ValueError(f"attack.layer {index} is outside the model's {depth} layers")
    return index
