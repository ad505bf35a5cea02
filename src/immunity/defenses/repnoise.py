"""`repnoise`: representation noising (Rosati et al., NeurIPS 2024).

Stage: alignment, with the defender's harmful data (harmful requests answered compliantly).

Loss, all terms masked to answer tokens:
    L = CE(harmless)
        + beta  * mean_l MMD( MLP_l(harmful), N(0, I) )
        - alpha * log( mean_k CE_k(harmful) + 1 )
MLP_l: the output of layer l's MLP block on the harmful batch (forward hooks, removed after);
MMD: Gaussian kernel, 5 bandwidths, multiplier 2, against standard Gaussian noise of the same
shape; CE_k: harmful cross-entropy of the output and of the logit lens head(norm(h_l)) of every
intermediate layer (k = 1..L), so the ascent reaches every depth.

Defaults: alpha = 1, beta = 0.001 (reference `generalization_eval.sh`). Training settings equal
`sft`'s (the reference: full-parameter, lr 2e-5, batch 8).
Deviations: (1) the reference divides the summed lens losses by L and adds 1 inside the
division (its issue #6, which the author agreed is a bug); we take the mean over the L terms, the
intended form. (2) It also lenses the embedding output and applies the final norm twice to the
last state; we lens the decoder layers' outputs only. (3) The harmless CE runs on `sft`'s data
(refusals on harmful requests + helpful benign answers) so helpfulness is measurable, and the
harmful batch is drawn independently of it, as the git-disl ports do; the reference pairs
each harmful answer with the same prompt's refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.heads import logit_lens
from ..registry import register_defense
from ..training import edit_block_outputs, lm_loss
from ..training.losses import answer_mask, mmd, token_ce, upcast
from .base import AlignmentTraining, DefenseContext, Stage, align_with


@dataclass
class RepNoiseConfig(AlignmentTraining):
    alpha: float = field(default=1.0, metadata={"help": "weight of the harmful-loss ascent (reference 1)"})
    beta: float = field(default=0.001, metadata={"help": "weight of the noise MMD (reference 0.001)"})


def repnoise_terms(model, harmful: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over layers of MMD(MLP outputs, noise), mean over depths of harmful CE)."""
    mlp_outputs: dict[int, torch.Tensor] = {}
    with edit_block_outputs(model, "mlp", lambda i, out: mlp_outputs.__setitem__(i, out)):
        out = model(input_ids=harmful["input_ids"], attention_mask=harmful["attention_mask"],
                    output_hidden_states=True)
    mask = answer_mask(harmful["labels"])
    noise_mmd = torch.stack([mmd(h[mask], torch.randn_like(h[mask])) for h in mlp_outputs.values()]).mean()
    # The lens reads only the positions that predict answer tokens: the loss is masked to them
    # anyway, and the vocabulary projection is the dearest part of a small model's pass.
    targets = harmful["labels"].roll(-1, dims=1)[mask]
    depths = [token_ce(out.logits, harmful["labels"])]
    depths += [F.cross_entropy(upcast(logit_lens(model, h[mask])), targets) for h in out.hidden_states[1:-1]]
    return noise_mmd, torch.stack(depths).mean()


@register_defense("repnoise")
class RepNoise:
    stage = Stage.ALIGNMENT
    Config = RepNoiseConfig

    def __init__(self, config: RepNoiseConfig):
        self.config = config
        self.harmful = None

    def step_loss(self, model, batch):
        noise_mmd, harmful_ce = repnoise_terms(model, next(self.harmful))
        c = self.config
        return lm_loss(model, batch) + c.beta * noise_mmd - c.alpha * torch.log(harmful_ce + 1)

    def apply(self, model, context: DefenseContext):
        device = next(model.parameters()).device
        self.harmful = context.batch_stream(context.harmful_compliance_examples(), self.config.batch_size, device)
        return align_with(model, context, self.config, step_loss=self.step_loss, desc="align (repnoise)")
