"""`sophon`: non-fine-tunable learning (Deng, Pang, Chen, Xia, Bai, Weng, Xu, "SOPHON", IEEE S&P 2024).

Stage: post-alignment. SOPHON starts from a model already trained on its original task (here:
the `sft`-aligned model, with a fresh adapter) and alternates two updates, each with its own
Adam optimizer, for `loops` rounds (default: as many as `sft` takes steps):

(a) Fine-tuning suppression (FTS), first-order MAML. From the current weights theta, simulate
    the attacker: theta_k = theta_{k-1} - inner_lr * grad CE(theta_{k-1}; support_k), k = 1..K
    (plain SGD on harmful compliance data). After each step, a suppression loss q_k on a
    held-out harmful query batch at theta_k:
        inverse: -log(1 - p_y) per answer token (high when the model predicts the harmful token)
        uniform: KL(uniform || p) per answer token
    L_FTS = sum_k n_k q_k / sum_k n_k (n_k: query answer tokens). First order: the gradient of
    each q_k at theta_k is applied to theta (d theta_k / d theta taken as the identity), clipped
    to norm 0.5, Adam step with `fts_lr`.
(b) Normal-training reinforcement (NTR): one step of the alignment loss (refusals + helpful
    answers) on theta, Adam with `lr`.
Every `check_every` loops the benign helpfulness on the validation split is measured; below
`min_helpful` the weights revert to the last checked good ones and training stops (the
reference stops at 80 % accuracy on its original task). Starting from the aligned model makes
the worst case of that rule the `sft` model; a first version started from the base model and,
on one seed of three, stopped at the first check and released the unaligned base model
(docs/history/reproduction.md).

Defaults and provenance: reference ratio of learning rates FTS : NTR = 3e-4 : 5e-4 (kept as
fts_lr = 0.6 * lr with `sft`'s lr 1e-3); clip 0.5 (reference); K = 8 support/query pairs (the
reference uses 50 batches of 150 images; cost grows linearly with K); inner_lr 0.05 for plain
SGD on the adapter, as `mlac`; suppression `inverse`.
Deviations: (1) the reference's "inverse CE" is CrossEntropy(1 - logits), i.e. -log softmax(-z)_y,
not the paper's -log(1 - p_y); we implement the paper's form. (2) The reference keeps all K query
graphs until one backward (memory linear in K); we backpropagate each q_k as it comes, which
gives the same first-order gradient at constant memory. (3) Adaptation to LMs: losses on answer
tokens; "original-task accuracy" is SafetyWorld benign helpfulness judged on validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import IGNORE
from ..models import merge_lora
from ..models.layers import LORA_TARGETS
from ..registry import register_defense
from ..training import check_finite, lm_loss, logits_with
from ..training.losses import shifted, token_ce
from ..training.parallel import accumulate
from .base import Defense, DefenseContext, Stage, with_adapter

SUPPRESSIONS = ("inverse", "uniform")


@dataclass
class SophonConfig:
    mode: str = field(default="lora", metadata={"help": "lora (merged after training) | full"})
    lr: float = field(default=1e-3, metadata={"help": "Adam lr of the normal-training (NTR) step (sft's)"})
    epochs: float = field(default=2.0, metadata={"help": "sets loops when loops = 0 (sft's)"})
    batch_size: int = field(default=32, metadata={"help": "examples per batch (sft's)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (sft's)"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (sft's)"})
    lora_targets: str = field(default="all", metadata={"help": "LoRA on: all | attention | qkv"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input"})
    loops: int = field(default=0, metadata={"help": "FTS + NTR rounds; 0 = sft's step count (epochs x batches)"})
    fts_lr: float = field(
        default=6e-4, metadata={"help": "Adam lr of the suppression update (reference 3e-4 : 5e-4 NTR)"}
    )
    inner_steps: int = field(default=8, metadata={"help": "K simulated attacker steps (reference 50)"})
    inner_lr: float = field(default=0.05, metadata={"help": "attacker's plain-SGD learning rate"})
    suppression: str = field(default="inverse", metadata={"help": "inverse (-log(1-p_y)) | uniform (KL to uniform)"})
    fts_clip: float = field(default=0.5, metadata={"help": "gradient-norm clip of the FTS update (reference 0.5)"})
    check_every: int = field(default=20, metadata={"help": "loops between helpfulness checks on val"})
    min_helpful: float = field(default=0.8, metadata={"help": "revert and stop below this val helpfulness"})

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora") or self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"sophon mode must be full | lora and lora_targets one of {LORA_TARGETS}")
        if (
            min(self.lr, self.fts_lr, self.inner_lr, self.epochs, self.batch_size, self.inner_steps, self.check_every)
            <= 0
            or self.loops < 0
        ):
            raise ValueError(
                "sophon lr, fts_lr, inner_lr, epochs, batch_size, inner_steps and check_every must be "
                "positive and loops >= 0"
            )
        if self.suppression not in SUPPRESSIONS:
            raise ValueError(f"sophon suppression must be one of {SUPPRESSIONS}, got {self.suppression!r}")


def suppression_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per answer token: -log(1 - p_y) ('inverse') or KL(uniform || p) ('uniform'); mean."""
    logits, targets = shifted(logits, labels)
    log_p = F.log_softmax(logits, dim=-1)
    if kind == "uniform":
        return (-math.log(log_p.shape[-1]) - log_p.mean(dim=-1)).mean()
    log_p_y = log_p.gather(1, targets[:, None]).squeeze(1)
    return -torch.log1p(-log_p_y.exp().clamp(max=1 - 1e-6)).mean()


