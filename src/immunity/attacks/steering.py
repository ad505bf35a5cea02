"""`steering`: activation addition along the difference-in-means direction (Turner et al. 2023,
"Activation Addition"; Arditi et al. 2024, "Refusal in language models is mediated by a single
direction").

Threat model: the attacker runs the released weights and may add to the residual stream at
inference (inference-time intervention); no training, no gradient. The attack E.T. and LAPT
defend against.

Rule. At decoder layer L, with h_L(x) the layer's output at the last prompt token of x,
    d = mean_{x in benign} h_L(x) - mean_{x in harmful} h_L(x)      (compliant - refusing)
computed on the attacker's own requests (the attack split: harmful requests, and the prompts of
the benign fine-tuning task, which an aligned model answers). Every position's output of layer L
then gets alpha * d added, in the prompt and in every generated token. alpha = 1 adds the raw
mean difference (Arditi et al.'s activation addition uses the raw vector; Turner et al. scale a
difference by a coefficient).

Defaults: layer = the middle layer (depth // 2; Arditi et al. select among the middle layers on
validation data), alpha and n chosen on the validation split (docs/reproduction.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import DataBundle, prompt_ids
from ..models import decoder_layers
from ..registry import register_attack
from .base import AttackTask


@dataclass
class SteeringConfig(AttackTask):
    layer: int = field(default=-1, metadata={"help": "decoder layer whose output is steered (-1: depth // 2)"})
    alpha: float = field(default=1.0, metadata={"help": "multiple of the difference-in-means vector added"})
    n: int = field(default=128, metadata={"help": "requests per side used to estimate the direction"})

    def __post_init__(self) -> None:
        if self.layer < -1 or self.n < 1:
            raise ValueError(f"attack.layer must be >= -1 and attack.n >= 1, got {self.layer}, {self.n}")


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: list[str], layer: int, batch_size: int = 64) -> torch.Tensor:
    """h_layer at the last prompt token of each prompt (left padding, as in generation)."""
    device = next(model.parameters()).device
    states = []
    for start in range(0, len(prompts), batch_size):
        encoded = [prompt_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        states.append(hidden[layer + 1][:, -1].float())  # hidden_states[0] is the embedding output
    return torch.cat(states)


def difference_in_means(model, tokenizer, data: DataBundle, task: str, layer: int, n: int) -> torch.Tensor:
    """mean h_layer over benign task prompts minus over harmful requests (attack split)."""
    harmful = [e.prompt for e in data.harmful.get("attack", [])[:n]]
    benign = [e.prompt for e in data.task(task, "attack")[:n]]
    if not harmful or not benign:
        raise ValueError("steering needs harmful requests and benign task prompts on the attack split")
    model.eval()
    return (last_token_states(model, tokenizer, benign, layer).mean(0)
            - last_token_states(model, tokenizer, harmful, layer).mean(0))


def add_to_layer_output(model, layer: int, vector: torch.Tensor):
    """Register a forward hook that adds `vector` to every position of layer `layer`'s output;
    returns the hook's handle."""
    module = decoder_layers(model)[layer].module

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + vector.to(hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return module.register_forward_hook(hook)


@register_attack("steering")
class Steering:
    Config = SteeringConfig
    writes_weights = False  # the attack lives in a hook, not in the weights: nothing to export

    def __init__(self, config: SteeringConfig):
        self.config = config

    def run(self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True):
        c = self.config
        depth = len(decoder_layers(model))
        layer = depth // 2 if c.layer == -1 else c.layer
        if layer >= depth:
            raise ValueError(f"attack.layer {layer} is outside the model's {depth} layers")
        direction = difference_in_means(model, tokenizer, data, c.task, layer, c.n)
        add_to_layer_output(model, layer, c.alpha * direction)
        model.config.immunity_attack_notes = {"layer": layer, "direction_norm": round(float(direction.norm()), 4)}
        return model
