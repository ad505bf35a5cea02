"""`steering`: activation addition along the difference-in-means direction (Turner et al. 2023,
"Activation Addition"; Arditi et al. 2024, "Refusal in language models is mediated by a single
direction").

Threat model: the attacker runs the released weights and may add to the residual stream at
inference (inference-time intervention); no training, no gradient. The attack E.T. and LAPT
defend against.

Rule. At decoder layer L, with h_L(x) the layer's output at the last prompt token of request x
(the end of the chat template's assistant header, Arditi et al.'s post-instruction position),
    r = mean_{x harmful} h_L(x) - mean_{x harmless} h_L(x)
is the refusal direction (Arditi et al.: harmful requests, which the model refuses, minus
harmless ones, which it complies with), from n of the attacker's harmful requests (attack
split) and n harmless ones. The attack adds alpha * (-r), the compliant - refusing difference,
to layer L's output at every prompt position (ActAdd adds to the prompt; generated tokens are
left alone, found as positions after the assistant header, so generation and teacher-forced
scoring see the same edit). alpha = 1 adds the raw mean difference, as Arditi et al.'s
activation addition does.

Harmless requests: the benign requests of the `align` split (harmless instructions are public
data, Arditi et al. take Alpaca's; the evaluation's benign requests stay unseen). An earlier
version contrasted the states after a compliant and after a refusing answer's first tokens of
the same harmful requests; on SafetyWorld that direction never broke `sft` (validation split,
seed 0: HS <= 18.8 % at any layer, alpha 0.5-16, added at the prompt, its last token, the
generated tokens or every layer).

Defaults: layer = the middle layer (depth // 2; Arditi et al. select among the middle layers),
alpha = 1 (the raw vector), n = 128. Validation split, `sft` seed 0, prompt positions: layer 2,
alpha 1: HS 95.8 %, helpfulness 100 % (layer 1: 100 / 100; alpha 0.5: 29-35 % at any layer;
adding at the generated tokens too, layer 2: alpha 0.5 87.5 / 91.7, alpha 1 27.1 / 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data import DataBundle, header_ends, header_ids, prompt_ids
from ..models import block_output, decoder_layers, with_block_output
from ..registry import register_attack
from .base import Attack, AttackTask, chosen_layer


@dataclass
class SteeringConfig(AttackTask):
    layer: int = field(default=-1, metadata={"help": "decoder layer whose output is steered (-1: depth // 2)"})
    alpha: float = field(default=1.0, metadata={"help": "multiple of the difference-in-means vector added"})
    n: int = field(default=128, metadata={"help": "harmful (and harmless) requests used to estimate the direction"})

    def __post_init__(self) -> None:
        if self.layer < -1 or self.n < 1:
            raise ValueError(f"attack.layer >= -1 and attack.n >= 1, got {self.layer}, {self.n}")


@torch.no_grad()
def last_token_states(model, sequences: list[list[int]], layer: int, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """The output of decoder layer `layer` at the last token of each sequence (left padding)."""
    device = next(model.parameters()).device
    states = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=device)
        seen = []
        handle = decoder_layers(model)[layer].module.register_forward_hook(
            lambda m, a, out: seen.append(block_output(out))
        )
        try:
            model(input_ids=ids, attention_mask=mask)
        finally:
            handle.remove()
        states.append(seen[0][:, -1].float())
    return torch.cat(states)


def refusal_direction(model, tokenizer, data: DataBundle, layer: int, n: int) -> torch.Tensor:
    """mean h_layer at the last prompt token of harmful requests (attack split) minus the same
    over harmless ones (the benign `align` requests): Arditi et al.'s refusal direction."""
    harmful = data.harmful.get("attack", [])[:n]
    harmless = data.benign.get("align", [])[:n]
    if not harmful or not harmless:
        raise ValueError("the refusal direction needs harmful requests (attack split) and benign ones (align split)")
    model.eval()
    pad = tokenizer.pad_token_id
    states = [
        last_token_states(model, [prompt_ids(tokenizer, e.prompt) for e in group], layer, pad).mean(0)
        for group in (harmful, harmless)
    ]
    return states[0] - states[1]


def add_to_prompt(model, layer: int, vector: torch.Tensor, header: list[int]) -> list:
    """Add `vector` to layer `layer`'s output at every position up to the end of the assistant
    header (the prompt), by forward hooks (the token ids are read as they enter the embedding);
    returns the hooks' handles."""
    seen = {}

    def read_ids(_module, args):
        seen["ids"] = args[0]

    def steer(_module, _args, output):
        hidden = block_output(output)
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
        in_prompt = (positions <= header_ends(seen["ids"], header)[:, None]).to(hidden.dtype)
        return with_block_output(output, hidden + in_prompt[..., None] * vector.to(hidden.dtype))

    return [
        model.get_input_embeddings().register_forward_pre_hook(read_ids),
        decoder_layers(model)[layer].module.register_forward_hook(steer),
    ]


@register_attack("steering")
class Steering(Attack):
    Config = SteeringConfig
    writes_weights = False  # the attack lives in a hook, not in the weights: nothing to export

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        c = self.config
        layer = chosen_layer(model, c.layer)
        refusal = refusal_direction(model, tokenizer, data, layer, c.n)
        add_to_prompt(model, layer, -c.alpha * refusal, header_ids(tokenizer))
        self.notes = {"layer": layer, "direction_norm": round(float(refusal.norm()), 4)}
        return model