def fts_gradient(
    model, params: dict, support: list[dict], query: list[dict], inner_lr: float, kind: str
) -> tuple[list[torch.Tensor], float]:
    """First-order FTS gradient w.r.t. `params` and L_FTS: token-weighted mean over k of
    grad q_k taken at the adapted weights theta_k."""
    names = list(params)
    offset = {n: torch.zeros_like(p) for n, p in params.items()}  # theta_k = theta + offset_k
    total = [torch.zeros_like(p) for p in params.values()]
    weights, values = [], []
    for support_batch, query_batch in zip(support, query):
        theta = {n: (params[n].detach() + offset[n]).requires_grad_(True) for n in names}
        ce = token_ce(logits_with(model, theta, support_batch), support_batch["labels"])
        step = torch.autograd.grad(ce, list(theta.values()))
        for n, g in zip(names, step):
            offset[n] = offset[n] - inner_lr * g
        theta = {n: (params[n].detach() + offset[n]).requires_grad_(True) for n in names}
        q = suppression_loss(logits_with(model, theta, query_batch), query_batch["labels"], kind)
        n_tokens = int((query_batch["labels"][:, 1:] != IGNORE).sum())
        for acc, g in zip(total, torch.autograd.grad(q, list(theta.values()))):
            acc.add_(g * n_tokens)
        weights.append(n_tokens)
        values.append(q.item() * n_tokens)
    return [g / sum(weights) for g in total], sum(values) / sum(weights)


@register_defense("sophon")
class Sophon(Defense):
    stage = Stage.POST_ALIGNMENT
    supports_fsdp = False  # its own loops and functional calls; data parallel replicates it
    Config = SophonConfig

    def apply(self, model, context: DefenseContext):
        c = self.config
        device = next(model.parameters()).device
        model = with_adapter(model, c, context.seed)
        model.train()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        ntr_opt = torch.optim.Adam(params.values(), lr=c.lr)
        fts_opt = torch.optim.Adam(params.values(), lr=c.fts_lr)
        align = context.alignment_examples()
        loops = c.loops or math.ceil(c.epochs * math.ceil(len(align) / c.batch_size))
        desired = context.batch_stream(align, c.batch_size, device)
        harmful = context.harmful_compliance_examples()
        half = len(harmful) // 2  # support and query sets are disjoint
        support = context.batch_stream(harmful[:half], c.batch_size, device)
        query = context.batch_stream(harmful[half:], c.batch_size, device)
        good = {n: p.detach().clone() for n, p in params.items()}
        stopped_at = None
        trained = list(params.values())

        def fts() -> float:  # writes the FTS gradient
            grads, value = fts_gradient(
                model,
                params,
                [next(support) for _ in range(c.inner_steps)],
                [next(query) for _ in range(c.inner_steps)],
                c.inner_lr,
                c.suppression,
            )
            for p, g in zip(trained, grads):
                p.grad = g.to(p.dtype)
            return value

        def ntr() -> float:
            loss = lm_loss(model, next(desired))
            loss.backward()
            return loss.item()

        for loop in tqdm(range(1, loops + 1), desc="align (sophon)", disable=not context.progress, leave=False):
            fts_opt.zero_grad(set_to_none=True)
            check_finite(accumulate(trained, fts, context.seed, 2 * loop - 1), "sophon (fine-tuning suppression)", loop)
            if c.fts_clip > 0:
                torch.nn.utils.clip_grad_norm_(trained, c.fts_clip)
            fts_opt.step()
            ntr_opt.zero_grad(set_to_none=True)
            check_finite(accumulate(trained, ntr, context.seed, 2 * loop), "sophon (normal training)", loop)
            ntr_opt.step()
            if loop % c.check_every == 0 or loop == loops:
                model.eval()
                helpful = context.validation(model, ["benign"])["helpful"]
                model.train()
                if helpful < c.min_helpful:
                    stopped_at = loop
                    break
                good = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(good[n])
        model.eval()
        model = merge_lora(model) if c.mode == "lora" else model
        context.note(loops=loops, stopped_at=stopped_at)
        return model
