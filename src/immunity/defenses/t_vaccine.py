"""`t-vaccine`: targeted layer-wise Vaccine (Liu, Lin, Huang, Mo, Mu, Shen, arXiv 2410.09760).

Stage: alignment (safe data, plus a few harmful examples to score layers).

Update rule. Vaccine (see `vaccine.py`) restricted to a sampled set S_t of layers:
    every K steps:  s_l = || dL_harm / de_l || on one harmful example;  p_l = s_l / sum_j s_j
    every J steps:  S_t = S layers drawn without replacement with probability p
    each step:      eps_l = rho * g_l / (||g_{S_t}|| + 1e-7) for l in S_t (0 elsewhere), pass 2
                    as Vaccine.
Which adapters train (reference `trainer.py`, `unfreeze_activate_layers` and the patched
`models/modeling_llama_my.py`): the freezing loop runs over the *attention* modules only, so
an inactive layer keeps its MLP adapter trainable; inactive layers are run under reentrant
gradient checkpointing, which gives no gradient to anything below the lowest active layer (no
input of those layers requires grad). Net effect, reproduced here: attention adapters of the
active layers, and MLP adapters of every layer from the lowest active one upward. Inactive
layers above the lowest active one are checkpointed (non-reentrant: activations recomputed in
backward; their MLP adapters still get gradients), layers below it store no activations.

Defaults and provenance: rho = 3 (README: "perturbation intensity=3"), S = 8 of 32 layers,
J = 20, K = 200 (`script/alignment/T-Vaccine.sh`: lisa_activated_layers, lisa_interval_steps,
probability_steps); S = a quarter of the depth here unless set. One harmful example per scoring
pass (`get_dataloader` batch size 1). Adapter: LoRA r = 8, alpha = 4, dropout 0.1 on all seven
linear maps (`train.py:685-693`); lr 1e-3 cosine as the reference. Epochs: 8, chosen on the
validation split as Vaccine's (2 epochs: HS before 42 %; 4: 6.5 %; 8: 2.5 %); the reference
trains 20.
Not reproduced: for models deeper than 26 layers the reference also leaves layer i - 1 of each
active layer i un-checkpointed (memory only; it also lets that layer's MLP adapter train).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch.utils.checkpoint import checkpoint

from ..models import decoder_layers
from ..registry import register_defense
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with
from .vaccine import attention_gradients, perturbations, perturbed_loss


@dataclass
class TVaccineConfig(AlignmentTraining):
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (reference train.py: 8)"})
    lora_alpha: float = field(default=4.0, metadata={"help": "LoRA alpha (reference train.py: 4)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (reference train.py: 0.1)"})
    epochs: float = field(
        default=8.0,
        metadata={"help": "passes over the alignment data (reference 20; chosen on validation, as Vaccine's)"},
    )
    rho: float = field(default=3.0, metadata={"help": "perturbation radius (reference 3)"})
    layers: int = field(
        default=0, metadata={"help": "S, layers sampled; 0 = a quarter of the depth (reference 8 of 32)"}
    )
    resample_every: int = field(default=20, metadata={"help": "J, steps between layer samples (reference 20)"})
    rescore_every: int = field(default=200, metadata={"help": "K, steps between layer scorings (reference 200)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 0 or self.resample_every < 1 or self.rescore_every < 1:
            raise ValueError("t-vaccine layers must be >= 0, resample_every and rescore_every >= 1")


def layer_scores(model, harmful: dict) -> torch.Tensor:
    """p_l: each layer's share of the harmful-loss gradient norm at its attention output."""
    _, grads = attention_gradients(model, harmful)
    norms = torch.stack([grads[i].norm() for i in sorted(grads)])
    return norms / norms.sum()


def sample_layers(probabilities: torch.Tensor, count: int, generator: torch.Generator) -> list[int]:
    return sorted(torch.multinomial(probabilities, count, replacement=False, generator=generator).tolist())


def frozen_for(layers, active: list[int]) -> list[torch.nn.Parameter]:
    """Trainable parameters the reference gives no gradient: attention parameters of inactive
    layers, and every parameter of the layers below the lowest active one."""
    lowest = min(active)
    frozen = []
    for layer in layers:
        if layer.index < lowest:
            frozen += [p for p in layer.module.parameters() if p.requires_grad]
        elif layer.index not in active:
            frozen += [p for p in layer.attention.parameters() if p.requires_grad]
    return frozen


@contextmanager
def train_only(model, active: list[int]):
    """Freeze what `frozen_for` names; checkpoint the inactive layers above the lowest active one."""
    layers = decoder_layers(model)
    frozen = frozen_for(layers, active)
    for p in frozen:
        p.requires_grad_(False)
    patched = []
    # A KV cache would be extended again when a checkpointed layer is recomputed in backward.
    use_cache, model.config.use_cache = model.config.use_cache, False
    for layer in layers:
        if layer.index > min(active) and layer.index not in active:
            layer.module.forward = functools.partial(checkpoint, layer.module.forward, use_reentrant=False)
            patched.append(layer.module)
    try:
        yield
    finally:
        model.config.use_cache = use_cache
        for p in frozen:
            p.requires_grad_(True)
        for module in patched:
            del module.forward  # back to the class's forward


class LayerSampler:
    """The per-run schedule of scored and sampled layers."""

    def __init__(self, config: TVaccineConfig, harmful, depth: int, seed: int):
        self.config, self.harmful, self.depth = config, harmful, depth
        self.count = min(depth, config.layers or max(1, depth // 4))
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.scores, self.active = 0, cast(torch.Tensor | None, None), cast(list[int], [])

    def active_at(self, model, step: int) -> list[int]:
        """The layers of training step `step` (1-based); decided once per step, so every
        micro-batch and every process of a data-parallel step trains the same layers."""
        c = self.config
        if step == self.step:
            return self.active
        self.step = step
        if (step - 1) % c.rescore_every == 0:
            self.scores = layer_scores(model, next(self.harmful)).detach().cpu()
        if (step - 1) % c.resample_every == 0:
            self.active = sample_layers(cast(torch.Tensor, self.scores), self.count, self.generator)
        return self.active


def t_vaccine_step(model, batch, active: list[int], rho: float):
    """One T-Vaccine step with `active` layers; writes the gradients itself (backward must run
    inside the context: checkpointed layers are recomputed then and must see the same flags)."""
    with train_only(model, active):
        _, grads = attention_gradients(model, batch, layers=active)
        loss = perturbed_loss(model, batch, perturbations(grads, rho))
        loss.backward()
    return None, loss.item()


@register_defense("t-vaccine")
class TVaccine(Defense):
    stage = Stage.ALIGNMENT
    Config = TVaccineConfig

    def apply(self, model, context: DefenseContext):
        harmful = context.batch_stream(
            context.harmful_compliance_examples(), 1, next(model.parameters()).device, split=False
        )
        sampler = LayerSampler(self.config, harmful, len(decoder_layers(model)), context.seed)

        def step(model, batch, step):
            return t_vaccine_step(model, batch, sampler.active_at(model, step), self.config.rho)

        return align_with(model, context, self.config, step_loss=step, desc="align (t-vaccine)")
