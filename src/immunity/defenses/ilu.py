"""`ilu`: invariant LLM unlearning (Wang et al., ICML 2025, arXiv 2506.01339). The authors' code
(OPTML-Group/Unlearn-ILU) does not implement the regulariser; the rule below follows the paper's
objective as a secondary summary gives it (unverified against the paper).

Threat model: an attacker who fine-tunes the released model, on any downstream data, to bring
the unlearned (harmful) knowledge back. ILU asks the unlearned solution to be stationary for
every fine-tuning "environment" at once, an IRM penalty (Arjovsky et al. 2019) on the scale of
the weights: if no environment's loss can be lowered by rescaling the weights, fine-tuning on it
has no first-order direction that leads back. Stage: post-alignment (it unlearns from the
aligned model).

Rule. With w a scale multiplying the weights elementwise, evaluated at w = 1,
    min_theta  l_u(theta) + lambda * sum_i || grad_w l_i(w . theta) |_{w=1} ||^2
             = l_u(theta) + lambda * sum_i || theta . grad_theta l_i(theta) ||^2,
l_i the answer-token cross-entropy of environment i (the defender's benign `align` requests,
split by domain into `environments` groups: the paper's environments are fine-tuning datasets,
e.g. GSM8K; SafetyWorld's tasks have no `align` split, the defender's share; one batch each per
step) and the penalty taken over the trained weights; its gradient needs a double backward
(create_graph), taken one environment at a time. The unlearning loss l_u is NPO
(Zhang et al. 2024; the paper pairs ILU with NPO or RMU) on the defender's harmful (request,
compliant answer) pairs, with the model before ILU as the reference, plus the retain
cross-entropy on `sft`'s data (refusals and helpful benign answers):
    l_u = retain CE + npo_weight * (2 / beta) * mean log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta).

Defaults: beta = 0.1 (NPO's default); full-parameter training (the penalty is on the model's
own weights; a fresh LoRA's B = 0 would make its share vanish), lr 1e-4, 1 epoch over the
retain data, batch 32; npo_weight 1 (ours). lambda = 100, chosen on the validation split (seed
0, HS after the default harmful fine-tune / after `reft`; `sft` 91.2 / 97.7 %): lambda 0 (NPO
alone) 81.9 / 39.4, 1: 83.8 / 38.0 (the penalty, ~1e-3, is too small to matter), 10: 80.1 / 38.9,
100: 65.7 / 39.4 (benign helpfulness 98.6 %), 1000: 75.0 / 55.6. The paper's lambda was not
recoverable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models import clone_model
from ..registry import register_defense
from ..training import TrainConfig, lm_loss, train
from ..training.sequences import sequence_logprob
from .base import Defense, DefenseContext, Stage


@dataclass
class ILUConfig:
    lam: float = field(default=100.0, metadata={"help": "weight lambda of the invariance penalty"})
    npo_weight: float = field(default=1.0, metadata={"help": "weight of the NPO unlearning term"})
    beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate (AdamW, all weights)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the retain data"})
    batch_size: int = field(default=32, metadata={"help": "examples per step (each stream)"})
    environments: int = field(
        default=3,
        metadata={
            "help": "fine-tuning environments: the defender's benign requests split into this many groups of domains"
        },
    )

    def __post_init__(self) -> None:
        if (
            self.lam < 0
            or self.npo_weight < 0
            or self.beta <= 0
            or self.lr <= 0
            or self.epochs <= 0
            or min(self.batch_size, self.environments) < 1
        ):
            raise ValueError("lam, npo_weight >= 0; beta, lr, epochs > 0; batch_size, environments >= 1")


def npo_loss(model, reference, batch, beta: float) -> torch.Tensor:
    """(2 / beta) * mean log(1 + (pi / pi_ref)^beta) = -(2 / beta) * mean logsigmoid(-beta * log-ratio)."""
    with torch.no_grad():
        ref = sequence_logprob(reference, batch)
    ratio = sequence_logprob(model, batch) - ref
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def invariance_penalty(model, batch) -> torch.Tensor:
    """|| grad_w l(w . theta) at w = 1 ||^2 = || theta . grad_theta l(theta) ||^2 over trained
    weights, differentiable (create_graph) so its gradient can be taken."""
    params = [p for p in model.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward
        grads = torch.autograd.grad(lm_loss(model, batch), params, create_graph=True)
    return sum(((p * g) ** 2).sum() for p, g in zip(params, grads))


def environments_of(examples: list, count: int) -> list[list]:
    """The benign examples in `count` environments: their domains (groups), sorted, dealt out in
    turn, so each environment is a distinct set of domains (fewer if there are fewer domains)."""
    domains = sorted({e.group for e in examples})
    parts = [[e for e in examples if domains.index(e.group) % count == k] for k in range(count)]
    return [part for part in parts if part]


@register_defense("ilu")
class ILU(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = ILUConfig
    supports_fsdp = False  # the double backward runs through the unsharded weights

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        reference = clone_model(model).requires_grad_(False).eval()
        forget = context.batch_stream(context.harmful_compliance_examples(), c.batch_size, device)
        environments = [
            context.batch_stream(part, c.batch_size, device)
            for part in environments_of(context.benign_examples(), c.environments)
        ]
        seen = {"penalty": 0.0}

        def step_loss(m, batch):
            loss = lm_loss(m, batch) + c.npo_weight * npo_loss(m, reference, next(forget), c.beta)
            # Each environment's penalty is differentiated on its own, so one double-backward
            # graph is alive at a time (three at once passed 12 GB on a 135M model); backward
            # adds into .grad, so the step's gradient is that of the summed objective.
            penalty = 0.0
            for stream in environments:
                term = invariance_penalty(m, next(stream))
                (c.lam * term).backward()
                penalty += float(term.detach())
            seen["penalty"] = penalty
            return loss, loss.detach() + c.lam * penalty

        model.requires_grad_(True)
        train(
            model,
            context.encode(context.alignment_examples()),
            TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, seed=context.seed),
            context.tokenizer.pad_token_id,
            step_loss=step_loss,
            desc="align (ilu)",
            progress=context.progress,
        )
        context.note(environments=len(environments), last_penalty=round(seen["penalty"], 6))
        return model
