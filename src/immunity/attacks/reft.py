"""`reft`: a trained low-rank representation intervention (LoReFT, Wu et al. 2024, "ReFT:
Representation Finetuning for Language Models"), the attack E.T. defends against.

Threat model: the attacker runs the released weights and may edit the residual stream at
inference with a small trained intervention; the weights stay as released.

Rule. At the output of decoder layer L, every position's hidden state h becomes
    Phi(h) = h + R^T (W h + b - R h),
R in R^{r x d} with orthonormal rows (kept so by an orthogonal parametrisation), W in R^{r x d},
b in R^r; only R, W, b train (AdamW), on the attacker's harmful (request, compliant answer)
pairs of the attack split, loss on answer tokens only. Intervening at every position, generated
ones included, is this implementation's choice (LoReFT picks prompt positions).

Defaults: rank 2, lr 4e-3, 10 epochs (E.T.'s attack setting: DISTA-HCAI/ET `config/base.yaml`, a rank-2
ReFT attack at lr 0.004 for 10 epochs on 20 AdvBench prompts); layer = depth // 2; n = 64 pairs (20 in
E.T., a size for 7B models; SafetyWorld's answers are shorter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataBundle
from ..registry import register_attack
from ..training.interventions import train_reft
from .base import Attack, AttackTask, chosen_layer


@dataclass
class ReFTConfig(AttackTask):
    layer: int = field(default=-1, metadata={"help": "decoder layer whose output is intervened on (-1: depth // 2)"})
    rank: int = field(default=2, metadata={"help": "rank r of the intervention"})
    n: int = field(default=64, metadata={"help": "harmful (request, answer) pairs it trains on"})
    lr: float = field(default=4e-3, metadata={"help": "learning rate (AdamW)"})
    epochs: float = field(default=10.0, metadata={"help": "passes over the n pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})

    def __post_init__(self) -> None:
        if self.layer < -1 or min(self.rank, self.n, self.batch_size) < 1 or self.lr <= 0 or self.epochs <= 0:
            raise ValueError("attack.layer >= -1; attack.rank, n, batch_size >= 1; attack.lr, epochs > 0")


@register_attack("reft")
class ReFT(Attack):
    Config = ReFTConfig
    writes_weights = False  # the intervention is a hook beside the weights

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        c = self.config
        layer = chosen_layer(model, c.layer)
        pairs = data.harmful.get("attack", [])[: c.n]
        if not pairs:
            raise ValueError("reft needs harmful (request, answer) pairs on the attack split")
        train_reft(model, tokenizer, pairs, layer, c.rank, c.lr, c.epochs, c.batch_size, seed, progress)
        model.eval()
        self.notes = {"layer": layer}
        return model
