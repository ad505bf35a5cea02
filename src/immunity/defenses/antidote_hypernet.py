"""`antidote-hypernet`: AntiDote (Sanyal, Ray, Mandal, arXiv 2509.08000; code respailab/Antidote
`adversary.py`, `training.py`). Not the pruning `antidote` (Huang et al.): a name collision.

Threat model: an attacker who fine-tunes the released model with a low-rank adapter. The
defense trains against a learned stand-in for that attacker: an adversary hypernetwork that
reads the model's activations and writes LoRA patches, so the defender sees, at every step, the
patch that currently hurts it most. Stage: post-alignment (the paper starts from an instruct
model; here from `sft`'s).

Rule (the paper, and the reference's `training.py`), one adversary step and one defender step per iteration:
1. Read: on the adversary's batch of harmful (request, compliant answer) pairs, the mean input
   activation a_j of every attention linear map j (q, k, v, o), without gradient.
2. Adversary: the hypernetwork H_phi maps each a_j to a LoRA patch (U_j, V_j) of rank r; the map
   j computes W_j x + U_j V_j x. phi descends the answer cross-entropy of the harmful answers under
   the patch (the defender's weights fixed), AdamW.
3. Defender: with the updated patch held fixed, the defender's own LoRA adapter descends
       DPO(chosen = refusal, rejected = compliant answer; under the patch, reference = the model
           before the defense, unpatched)
       + 0.8 * CE(benign answers) + 0.3 * KL(p_ref || p_theta) on the benign answer tokens.
   The reference's DPO batch first sets chosen = safe and then swaps chosen and rejected
   (easy to misread as the opposite sign); we take the sign the paper states: the refusal is preferred.
4. After training the defender's adapter is merged; the hypernetwork is discarded.

Against the reference code (read, commit b7809d1): the DPO log-probabilities are, as in its
`loss.py` (`DPOLoss.get_batch_logps`, average_log_prob=False), the sum over answer tokens of
the shifted log-softmax with -100 labels masked (`training/sequences.py`; test in
tests/test_steering_defenses.py). Deviations: the reference hypernetwork (`adversary.py`)
projects each map's activations to a 1024-wide code, mixes them with multi-head self-attention
and two residual feed-forward blocks, pools over the batch, and initialises both heads with
Xavier (non-zero patches from the first step); ours maps the mean input activation through one
tanh layer and starts U at zero, a size for SafetyWorld's 128-wide model.

Defaults: weights 0.8 / 0.3 and DPO (beta 0.1, the DPO default) from the reference; the
reference's learning rates (defender 3e-5, adversary 2e-7, for a 3B model) do not transfer to
SafetyWorld's scale, so the defender uses `sft`'s adapter and lr (LoRA r 16, lr 1e-3) and the
adversary keeps the reference's ratio (2e-7 / 3e-5 = 1/150, so ~7e-6): lr 1e-5. Validation
split, seed 0 (HS after harmful-finetune / steering / reft, helpfulness of the released model):
1e-5: 72.2 / 15.3 / 25.0 %, 96.8 %; 1e-4: the model collapses (released helpfulness 64.4 %,
34.3 % after the fine-tune); 1e-3: the adversary wins outright (its loss 0.07) and the
defender's DPO under its patches costs helpfulness (83.8 %), harmful-finetune 86.1 %; `sft`:
91.2 / 95.8 / 97.7 %. Adversary rank 2 (as the reft attack and E.T.), hidden width 64 (ours);
2 epochs over the harmful pairs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..data import IGNORE, collate
from ..models import clone_model, merge_lora
from ..models.layers import linear_modules
from ..registry import register_defense
from ..training import lm_loss, train
from ..training.losses import shifted
from ..training.sequences import sequence_logprob
from .base import AlignmentTraining, Defense, DefenseContext, Stage, with_adapter


@dataclass
class AntidoteHypernetConfig(AlignmentTraining):
    adversary_rank: int = field(default=2, metadata={"help": "rank of the adversary's LoRA patches"})
    adversary_lr: float = field(default=1e-5, metadata={"help": "the hypernetwork's learning rate (AdamW)"})
    adversary_hidden: int = field(default=64, metadata={"help": "the hypernetwork's hidden width"})
    beta: float = field(default=0.1, metadata={"help": "DPO's inverse temperature"})
    lm_weight: float = field(default=0.8, metadata={"help": "weight of the benign CE (reference 0.8)"})
    kl_weight: float = field(
        default=0.3, metadata={"help": "weight of KL(p_ref || p) on benign answers (reference 0.3)"}
    )
    adversary: bool = field(
        default=True,
        metadata={"help": "train against the adversary's patches; false: the same losses without it (the ablation)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adversary_rank < 1 or self.adversary_hidden < 1 or self.adversary_lr <= 0 or self.beta <= 0:
            raise ValueError("adversary_rank, adversary_hidden >= 1; adversary_lr, beta > 0")
        if self.lm_weight < 0 or self.kl_weight < 0:
            raise ValueError("lm_weight and kl_weight must be >= 0")


class Hypernetwork(nn.Module):
    """Per linear map j: a_j -> (U_j in R^{out x r}, V_j in R^{r x in}) through a small MLP. U's
    head starts at zero (as a LoRA's B), so the first patches are zero and gradients still flow."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, hidden: int, seed: int):
        super().__init__()
        self.names, self.rank = list(shapes), rank
        self.shapes = shapes
        with torch.random.fork_rng(devices=[]):  # its init from `seed` alone; the global generator untouched
            torch.manual_seed(seed)
            self.encode = nn.ModuleList(
                nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh()) for d_in, _ in shapes.values()
            )
            self.u = nn.ModuleList(nn.Linear(hidden, d_out * rank) for _, d_out in shapes.values())
            self.v = nn.ModuleList(nn.Linear(hidden, rank * d_in) for d_in, _ in shapes.values())
        for head in self.u:
            nn.init.zeros_(cast(torch.Tensor, head.weight))
            nn.init.zeros_(cast(torch.Tensor, head.bias))

    def forward(self, means: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        patches = {}
        for j, name in enumerate(self.names):
            d_in, d_out = self.shapes[name]
            z = self.encode[j](means[name])
            patches[name] = (self.u[j](z).view(d_out, self.rank), self.v[j](z).view(self.rank, d_in))
        return patches


class Patcher:
    """Forward hooks on the attention linear maps: record their mean input, or add U V x."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.patches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.means: dict[str, torch.Tensor] | None = None
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(_module, args, output):
            x = args[0]
            if self.means is not None:
                self.means[name] = x.detach().float().reshape(-1, x.shape[-1]).mean(0)
            if name in self.patches:
                u, v = self.patches[name]
                return output + ((x.to(v.dtype) @ v.T) @ u.T).to(output.dtype)
            return None

        return hook

    @contextmanager
    def patched(self, patches):
        self.patches = patches
        try:
            yield
        finally:
            self.patches = {}

    @torch.no_grad()
    def read_means(self, model, batch) -> dict[str, torch.Tensor]:
        self.means = {}
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            return self.means
        finally:
            self.means = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def dpo_loss(policy, reference, chosen, rejected, beta: float, patcher: Patcher, patches) -> torch.Tensor:
    """-log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]), the policy
    run under the adversary's patches, the reference without."""
    with torch.no_grad():
        ref_margin = sequence_logprob(reference, chosen) - sequence_logprob(reference, rejected)
    with patcher.patched(patches):
        margin = sequence_logprob(policy, chosen) - sequence_logprob(policy, rejected)
    return -F.logsigmoid(beta * (margin - ref_margin)).mean()


