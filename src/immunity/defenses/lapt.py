"""`lapt`: latent adversarial perturbation training (Gu et al., arXiv 2506.16078; no code was
published, so the rule below follows a secondary summary of the paper, unverified against it).

Threat model: an attacker who steers the residual stream at inference (activation steering,
ITI); the defense makes the safe behaviour hold when the hidden states of the layers most
sensitive to such edits are perturbed. Stage: post-alignment (it hardens the aligned model
theta_orig, then interpolates back towards it).

Rule.
1. Fragile layers: the paper ranks layers with ASABench (attack success under activation
   steering per layer). Ours, from the defender's own data: for each decoder layer l, the drop in
   the answer NLL of the defender's harmful (request, compliant answer) pairs when layer l's
   output is perturbed as in step 2 (how far noise at l pushes the model towards complying);
   the `layers` layers with the largest drop are fragile.
2. Training: on the clean safe responses (`sft`'s data: refusals on harmful requests, helpful
   answers on benign ones), minimise the answer-token cross-entropy while every fragile layer's
   output h becomes h + scale * delta', with the instance-normalised Gaussian noise
       delta' = mu(h) + (delta - mu(delta)) / sigma(delta) * sigma(h),   delta ~ N(0, I),
   mu and sigma taken per token over the hidden dimension (delta' has h's own statistics).
3. Interpolation: theta = lambda * theta_LAPT + (1 - lambda) * theta_orig.

Defaults: 2 fragile layers; training settings `sft`'s (LoRA r 16, lr 1e-3, 2 epochs; the
paper: cost close to SFT); 64 pairs for the fragility scan; lambda = 0.25 and scale = 3, the
lowest HS under `steering` on the validation grid lambda {0.25, 0.5, 1} x scale {0.3, 1, 3}
(seed 0) among settings that stay in the paper's range lambda <= 0.5 and keep benign
helpfulness >= 90 %: 79.6 % (`sft` 95.8 %), helpfulness 98.6 %. lambda 1 (no interpolation,
outside the paper's range) at scale 1 does better: steering 61.1 %, harmful-finetune 26.4 %
(`sft` 91.2 %), helpfulness 99.5 %; lambda 0.5, scale 3: steering 53.2 % but helpfulness 66 %;
scale 0.3 does nothing (steering 98-100 %); lambda 1, scale 3 collapses the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..models import block_output, clone_model, decoder_layers, with_block_output
from ..registry import register_defense
from ..training import lm_loss
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class LAPTConfig(AlignmentTraining):
    lam: float = field(default=0.25, metadata={"help": "interpolation weight of the LAPT model (paper: [0, 0.5])"})
    layers: int = field(default=2, metadata={"help": "fragile layers perturbed"})
    scale: float = field(default=3.0, metadata={"help": "multiple of the instance-normalised noise added"})
    scan_n: int = field(default=64, metadata={"help": "harmful pairs of the fragility scan"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lam <= 1.0 or self.layers < 1 or self.scale < 0 or self.scan_n < 1:
            raise ValueError("lam must lie in [0, 1], layers and scan_n be >= 1 and scale >= 0")


def instance_normalised_noise(h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mu(h) + (delta - mu(delta)) / sigma(delta) * sigma(h) per token, delta ~ N(0, I)."""
    delta = (
        torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
        if generator is not None
        else torch.randn_like(h)
    )
    standardised = (delta - delta.mean(-1, keepdim=True)) / delta.std(-1, keepdim=True).clamp_min(1e-6)
    return h.mean(-1, keepdim=True) + standardised * h.std(-1, keepdim=True)


@contextmanager
def perturbed_layers(model, layers: list[int], scale: float, generator: torch.Generator | None = None):
    """Within the block, each of `layers` outputs h + scale * instance_normalised_noise(h)."""

    def hook(_module, _args, output):
        hidden = block_output(output)
        return with_block_output(output, hidden + scale * instance_normalised_noise(hidden, generator))

    modules = decoder_layers(model)
    handles = [modules[i].module.register_forward_hook(hook) for i in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def fragility(model, batches: list[dict], scale: float, seed: int) -> list[float]:
    """Per layer: clean answer NLL minus the NLL with that layer's output perturbed (> 0: the
    noise makes the harmful answers likelier), on the same noise draws for every layer."""
    model.eval()
    clean = sum(float(lm_loss(model, b)) for b in batches) / len(batches)
    scores = []
    for layer in range(len(decoder_layers(model))):
        generator = torch.Generator(device=batches[0]["input_ids"].device).manual_seed(seed)
        with perturbed_layers(model, [layer], scale, generator):
            noisy = sum(float(lm_loss(model, b)) for b in batches) / len(batches)
        scores.append(clean - noisy)
    return scores


@torch.no_grad()
def interpolate(trained, original, lam: float):
    """trained <- lam * trained + (1 - lam) * original, parameter by parameter, written as
    original + lam * (trained - original) so that a weight training left alone stays bit-equal."""
    reference = dict(original.named_parameters())
    for name, p in trained.named_parameters():
        q = reference[name].to(p.dtype)
        p.sub_(q).mul_(lam).add_(q)
    return trained


@register_defense("lapt")
class LAPT(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = LAPTConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        pairs = context.harmful_compliance_examples()[: c.scan_n]
        if not pairs:
            raise ValueError("lapt ranks layers on the defender's harmful (request, answer) pairs; the data has none")
        scores = fragility(model, context.fixed_batches(pairs, 32, device), c.scale, context.seed)
        fragile = sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[: c.layers])
        original = clone_model(model)
        with perturbed_layers(model, fragile, c.scale):
            model = align_with(model, context, c, desc="align (lapt)")
        model = interpolate(model, original, c.lam)
        context.note(fragile_layers=fragile, fragility=[round(s, 4) for s in scores])
        return model
