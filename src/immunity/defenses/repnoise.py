"""`repnoise`: representation noising (Rosati et al., NeurIPS 2024).

Stage: alignment, with the defender's harmful data (harmful requests answered compliantly).

Loss (reference `representation_noising/loss.py`, `rep_noise_loss`):
    L = CE(harmless)
        + beta  * mean_l MMD( MLP_l(harmful) . m,  N(0, I) . m )
        - alpha * log( [CE(harmful) + sum_{h in hidden_states} CE(head(norm(h)))] / (L + 1) + 1 )
MLP_l: the output of layer l's MLP block on the harmful batch (forward hooks, removed after).
MMD: Gaussian kernels, 5 bandwidths, multiplier 2, bandwidth from detached distances; one
*sequence* is one sample: the (T x d) MLP output with the positions outside the mask m set to
zero, flattened, against standard Gaussian noise of the same shape, masked the same way.
hidden_states are the L + 1 states a HF model returns (the embedding output, each layer's
output, the last one already normed, so `norm` is applied to it twice, as in the reference).
The ascent term therefore sums L + 2 cross-entropies and divides by L + 1, then adds 1: the
reference code as written. Its issue #6 proposes dividing by the number of terms with no +1
and the author agreed; we keep the code's form on purpose, because it produced the published
models and numbers and its alpha = 1 is calibrated on it.

Masks. The reference masks the tokens where the harmful answer differs from the paired
refusal; we use the answer tokens (the git-disl ports, which draw the harmless batch
independently, differ again). The reference's masked CE zeroes the logits at positions whose
own token is unmasked, so the first answer token is predicted from all-zero logits (constant
ln|V|, no gradient); we do not reproduce that off-by-one: every answer token, the first
included, enters the CE (pinned in tests/test_reference_conventions.py).

Defaults: alpha = 1, beta = 0.001 (`loss.py:76`, the `rep_noise_loss` defaults). Line
references: per-sequence MMD `loss.py:99`, detached bandwidth `:35`, logit zeroing `:65`,
ascent normaliser `:128`. The reference trains all parameters at lr 2e-5; here the
training settings equal `sft`'s (LoRA), as in the git-disl ports. The harmless CE runs on `sft`'s
data (refusals on harmful requests + helpful benign answers) so helpfulness is measurable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..data import IGNORE
from ..models.heads import logit_lens
from ..registry import register_defense
from ..training import edit_block_outputs, lm_loss
from ..training.losses import answer_mask, mmd, shifted, token_ce
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_against_harmful


@dataclass
class RepNoiseConfig(AlignmentTraining):
    alpha: float = field(default=1.0, metadata={"help": "weight of the harmful-loss ascent (reference 1)"})
    beta: float = field(default=0.001, metadata={"help": "weight of the noise MMD (reference 0.001)"})


def noise_mmd(outputs: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Mean over layers of MMD(masked MLP outputs, masked noise), one flattened sequence per sample."""
    outputs = [h.view(*tokens.shape, -1) for h in outputs]  # OPT's MLP runs on (batch x tokens, d)
    keep = tokens[..., None].to(outputs[0].dtype)
    return torch.stack([mmd((h * keep).flatten(1), (torch.randn_like(h) * keep).flatten(1)) for h in outputs]).mean()


def ascent_argument(model, out, labels: torch.Tensor) -> torch.Tensor:
    """[CE(output) + sum over hidden states of the lens CE] / len(hidden_states) + 1. Each lens
    CE is recomputed in the backward pass instead of kept (activation checkpointing): with a
    49k-word vocabulary the L + 1 read-outs would otherwise hold L + 1 copies of the answer
    positions' logits (the same numbers either way)."""
    positions = answer_mask(labels)  # the lens reads only the positions its loss covers

    def lens_ce(h: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(*shifted(logit_lens(model, h), labels))

    total = token_ce(out.logits, labels)
    for h in out.hidden_states:
        total = total + checkpoint(lens_ce, h[positions], use_reentrant=False)
    return total / len(out.hidden_states) + 1


def repnoise_terms(model, harmful: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise MMD, the ascent's log argument) on a harmful batch."""
    mlp_outputs: dict[int, torch.Tensor] = {}
    with edit_block_outputs(model, "mlp", lambda i, out: mlp_outputs.__setitem__(i, out)):
        out = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"], output_hidden_states=True)
    tokens = harmful["labels"] != IGNORE  # positions holding answer tokens
    return noise_mmd([mlp_outputs[i] for i in sorted(mlp_outputs)], tokens), ascent_argument(
        model, out, harmful["labels"]
    )


def repnoise_loss(model, batch, harmful: dict, alpha: float, beta: float) -> torch.Tensor:
    distance, ascent = repnoise_terms(model, harmful)
    return lm_loss(model, batch) + beta * distance - alpha * torch.log(ascent)


@register_defense("repnoise")
class RepNoise(Defense):
    stage = Stage.ALIGNMENT
    Config = RepNoiseConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        return align_against_harmful(
            model, context, c, lambda m, b, h: repnoise_loss(m, b, h, c.alpha, c.beta), desc="align (repnoise)"
        )
