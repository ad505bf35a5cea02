"""`lox`: low-rank extrapolation (Perin et al., "LoX: Low-Rank Extrapolation Robustifies LLM
Safety Against Fine-tuning", COLM 2025).

Stage: post-alignment, training-free. Needs the weights before alignment (the pipeline passes
the base model) and after it.

Rule (reference VITA-Group/LoX `safety/LoX.py:30-41`). For every matrix-shaped weight (ndim > 1)
with alignment update dW = W_aligned - W_base:
    U, S, V^T = SVD(dW)          (float32, as the reference)
    W <- W_aligned + alpha * U[:, :k] diag(S[:k]) V[:, :k]^T
k = 0 means the full dW (ExPO-style extrapolation). 1-D weights (norms, biases) are untouched.
Stacked expert weights (E x m x n) get a rank-k update per expert; the reference's `S[k:] = 0`
on a batched SVD would instead zero whole experts' spectra.
The idea: alignment's safety lives in a few top singular directions of dW; pushing further
along them makes the model sit deeper inside the safety basin, so fine-tuning must travel
further to leave it.

Defaults: k = 6, alpha = 1.25 (the paper's setting on DPO-aligned Llama-2-7B, named in the model
paths of `safety/safety_landscape.py:14`, "+1.25top6"; the CLI defaults, `LoX.py:10-11`, k = 0
and alpha = 1, are plain extrapolation). Embeddings and the output head are
included, as in the reference (`include_embeddings=false` leaves them alone); under our LoRA
`sft` they did not change, so their dW is zero either way.

Effective-rank search (paper, `effective_rank.py`): try k in 8, 6, 4, 3, 2, 1 and pick the
smallest whose rank-k reconstruction W_base + SVD_k(dW) keeps the aligned model's HS (within
`rank_tolerance`) on the validation split; `search_rank=true` runs it and then extrapolates
with the k it found (k = 0, the full update, when none qualifies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import clone_model
from ..registry import register_defense
from .base import Defense, DefenseContext, Stage

SEARCH_RANKS = (1, 2, 3, 4, 6, 8)


@dataclass
class LoXConfig:
    k: int = field(default=6, metadata={"help": "rank of the extrapolated update; 0 = full update (paper 6)"})
    alpha: float = field(default=1.25, metadata={"help": "extrapolation coefficient (paper 1.25)"})
    include_embeddings: bool = field(default=True, metadata={"help": "also extrapolate embeddings and head"})
    search_rank: bool = field(default=False, metadata={"help": "pick k by the effective-rank search on val"})
    rank_tolerance: float = field(default=0.01, metadata={"help": "HS slack of the search (paper 0.01)"})

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"lox k must be >= 0, got {self.k}")


def low_rank(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Best rank-k approximation of `delta` (truncated SVD in float32); k = 0: `delta` itself.
    A stack of matrices (a mixture-of-experts layer's experts, ndim 3) is approximated per matrix."""
    if k == 0:
        return delta.float()
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    return (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]


def extrapolated_weights(
    base, aligned, k: int, alpha: float, include_embeddings: bool = True, reconstruct: bool = False
) -> dict[str, torch.Tensor]:
    """New values of the 2-D weights: W_aligned + alpha * SVD_k(dW), or, with `reconstruct`,
    the rank-k reconstruction W_base + SVD_k(dW) that the effective-rank search evaluates."""
    base_params = dict(base.named_parameters())
    skip = set() if include_embeddings else _embedding_and_head(aligned)
    new = {}
    for name, w in aligned.named_parameters():
        if w.ndim < 2 or name in skip:
            continue
        w_base = base_params[name].detach().to(w.device)
        update = low_rank(w.detach() - w_base, k)
        new[name] = (w_base + update if reconstruct else w.detach().float() + alpha * update).to(w.dtype)
    return new


def _embedding_and_head(model) -> set[str]:
    ids = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@torch.no_grad()
def load_weights(model, weights: dict[str, torch.Tensor]):
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)
    return model


def effective_rank(base, aligned, context: DefenseContext, config: LoXConfig) -> int:
    """Smallest k whose rank-k reconstruction keeps the aligned model's validation HS."""
    target = context.validation(aligned, ["harmful"])["hs"]
    for k in SEARCH_RANKS:
        weights = extrapolated_weights(base, aligned, k, 1.0, config.include_embeddings, reconstruct=True)
        candidate = load_weights(clone_model(aligned), weights)
        if context.validation(candidate, ["harmful"])["hs"] <= target + config.rank_tolerance:
            return k
    return 0


@register_defense("lox")
class LoX(Defense):
    stage = Stage.POST_ALIGNMENT
    Config = LoXConfig

    def apply(self, model, context: DefenseContext):
        if context.base_model is None:
            raise ValueError("lox needs the model before alignment (context.base_model)")
        c = self.config
        k = effective_rank(context.base_model, model, context, c) if c.search_rank else c.k
        context.note(k=k)  # the rank actually used
        return load_weights(model, extrapolated_weights(context.base_model, model, k, c.alpha, c.include_embeddings))
