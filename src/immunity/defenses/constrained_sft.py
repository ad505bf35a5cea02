"""`constrained-sft`: token-wise constrained fine-tuning (Qi et al., "Safety Alignment Should Be
Made More Than Just a Few Tokens Deep", ICLR 2025, Section 4).

Stage: fine-tuning. It is the provider's fine-tuning objective (fine-tuning-as-a-service): the
attacker chooses the data and the budget, the provider fine-tunes with this loss in place of plain
cross-entropy. It changes no weights before release (the released model is `sft`'s), and an
open-weight attacker would not use it: it is ranked on the fine-tuning-as-a-service board.

Update rule (reference Unispac/shallow-vs-deep-alignment, `finetuning_buckets/trainer/trainer.py`,
`soft_sft_loss` and `get_beta_list`). For answer token t (t = 0 first) with the fine-tuned
model's log-probability l_t and the released (initial aligned) model's l_t^ref:
    w_t  = max(2 * (1 - sigmoid(beta_t * (l_t - l_t^ref))), 1e-3),   detached
    loss = - mean over the batch's answer tokens of w_t * l_t
    beta_0 = beta * first_token_bias_factor;  beta_t = beta * bias_factor for 0 < t < bias_length;
    beta_t = beta after.
Its gradient is the paper's objective's (their Appendix D.2, and the reference's comment): a
cross-entropy whose weight falls as a token's probability rises above the reference's, fastest
(large beta) on the first answer tokens, where shallow alignment lives.

Defaults and provenance (the reference trainer's arguments): beta 0.1, bias_factor 20,
first_token_bias_factor 5 (its first token's initial loss tends to be high, so a weaker beta keeps
the sigmoid from saturating), bias_length 5. The reference model is the model before fine-tuning;
one extra forward pass per step, without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..registry import register_defense
from ..training.losses import answer_mask, shifted
from .base import Defense, DefenseContext, Stage


@dataclass
class ConstrainedSFTConfig:
    beta: float = field(default=0.1, metadata={"help": "beta after the first tokens (reference 0.1)"})
    bias_factor: float = field(
        default=20.0, metadata={"help": "beta multiplier on tokens 1..bias_length-1 (reference 20)"}
    )
    first_token_bias_factor: float = field(
        default=5.0, metadata={"help": "beta multiplier on the first answer token (reference 5)"}
    )
    bias_length: int = field(default=5, metadata={"help": "answer tokens with a raised beta (reference 5)"})

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.bias_factor <= 0 or self.first_token_bias_factor <= 0:
            raise ValueError("constrained-sft: beta, bias_factor and first_token_bias_factor must be positive")
        if self.bias_length < 0:
            raise ValueError(f"constrained-sft: bias_length must be >= 0, got {self.bias_length}")


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """For every answer token (in `shifted`'s row-major order), its index within its answer."""
    mask = answer_mask(labels)
    return (mask.cumsum(1) - 1)[mask]


def token_betas(positions: torch.Tensor, c: ConstrainedSFTConfig) -> torch.Tensor:
    """beta_t by answer position (`get_beta_list`): the first token, the next bias_length - 1, the rest."""
    betas = torch.full(positions.shape, c.beta, dtype=torch.float32, device=positions.device)
    betas[positions < c.bias_length] = c.beta * c.bias_factor
    if c.bias_length > 0:
        betas[positions == 0] = c.beta * c.first_token_bias_factor
    return betas


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(answer token) at every answer position, row-major."""
    flat, targets = shifted(logits, labels)
    return torch.log_softmax(flat, dim=-1).gather(1, targets[:, None]).squeeze(1)


def constrained_loss(model, batch: dict, reference, c: ConstrainedSFTConfig) -> torch.Tensor:
    """-mean_t w_t * l_t with w_t = max(2(1 - sigmoid(beta_t (l_t - l_t^ref))), 1e-3) detached."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    policy = token_logprobs(model(**inputs).logits, batch["labels"])
    with torch.no_grad():
        ref = token_logprobs(reference(**inputs).logits, batch["labels"])
    betas = token_betas(answer_positions(batch["labels"]), c).to(policy.dtype)
    weights = torch.clamp(2 * (1 - torch.sigmoid(betas * (policy - ref))), min=1e-3).detach()
    return -(weights * policy).mean()


@register_defense("constrained-sft")
class ConstrainedSFT(Defense):
    stage = Stage.FINE_TUNING
    Config = ConstrainedSFTConfig

    def objective(self, reference, context: DefenseContext):
        """The provider's loss for a fine-tuning that starts from `reference` (read without
        gradient, never changed: the fine-tuning trains a copy)."""
        reference.eval()
        return lambda model, batch: constrained_loss(model, batch, reference, self.config)
