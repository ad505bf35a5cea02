"""`embedding`: a continuous attack on the prompt's input embeddings (Schwinn et al. 2024, "Soft
prompt threats: attacking safety alignment and unlearning in open-source LLMs through the
embedding space"), in two forms: universal (default) and per prompt (`per_prompt=true`, the
paper's own).

Threat model: the attacker runs the released weights and feeds the model embeddings rather than
tokens (any open-weight deployment allows it); no weights change.

Universal rule. The perturbation delta in R^{m x d} is added to the input embeddings of the last m
prompt tokens, which end with the chat template's assistant header (the positions every request
shares, found by the header's tokens, so the same positions are hit in training, in generation
and in teacher-forced scoring). Each row is kept in the ball ||delta_j|| <= eps * mean_v ||E_v||
(eps relative to the mean norm of a token embedding, so one eps means the same on any model), by
the radial projection delta_j * min(1, bound / ||delta_j||) applied in the forward pass. delta
minimises the answer-token cross-entropy of the compliant answers of the attack split's harmful
requests, with AdamW (no weight decay) from zero: one perturbation that transfers to requests it
never saw. Defaults (ours): m = 5 positions, eps = 1 (a soft token), 100 steps of 16 pairs, lr
1e-2, n = 64 pairs (as `reft`).

Per-prompt rule (`per_prompt=true`; SchwinnL/LLM_Embedding_Attack, `embedding_attack_toxic.py`):
each evaluated harmful request gets its own perturbation of the same m positions, unbounded,
from zero, fitted by signed gradient descent, delta <- delta - step * sign(grad), on the
cross-entropy of its target, for `steps` steps or until the greedy read-out reproduces the
target (the reference's early stop). The reference's target is AdvBench's "Sure, here is ...";
ours is the first `target_tokens` tokens of the request's compliant answer in the data (for real
prompts, the unaligned base model's own answer). The reference steps 0.01 per coordinate on
Llama-2's embeddings (mean norm about 1, d = 4096: a step of about 0.64 of a token's length);
`sign_step` is that step relative to the mean token norm (per coordinate: sign_step * mean norm /
sqrt(d)), 0.64 by default. The attacker sees the test requests (that is the threat model); a
request without a compliant answer in the data is left unperturbed. Stronger than the universal
form, so the universal form flatters defenses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import IGNORE, DataBundle, collate, encode_chat, header_ends, header_ids
from ..registry import register_attack
from ..training import AroundFrozen, TrainConfig, train
from .base import Attack, AttackTask


@dataclass
class EmbeddingConfig(AttackTask):
    positions: int = field(
        default=5, metadata={"help": "prompt positions perturbed (the last m, ending at the assistant header)"}
    )
    eps: float = field(
        default=1.0,
        metadata={"help": "bound on each position's perturbation, in mean token-embedding norms (universal form)"},
    )
    steps: int = field(default=100, metadata={"help": "optimisation steps"})
    lr: float = field(default=1e-2, metadata={"help": "learning rate (Adam; universal form)"})
    n: int = field(default=64, metadata={"help": "harmful (request, answer) pairs it is fitted on (universal form)"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    per_prompt: bool = field(
        default=False,
        metadata={
            "help": "Schwinn et al.'s form: one unbounded perturbation per evaluated request, signed gradient descent"
        },
    )
    sign_step: float = field(
        default=0.64,
        metadata={
            "help": "per-prompt step, in mean token-embedding norms (per coordinate: sign_step * norm / sqrt(d))"
        },
    )
    target_tokens: int = field(
        default=10, metadata={"help": "per-prompt target: the first tokens of the request's compliant answer"}
    )

    def __post_init__(self) -> None:
        if (
            min(self.positions, self.steps, self.n, self.batch_size, self.target_tokens) < 1
            or self.eps <= 0
            or self.lr <= 0
            or self.sign_step <= 0
        ):
            raise ValueError(
                "attack.positions, steps, n, batch_size, target_tokens >= 1 and attack.eps, lr, sign_step > 0"
            )


class PromptPerturbation(nn.Module):
    """delta (k x m x d) added to the m positions ending at the assistant header: k = 1 (universal,
    radially projected into the bound) or one row per known prompt (keyed by its token ids;
    unknown prompts are left alone)."""

    def __init__(
        self,
        positions: int,
        hidden: int,
        bound: float,
        header: list[int],
        prompts: Sequence[tuple] = (),
        pad_id: int = -1,
    ):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(max(1, len(prompts)), positions, hidden))
        self.bound, self.header, self.pad_id = bound, header, pad_id
        self.index = {p: i for i, p in enumerate(prompts)}  # empty: universal

    def projected(self) -> torch.Tensor:
        norms = self.delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.delta * (self.bound / norms).clamp(max=1.0)

    def rows(self, input_ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Each row's delta (m x d): the universal one, or its prompt's (zero if unknown)."""
        delta = self.projected()
        if not self.index:
            return delta.expand(len(input_ids), -1, -1)
        zero = torch.zeros_like(delta[0])
        keys = [prompt_key(ids, int(end), self.pad_id) for ids, end in zip(input_ids.tolist(), ends)]
        return torch.stack([delta[self.index[k]] if k in self.index else zero for k in keys])

    def add_to(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        ends = header_ends(input_ids, self.header)
        delta = self.rows(input_ids, ends).to(embeds.dtype)
        m = delta.shape[1]
        offsets = torch.arange(m, device=ends.device) - (m - 1)  # positions end-m+1 .. end
        positions = ends[:, None] + offsets[None, :]
        valid = (ends[:, None] >= 0) & (positions >= 0)
        rows = torch.arange(len(ends), device=ends.device)[:, None].expand_as(positions)
        added = torch.zeros_like(embeds)
        added[rows[valid], positions[valid]] = delta[valid]
        return embeds + added


def prompt_key(ids: list[int], end: int, pad_id: int) -> tuple:
    """A prompt's identity for the per-prompt table: its tokens up to the header's end, without
    the padding generation puts in front."""
    start = 0
    while start < end and ids[start] == pad_id:
        start += 1
    return tuple(ids[start : end + 1])


def perturb_prompts(model, perturbation: PromptPerturbation):
    """Attach the perturbation to the input embeddings (a forward hook); returns its handle. A
    cached generation step without the header (one new token) is left alone."""

    def hook(_module, args, output):
        return perturbation.add_to(args[0], output)

    return model.get_input_embeddings().register_forward_hook(hook)


@register_attack("embedding")
class Embedding(Attack):
    Config = EmbeddingConfig
    writes_weights = False  # the perturbation acts on the inputs, not on the weights

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        c = self.config
        model.requires_grad_(False)
        table = model.get_input_embeddings().weight
        mean_norm = float(table.detach().float().norm(dim=-1).mean())
        if c.per_prompt:
            perturbation = self.fit_per_prompt(model, tokenizer, data, mean_norm, progress)
        else:
            perturbation = self.fit_universal(model, tokenizer, data, seed, c.eps * mean_norm, progress)
        perturbation.requires_grad_(False)
        model.eval()
        norms = perturbation.projected().norm(dim=-1)
        bound = None if c.per_prompt else round(perturbation.bound, 4)
        self.notes = {
            "bound": bound,
            "prompts": len(perturbation.index),
            "delta_norms": [round(float(x), 4) for x in norms.mean(0)],
        }
        return model

    def fit_universal(self, model, tokenizer, data: DataBundle, seed: int, bound: float, progress: bool):
        c = self.config
        pairs = data.harmful.get("attack", [])[: c.n]
        if not pairs:
            raise ValueError("the embedding attack needs harmful (request, answer) pairs on the attack split")
        table = model.get_input_embeddings().weight
        header = header_ids(tokenizer)
        perturbation = PromptPerturbation(c.positions, table.shape[1], bound, header).to(table.device)
        perturb_prompts(model, perturbation)
        features = [encode_chat(tokenizer, e.prompt, e.answer) for e in pairs]
        if any(header_ends(torch.tensor([f["input_ids"]]), header)[0] < 0 for f in features):
            raise ValueError("a training sequence has no assistant header to perturb")
        train(
            AroundFrozen(model, perturbation),
            features,
            TrainConfig(lr=c.lr, max_steps=c.steps, batch_size=c.batch_size, seed=seed),
            tokenizer.pad_token_id,
            step_loss=lambda m, batch: m.loss(batch),
            desc="embedding",
            progress=progress,
        )
        return perturbation

    def fit_per_prompt(self, model, tokenizer, data: DataBundle, mean_norm: float, progress: bool):
        """One perturbation per harmful request with a compliant answer on the val and eval
        splits (the requests evaluation will ask), fitted batch by batch."""
        c = self.config
        targets = {e.prompt: e.answer for split in ("val", "eval") for e in data.harmful.get(split, []) if e.answer}
        if not targets:
            raise ValueError("the per-prompt embedding attack needs compliant answers to the evaluated requests")
        header = header_ids(tokenizer)
        features = [encode_chat(tokenizer, p, a) for p, a in targets.items()]
        for f in features:  # the target: the answer's first tokens
            answer_at = next(i for i, label in enumerate(f["labels"]) if label != IGNORE)
            f["input_ids"] = f["input_ids"][: answer_at + c.target_tokens]
            f["labels"] = f["labels"][: answer_at + c.target_tokens]
        pad = tokenizer.pad_token_id
        keys = [
            prompt_key(f["input_ids"], int(header_ends(torch.tensor([f["input_ids"]]), header)[0]), pad)
            for f in features
        ]
        table = model.get_input_embeddings().weight
        perturbation = PromptPerturbation(c.positions, table.shape[1], float("inf"), header, keys, pad).to(table.device)
        perturb_prompts(model, perturbation)
        step = c.sign_step * mean_norm / table.shape[1] ** 0.5
        for start in tqdm(
            range(0, len(features), c.batch_size), desc="embedding (per prompt)", disable=not progress, leave=False
        ):
            rows = list(range(start, min(start + c.batch_size, len(features))))
            batch = {
                k: v.to(table.device) for k, v in collate([features[i] for i in rows], tokenizer.pad_token_id).items()
            }
            signed_descent(model, perturbation, batch, rows, c.steps, step)
        return perturbation


def signed_descent(model, perturbation: PromptPerturbation, batch: dict, rows: list[int], steps: int, step: float):
    """delta_i <- delta_i - step * sign(grad_i) for the batch's prompts, each until its target is
    the greedy read-out (then it stops moving) or `steps` are done."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    active = torch.ones(len(rows), dtype=torch.bool, device=labels.device)
    for _ in range(steps):
        perturbation.delta.grad = None
        with torch.enable_grad():
            perturbation.delta.requires_grad_(True)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            per_token = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp_min(0), reduction="none")
            per_row = (per_token * keep).sum(1) / keep.sum(1)
            per_row.sum().backward()
        done = ((logits.argmax(-1) == labels) | ~keep).all(1)
        active &= ~done
        if not active.any():
            break
        with torch.no_grad():
            index = torch.tensor(rows, device=labels.device)[active]
            perturbation.delta[index] -= step * cast(torch.Tensor, perturbation.delta.grad)[index].sign()
