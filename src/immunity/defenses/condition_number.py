"""`condition-number`: model immunization from a condition-number perspective (Zheng, Bai,
Bullins, Yeh, ICML 2025).

Stage: alignment. Idea: an attacker who fits a linear map on the model's features X descends a
loss whose Hessian is S = X^T X; gradient descent converges at a rate set by the condition
number kappa(S) = sigma_max / sigma_min. Make kappa large on harmful data (slow attacker) and
keep it small on the data the model should stay good at.

Loss (reference `models/model.py:67-93`, `reg_loss`; `utils/loss.py:32-46`, `condition_number`):
    L = L_align + lambda_1 * R_well(S_benign) + lambda_2 * R_ill(S_harm)
    R_well(S) = sigma_max(S)^2 / 2 - ||S||_F^2 / (2K)      (>= 0, = 0 iff all sigma are equal)
    R_ill(S)  = 1 / (||S||_F^2 / (2K) - sigma_min(S)^2 / 2)  (falls as sigma_min -> 0 relative to the rest)
with the eigenvalues of S + 1e-6 I in float64, sigma_min the smallest eigenvalue above 1e-6 and
||S||_F computed from S itself, as the reference. X: the features that feed the output head (last hidden state, after the final
norm) at the answer positions of a batch; S_benign from the alignment batch, S_harm from a
batch of the defender's harmful compliance data.

Deviations, adaptation to LMs: (1) K is the feature dimension (the paper's definition; the
reference uses `X.size(-1)`, which is 224 for its images whatever the feature width); (2) S is
averaged over tokens, X^T X / N, so its scale does not depend on the batch; (3) the alignment
loss is answer-token CE, not label-smoothed classification CE; (4) the head is the LM head over
the vocabulary, and the attacker our pipeline runs is LoRA fine-tuning, not the linear probe the
paper's analysis assumes.
Defaults: the paper's lambdas (ResNet18: 5e-5 / 2e6; ViT: 3e-6 / 3e8) are tied to its image
feature scales; ours were set so that both terms start near 0.1 of the alignment loss on
SafetyWorld's base model, then checked on validation (docs/history/reproduction.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_defense
from ..training.losses import answer_mask, token_ce
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_against_harmful

EPS = 1e-6


@dataclass
class ConditionNumberConfig(AlignmentTraining):
    lambda_well: float = field(default=3e-5, metadata={"help": "lambda_1, weight of R_well on benign features"})
    lambda_ill: float = field(default=3.0, metadata={"help": "lambda_2, weight of R_ill on harmful features"})


def head_features(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer-token CE, the inputs of the output head at the answer positions (N, d))."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return token_ce(out.logits, batch["labels"]), out.hidden_states[-1][answer_mask(batch["labels"])]


def feature_hessian(features: torch.Tensor) -> torch.Tensor:
    """S = X^T X / N in float64."""
    x = features.double()
    return x.T @ x / x.shape[0]


def eigenvalues(s: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(s + EPS * torch.eye(s.shape[0], dtype=s.dtype, device=s.device))


def r_well(s: torch.Tensor) -> torch.Tensor:
    sigma = eigenvalues(s)
    return sigma[-1] ** 2 / 2 - s.pow(2).sum() / (2 * s.shape[0])


def r_ill(s: torch.Tensor) -> torch.Tensor:
    sigma = eigenvalues(s)
    sigma_min = sigma[sigma > EPS][0]
    return 1.0 / (s.pow(2).sum() / (2 * s.shape[0]) - sigma_min**2 / 2)


def condition_number(s: torch.Tensor) -> float:
    """kappa(S) = sigma_max / sigma_min (smallest eigenvalue above 1e-6): the measurement."""
    sigma = eigenvalues(s.double())
    return (sigma[-1] / sigma[sigma > EPS][0]).item()


def condition_number_loss(model, batch, harmful: dict, lambda_well: float, lambda_ill: float):
    """(L_align + lambda_1 R_well(S_benign) + lambda_2 R_ill(S_harm), L_align to log)."""
    loss, benign_features = head_features(model, batch)
    s_benign = feature_hessian(benign_features)
    s_harm = feature_hessian(head_features(model, harmful)[1])
    total = loss + (lambda_well * r_well(s_benign) + lambda_ill * r_ill(s_harm)).to(loss.dtype)
    return total, loss.item()


@register_defense("condition-number")
class ConditionNumber(Defense):
    stage = Stage.ALIGNMENT
    Config = ConditionNumberConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        return align_against_harmful(
            model,
            context,
            c,
            lambda m, b, h: condition_number_loss(m, b, h, c.lambda_well, c.lambda_ill),
            desc="align (condition-number)",
        )
