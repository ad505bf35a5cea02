"""`embedding`: a continuous attack on the prompt's input embeddings (Schwinn et al. 2024, "Soft
prompt threats: attacking safety alignment and unlearning in open-source LLMs through the
embedding space"), in its universal form: one perturbation, fitted on the attacker's harmful
requests, that transfers to requests it never saw.

Threat model: the attacker runs the released weights and feeds the model embeddings rather than
tokens (any open-weight deployment allows it); no weights change. Budget: `steps` optimisation
steps and a norm bound eps per perturbed position.

Rule. The perturbation delta in R^{m x d} is added to the input embeddings of the last m prompt
tokens, which end with the chat template's assistant header (the positions every request shares,
found by the header's tokens, so the same positions are hit in training, in generation and in
teacher-forced scoring). Each row is kept in the ball ||delta_j|| <= eps * mean_v ||E_v|| (eps
relative to the mean norm of a token embedding, so one eps means the same on any model), by the
radial projection delta_j * min(1, bound / ||delta_j||) applied in the forward pass. delta
minimises the answer-token cross-entropy of the compliant answers of the attack split's harmful
requests (Schwinn et al.'s target is an affirmative answer; SafetyWorld's compliant answers are
the attacker's data for every attack here), with AdamW (no weight decay) from zero.

Defaults (ours; Schwinn et al. attack single prompts for 100 iterations): m = 5 positions,
eps = 1 (each perturbed embedding may move by a typical embedding's length: a soft token),
100 steps of 16 pairs, lr 1e-2, n = 64 pairs (as `reft`). Per-prompt attacks at evaluation time
are not implemented: the universal attack needs no access to the test requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import DataBundle, encode_chat
from ..registry import register_attack
from ..training import TrainConfig, lm_loss, train
from .base import AttackTask


@dataclass
class EmbeddingConfig(AttackTask):
    positions: int = field(default=5, metadata={"help": "prompt positions perturbed (the last m, ending at the "
                                                        "assistant header)"})
    eps: float = field(default=1.0, metadata={"help": "bound on each position's perturbation, in mean "
                                                      "token-embedding norms"})
    steps: int = field(default=100, metadata={"help": "optimisation steps"})
    lr: float = field(default=1e-2, metadata={"help": "learning rate (Adam)"})
    n: int = field(default=64, metadata={"help": "harmful (request, answer) pairs it is fitted on"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})

    def __post_init__(self) -> None:
        if min(self.positions, self.steps, self.n, self.batch_size) < 1 or self.eps <= 0 or self.lr <= 0:
            raise ValueError("attack.positions, steps, n, batch_size >= 1 and attack.eps, lr > 0")


def header_ids(tokenizer) -> list[int]:
    """The tokens the chat template adds for the assistant's turn (where every prompt ends)."""
    turn = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
    full = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    if not full.startswith(bare) or full == bare:
        raise ValueError("the embedding attack needs a chat template that ends a prompt with an assistant header")
    return tokenizer(full[len(bare):], add_special_tokens=False)["input_ids"]


def header_ends(input_ids: torch.Tensor, header: list[int]) -> torch.Tensor:
    """Per row, the index of the last token of the first assistant header (-1 if it has none)."""
    width = len(header)
    if input_ids.shape[1] < width:
        return torch.full((input_ids.shape[0],), -1, device=input_ids.device)
    windows = input_ids.unfold(1, width, 1)
    found = (windows == torch.tensor(header, device=input_ids.device)).all(-1)
    first = found.float().argmax(1)
    return torch.where(found.any(1), first + width - 1, torch.full_like(first, -1))


class PromptPerturbation(nn.Module):
    """delta (m x d), radially projected into the eps-ball, added before the assistant header's end."""

    def __init__(self, positions: int, hidden: int, bound: float, header: list[int]):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(positions, hidden))
        self.bound = bound
        self.header = header

    def projected(self) -> torch.Tensor:
        norms = self.delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.delta * (self.bound / norms).clamp(max=1.0)

    def add_to(self, input_ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        ends = header_ends(input_ids, self.header)
        delta = self.projected().to(embeds.dtype)
        m = delta.shape[0]
        offsets = torch.arange(m, device=ends.device) - (m - 1)  # positions end-m+1 .. end
        positions = ends[:, None] + offsets[None, :]
        valid = (ends[:, None] >= 0) & (positions >= 0)
        rows = torch.arange(len(ends), device=ends.device)[:, None].expand_as(positions)
        added = torch.zeros_like(embeds)
        added[rows[valid], positions[valid]] = delta.expand(len(ends), -1, -1)[valid]
        return embeds + added


def perturb_prompts(model, perturbation: PromptPerturbation):
    """Attach the perturbation to the input embeddings (a forward hook); returns its handle. A
    cached generation step without the header (one new token) is left alone."""
    def hook(_module, args, output):
        return perturbation.add_to(args[0], output)

    return model.get_input_embeddings().register_forward_hook(hook)


class _Trainable(nn.Module):
    """What `train` updates: the perturbation; the model runs frozen around it."""

    def __init__(self, model, perturbation: PromptPerturbation):
        super().__init__()
        self.perturbation = perturbation
        self.__dict__["model"] = model  # not a submodule: its parameters are not trained

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def loss(self, batch) -> torch.Tensor:
        if (header_ends(batch["input_ids"], self.perturbation.header) < 0).any():
            raise ValueError("a training sequence has no assistant header to perturb")
        return lm_loss(self.model, batch)


@register_attack("embedding")
class Embedding:
    Config = EmbeddingConfig
    writes_weights = False  # the perturbation acts on the inputs, not on the weights

    def __init__(self, config: EmbeddingConfig):
        self.config = config

    def run(self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True):
        c = self.config
        pairs = data.harmful.get("attack", [])[:c.n]
        if not pairs:
            raise ValueError("the embedding attack needs harmful (request, answer) pairs on the attack split")
        model.requires_grad_(False)
        table = model.get_input_embeddings().weight
        bound = c.eps * float(table.detach().float().norm(dim=-1).mean())
        perturbation = PromptPerturbation(c.positions, table.shape[1], bound, header_ids(tokenizer)).to(table.device)
        perturb_prompts(model, perturbation)
        features = [encode_chat(tokenizer, e.prompt, e.answer) for e in pairs]
        train(_Trainable(model, perturbation), features,
              TrainConfig(lr=c.lr, max_steps=c.steps, batch_size=c.batch_size, seed=seed),
              tokenizer.pad_token_id, step_loss=lambda m, batch: m.loss(batch), desc="embedding", progress=progress)
        perturbation.requires_grad_(False)
        model.eval()
        norms = perturbation.projected().norm(dim=-1)
        model.config.immunity_attack_notes = {"bound": round(bound, 4),
                                              "delta_norms": [round(float(x), 4) for x in norms]}
        return model
