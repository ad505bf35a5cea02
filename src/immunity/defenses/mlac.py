"""`mlac`: meta-learned adversarial censoring (Henderson, Mitchell, Manning, Jurafsky, Finn,
"Self-Destructing Models", AIES 2023).

Stage: alignment. Bi-level: the defender trains weights theta that stay good on the desired
task while a simulated attacker, fine-tuning from theta, makes as little progress as possible.

Update rule, per outer step (desired batch b_d, harmful batches b_0..b_K):
    theta_0 = theta
    theta_k = theta_{k-1} - inner_lr * grad CE_h(theta_{k-1}; b_{k-1})     k = 1..K  (plain SGD)
    J(theta) = L_d(theta; b_d) - harmful_weight * (1/K) * sum_{k=1..K} l_h(theta_k; b_k)
    theta   <- optimizer step on grad J
`first_order=false` (default) differentiates J through the inner updates (second order: the
inner gradients are built with `create_graph`, and `torch.func.functional_call` runs the model at
theta_k without touching its parameters); `first_order=true` treats the inner updates as
constants, so grad J = grad L_d(theta) - harmful_weight/K * sum_k grad l_h at theta_k (the
gradients at the adapted weights, FOMAML-style), for models where double backward is too dear.

What plays the calibration head's role. In MLAC's classifiers a learned calibration map stops
the "confidently wrong" solution (flip the harmful labels, which a fine-tuner undoes in a few
steps). For an LM the analogue is pushing harmful answer tokens to near-zero probability: the
per-token CE grows without bound while the information stays in the weights. So the recorded
harmful loss is bounded: l_h = mean over answer tokens of min(CE_token, ln|V|), i.e. no reward
beyond a uniform guess (`bounded=false` gives the raw CE). The attacker's own steps use the raw CE.

Adaptation and defaults (the paper published no code or hyperparameters): desired loss = the
`sft` alignment loss (refusals + helpful answers) on its data and settings; harmful data = the
defender's harmful compliance pairs; K = 4 (reportedly 16 in the paper; SafetyWorld's attack
moves in few steps and cost grows with K); inner lr 0.05 for plain SGD on the adapter (measured on
the seed-0 `sft` model: 4 such steps take its harmful CE from 0.49 to 0.34; the default
attack's AdamW reaches 0.43 after 4 steps and 0.29 after 10). In LoRA
mode the simulated attacker adapts the defender's adapter, not a fresh one as the real attack
does. The learned inner learning rate and the separate harmful head (phi in the paper) are
omitted: an LM's harmful task uses the same head as its desired task.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..registry import register_defense
from ..training import lm_loss, logits_with
from ..training.losses import token_ce
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class MLACConfig(AlignmentTraining):
    inner_steps: int = field(default=4, metadata={"help": "K simulated attacker steps per outer step (paper ~16)"})
    inner_lr: float = field(default=0.05, metadata={"help": "attacker's plain-SGD learning rate"})
    harmful_weight: float = field(default=1.0, metadata={"help": "weight of the mean harmful loss in J"})
    first_order: bool = field(default=False, metadata={"help": "drop second-order terms (FOMAML)"})
    bounded: bool = field(default=True, metadata={"help": "cap each token's harmful CE at ln|V|"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_steps < 1:
            raise ValueError(f"mlac inner_steps must be >= 1, got {self.inner_steps}")


def token_losses(model, weights: dict, batch: dict) -> torch.Tensor:
    """Per-answer-token CE of the model run with `weights` in place of its trainable parameters."""
    return token_ce(logits_with(model, weights, batch), batch["labels"], reduction="none")


def bounded_mean(losses: torch.Tensor, bound: float | None) -> torch.Tensor:
    return (losses if bound is None else losses.clamp(max=bound)).mean()


def mlac_objective(
    model,
    params: dict,
    desired: dict,
    harmful: list[dict],
    inner_lr: float,
    harmful_weight: float = 1.0,
    first_order: bool = False,
    bound: float | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """J(theta) and the recorded harmful losses l_h(theta_k), k = 1..K (K = len(harmful) - 1).

    grad J w.r.t. `params` is the meta-gradient: through the inner updates unless `first_order`.
    """
    theta = dict(params)
    recorded = []
    # Fused attention kernels have no double backward; the math kernel is plain differentiable ops.
    with nullcontext() if first_order else sdpa_kernel(SDPBackend.MATH):
        for k, batch in enumerate(harmful):
            losses = token_losses(model, theta, batch)
            if k > 0:
                recorded.append(bounded_mean(losses, bound))
            if k == len(harmful) - 1:
                break
            # The forward at theta_k (k > 0) also feeds the recorded loss: keep its graph.
            grads = torch.autograd.grad(
                losses.mean(), list(theta.values()), create_graph=not first_order, retain_graph=k > 0 or not first_order
            )
            theta = {n: w - inner_lr * g for (n, w), g in zip(theta.items(), grads)}
    desired_loss = lm_loss(model, desired)
    objective = desired_loss - harmful_weight * torch.stack(recorded).mean()
    return objective, [r.item() for r in recorded]


@register_defense("mlac")
class MLAC(Defense):
    stage = Stage.ALIGNMENT
    supports_fsdp = False  # simulated attacker steps on the weights (torch.func): not on FSDP's shards
    Config = MLACConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        bound = math.log(model.config.vocab_size) if c.bounded else None
        harmful = context.batch_stream(
            context.harmful_compliance_examples(), c.batch_size, next(model.parameters()).device
        )

        def step(model, batch):
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            inner = [next(harmful) for _ in range(c.inner_steps + 1)]
            return mlac_objective(model, params, batch, inner, c.inner_lr, c.harmful_weight, c.first_order, bound)[0]

        return align_with(model, context, c, step_loss=step, desc="align (mlac)")