def reference_kl(policy, reference, batch) -> torch.Tensor:
    """KL(p_ref || p_theta) per answer token, averaged (logits at the positions that predict
    answer tokens, by the shared shift-and-mask rule)."""

    def log_probs(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.log_softmax(shifted(logits, batch["labels"])[0], -1)

    logp = log_probs(policy)
    with torch.no_grad():
        logq = log_probs(reference)
    return (logq.exp() * (logq - logp)).sum(-1).mean()


def prompt_key(input_ids: torch.Tensor, labels: torch.Tensor, attention: torch.Tensor) -> tuple[int, ...]:
    """The prompt's token ids of one encoded (request, answer) row: the key pairing a refusal
    with the compliant answer to the same request."""
    return tuple(input_ids[(labels == IGNORE) & (attention == 1)].tolist())


@register_defense("antidote-hypernet")
class AntidoteHypernet(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = AntidoteHypernetConfig
    supports_fsdp = False  # the patches read and add to the unsharded linear maps

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        compliant = {e.prompt: e for e in context.harmful_compliance_examples()}
        refusals = [e for e in context.data.get("refusals", "align") if e.prompt in compliant]
        if not refusals:
            raise ValueError("antidote-hypernet needs harmful requests with both a refusal and a compliant answer")
        rejected = {}
        for feature in context.encode([compliant[e.prompt] for e in refusals]):
            rejected[tuple(feature["input_ids"][: feature["labels"].count(IGNORE)])] = feature
        reference = clone_model(model).requires_grad_(False).eval()
        targets = linear_modules(model, "attention")
        patcher = Patcher(targets)
        shapes = {
            name: (cast(torch.Tensor, m.weight).shape[1], cast(torch.Tensor, m.weight).shape[0])
            for name, m in targets.items()
        }
        adversary = Hypernetwork(shapes, c.adversary_rank, c.adversary_hidden, context.seed).to(device)
        adversary_opt = torch.optim.AdamW(adversary.parameters(), lr=c.adversary_lr, weight_decay=0.0)
        # Every process reads the whole adversary batch (split=False): their hypernetworks stay identical.
        harmful = context.batch_stream([compliant[e.prompt] for e in refusals], c.batch_size, device, split=False)
        benign = context.batch_stream(context.benign_examples(), c.batch_size, device)
        seen = {"adversary_loss": 0.0}

        def adversary_step(m) -> dict:
            batch = next(harmful)
            means = patcher.read_means(m, batch)
            with patcher.patched(adversary(means)):
                loss = lm_loss(m, batch)
            grads = torch.autograd.grad(loss, list(adversary.parameters()))
            for p, g in zip(adversary.parameters(), grads):
                p.grad = g
            adversary_opt.step()
            adversary_opt.zero_grad(set_to_none=True)
            seen["adversary_loss"] = float(loss.detach())
            with torch.no_grad():
                return {k: (u.detach(), v.detach()) for k, (u, v) in adversary(means).items()}

        def step_loss(m, chosen):
            patches = adversary_step(m) if c.adversary else {}
            keys = [prompt_key(*row) for row in zip(chosen["input_ids"], chosen["labels"], chosen["attention_mask"])]
            worse = {
                k: v.to(device) for k, v in collate([rejected[k] for k in keys], context.tokenizer.pad_token_id).items()
            }
            batch = next(benign)
            return (
                dpo_loss(m, reference, chosen, worse, c.beta, patcher, patches)
                + c.lm_weight * lm_loss(m, batch)
                + c.kl_weight * reference_kl(m, reference, batch)
            )

        model = with_adapter(model, c, context.seed)
        try:
            train(
                model,
                context.encode(refusals),
                c.train_config(context.seed),
                context.tokenizer.pad_token_id,
                step_loss=step_loss,
                desc="align (antidote-hypernet)",
                progress=context.progress,
            )
        finally:
            patcher.remove()
        model = merge_lora(model)
        context.note(adversary_loss_last=round(seen["adversary_loss"], 4), patched_maps=len(targets))
        return model
