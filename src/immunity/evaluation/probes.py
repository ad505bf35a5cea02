"""Mechanistic probes: what a defense and an attack did inside the model.

- `drift`: per hidden state l (0 = embeddings), the mean over harmful-prompt tokens of
  ||h_l(attacked) - h_l(released)|| / ||h_l(released)||: where the attack moved harmful
  representations (the "harmful embedding drift" of Huang et al.'s Vaccine analysis).
- `shallow`: per answer position t, KL(p_released || p_base) of the next-token distributions on
  harmful requests with compliant answers (Qi et al. 2024, "Safety alignment should be made
  more than just a few tokens deep"); `depth` = how many leading positions hold 90 % of the
  total KL.
- `hessian`: the extreme eigenvalues of the Hessian of the harmful (and benign) answer-token
  loss over all parameters, by Lanczos with full re-orthogonalisation on Hessian-vector products
  (`torch.func`: forward-over-reverse); `kappa` = top / |bottom|, with `indefinite` when the
  bottom Ritz value is negative (a network's loss Hessian is rarely positive definite; compare
  with the condition-number method's feature kappa, which is of a positive semi-definite
  matrix).
- `basin`: Peng et al. 2024's safety landscape: HS of theta + a * d along a random direction d
  normalised per tensor (d_i = ||theta_i|| r_i / ||r_i||, 1-D tensors zero), a in
  [-max, max]; `width` = length of the interval around 0 where HS stays within `tolerance` of
  HS(0) (a VISAGE-like basin width).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import collate, encode_chat, prompt_ids
from ..training.losses import answer_mask, token_ce, upcast
from ..world import Example


def _batch(tokenizer, examples: list[Example], device) -> dict:
    batch = collate([encode_chat(tokenizer, e.prompt, e.answer) for e in examples], tokenizer.pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def drift(released, attacked, tokenizer, prompts: list[str]) -> list[float]:
    """Relative L2 drift of each hidden state on the prompts' tokens, released -> attacked."""
    device = next(released.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded], device=device)
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded], device=device)
    before = released.eval()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    after = attacked.eval()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()
    return [
        ((a - b)[keep].norm(dim=-1) / b[keep].norm(dim=-1).clamp(min=1e-12)).mean().item()
        for b, a in zip(before, after)
    ]


@torch.no_grad()
def token_kl(released, base, tokenizer, examples: list[Example], positions: int = 16) -> dict:
    """Mean KL(released || base) at each of the first `positions` answer positions."""
    device = next(released.parameters()).device
    batch = _batch(tokenizer, examples, device)
    logp = F.log_softmax(
        upcast(released.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits), -1
    )
    logq = F.log_softmax(
        upcast(base.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits), -1
    )
    kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
    predicting = answer_mask(batch["labels"])
    per_position = []
    for t in range(positions):
        values = []
        for b in range(kl.shape[0]):
            where = predicting[b].nonzero().flatten()
            if t < len(where):
                values.append(kl[b, where[t]].item())
        if not values:
            break
        per_position.append(sum(values) / len(values))
    total, running, depth = sum(per_position), 0.0, 0
    for depth, value in enumerate(per_position, 1):  # noqa: B007 (read after the loop)
        running += value
        if running >= 0.9 * total:
            break
    return {"kl_per_position": per_position, "depth": depth}


def hessian_vector_product(model, loss_of: Callable[[dict], torch.Tensor]):
    """v -> H v for the Hessian of `loss_of(params)` at the model's parameters (forward-over-reverse)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    gradient = grad(loss_of)

    def hvp(vector: dict) -> dict:
        return jvp(gradient, (params,), (vector,))[1]

    return params, hvp


def lanczos(hvp: Callable, params: dict, steps: int = 20, seed: int = 0) -> tuple[float, float]:
    """(largest, smallest) Ritz values of the Hessian after `steps` Lanczos iterations with full
    re-orthogonalisation (float64 tridiagonal)."""
    g = torch.Generator().manual_seed(seed)
    names = list(params)
    flat = lambda d: torch.cat([d[n].reshape(-1).double() for n in names])  # noqa: E731

    def unflat(vector):
        out, start = {}, 0
        for n in names:
            size = params[n].numel()
            out[n] = vector[start : start + size].view_as(params[n]).to(params[n].dtype)
            start += size
        return out

    dim = sum(p.numel() for p in params.values())
    q = torch.randn(dim, generator=g, dtype=torch.float64).to(next(iter(params.values())).device)
    basis = [q / q.norm()]
    alphas, betas = [], []
    for _ in range(min(steps, dim)):
        w = flat(hvp(unflat(basis[-1])))
        alphas.append(torch.dot(w, basis[-1]).item())
        for b in basis:  # full re-orthogonalisation
            w = w - torch.dot(w, b) * b
        beta = w.norm().item()
        if beta < 1e-10:
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    for i in range(k - 1):
        tri[i, i + 1] = tri[i + 1, i] = betas[i]
    ritz = torch.linalg.eigvalsh(tri)
    return ritz[-1].item(), ritz[0].item()


def loss_spectrum(model, batch: dict, steps: int = 20, seed: int = 0) -> dict:
    """Top and bottom Hessian eigenvalues of the answer-token CE on `batch`, and their ratio."""

    def loss_of(weights):
        logits = functional_call(
            model, weights, args=(batch["input_ids"],), kwargs={"attention_mask": batch["attention_mask"]}
        ).logits
        return token_ce(logits, batch["labels"])

    model.eval()
    params, hvp = hessian_vector_product(model, loss_of)
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
        top, bottom = lanczos(hvp, params, steps, seed)
    return {"top": top, "bottom": bottom, "kappa": top / max(abs(bottom), 1e-12), "indefinite": bottom < 0}


def filter_normalised_direction(model, seed: int) -> dict[str, torch.Tensor]:
    """d_i = ||theta_i|| r_i / ||r_i|| per tensor, r ~ N(0, I); 1-D tensors (norms, biases) zero."""
    g = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            direction[name] = torch.zeros_like(p)
            continue
        r = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
        direction[name] = p.detach().norm() * r / r.norm()
    return direction


@torch.no_grad()
def basin(
    model,
    hs_of: Callable[[object], float],
    seed: int = 0,
    points: int = 11,
    extent: float = 0.5,
    tolerance: float = 0.05,
) -> dict:
    """HS along theta + a d for `points` values of a in [-extent, extent]; the basin width."""
    direction = filter_normalised_direction(model, seed)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    alphas = [extent * (2 * i / (points - 1) - 1) for i in range(points)]
    curve = []
    try:
        for a in alphas:
            for n, p in model.named_parameters():
                p.copy_(original[n] + a * direction[n])
            curve.append(hs_of(model))
    finally:
        for n, p in model.named_parameters():
            p.copy_(original[n])
    centre = alphas.index(min(alphas, key=abs))
    inside = [abs(h - curve[centre]) <= tolerance for h in curve]
    left = right = centre
    while left > 0 and inside[left - 1]:
        left -= 1
    while right < len(alphas) - 1 and inside[right + 1]:
        right += 1
    return {
        "alphas": [round(a, 4) for a in alphas],
        "hs": curve,
        "width": alphas[right] - alphas[left],
        "tolerance": tolerance,
    }
