"""`t-vaccine`: targeted layer-wise Vaccine (Liu, Lin, Huang, Mo, Mu, Shen, arXiv 2410.09760).

Stage: alignment (safe data, plus a few harmful examples to score layers).

Update rule. Vaccine (see `vaccine.py`) restricted to a sampled set S_t of layers:
    every K steps:  s_l = || dL_harm / de_l || on one harmful example;  p_l = s_l / sum_j s_j
    every J steps:  S_t = S layers drawn without replacement with probability p
    each step:      eps_l = rho * g_l / ||g_{S_t}|| for l in S_t (0 elsewhere), pass 2 as Vaccine,
                    and only the layers in S_t are trained.
Inactive layers above the lowest active one are gradient-checkpointed (their activations are
recomputed in backward instead of stored), and layers below it need no activations at all, so
activation memory drops with S.

Defaults: rho = 3, J = 20, K = 200 (reference README); S = 8 of Llama-2-7B's 32 layers in the
reference, i.e. a quarter of the depth: here S = max(1, depth // 4) unless set. One harmful
example per scoring pass, as the reference. Training settings equal `sft`'s.
Decision: the reference freezes only the attention adapters of inactive layers and leaves MLP
adapters trainable everywhere; we freeze whole inactive layers, which is what makes their
activations unnecessary (the paper's memory claim) and is what "train only those layers" says.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from ..models import decoder_layers
from ..registry import register_defense
from .base import AlignmentTraining, DefenseContext, Stage, align_with
from .vaccine import attention_gradients, perturbations, perturbed_loss


@dataclass
class TVaccineConfig(AlignmentTraining):
    rho: float = field(default=3.0, metadata={"help": "perturbation radius (reference 3)"})
    layers: int = field(default=0, metadata={"help": "S, layers sampled; 0 = a quarter of the depth (reference 8 of 32)"})
    resample_every: int = field(default=20, metadata={"help": "J, steps between layer samples (reference 20)"})
    rescore_every: int = field(default=200, metadata={"help": "K, steps between layer scorings (reference 200)"})


def layer_scores(model, harmful: dict) -> torch.Tensor:
    """p_l: each layer's share of the harmful-loss gradient norm at its attention output."""
    _, grads = attention_gradients(model, harmful)
    norms = torch.stack([grads[i].norm() for i in sorted(grads)])
    return norms / norms.sum()


def sample_layers(probabilities: torch.Tensor, count: int, generator: torch.Generator) -> list[int]:
    return sorted(torch.multinomial(probabilities, count, replacement=False, generator=generator).tolist())


@contextmanager
def train_only(model, active: list[int]):
    """Freeze every trainable parameter outside the active layers; checkpoint the inactive layers
    that sit above an active one (backward passes through them, but need not store them)."""
    layers = decoder_layers(model)
    frozen, patched = [], []
    # A KV cache would be extended again when a checkpointed layer is recomputed in backward.
    use_cache, model.config.use_cache = model.config.use_cache, False
    for layer in layers:
        if layer.index in active:
            continue
        for p in layer.module.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
        if layer.index > min(active):
            original = layer.module.forward
            layer.module.forward = functools.partial(checkpoint, original, use_reentrant=False)
            patched.append(layer.module)
    try:
        yield
    finally:
        model.config.use_cache = use_cache
        for p in frozen:
            p.requires_grad_(True)
        for module in patched:
            del module.forward  # back to the class's forward


@register_defense("t-vaccine")
class TVaccine:
    stage = Stage.ALIGNMENT
    Config = TVaccineConfig

    def __init__(self, config: TVaccineConfig):
        self.config = config
        self.harmful = None
        self.step = 0
        self.scores: torch.Tensor | None = None
        self.active: list[int] = []
        self.generator = torch.Generator()

    def _refresh(self, model, depth: int) -> None:
        c = self.config
        if self.scores is None or self.step % c.rescore_every == 0:
            self.scores = layer_scores(model, next(self.harmful)).detach().cpu()
        if not self.active or self.step % c.resample_every == 0:
            self.active = sample_layers(self.scores, min(depth, c.layers or max(1, depth // 4)), self.generator)

    def step_loss(self, model, batch):
        self._refresh(model, len(decoder_layers(model)))
        self.step += 1
        # Backward runs inside the context: checkpointed layers are recomputed during it and
        # must see the same frozen flags as in the forward pass.
        with train_only(model, self.active):
            _, grads = attention_gradients(model, batch, layers=self.active)
            loss = perturbed_loss(model, batch, perturbations(grads, self.config.rho))
            loss.backward()
        return None, loss.item()

    def apply(self, model, context: DefenseContext):
        device = next(model.parameters()).device
        self.harmful = context.batch_stream(context.harmful_compliance_examples(), 1, device)
        self.generator.manual_seed(context.seed)
        self.step, self.scores, self.active = 0, None, []
        return align_with(model, context, self.config, step_loss=self.step_loss, desc="align (t-vaccine)")
