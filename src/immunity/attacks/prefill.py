"""`prefill`: the prefilling attack (Qi et al. 2024, "Safety alignment should be made more than
just a few tokens deep"): the first k tokens of a compliant answer are forced at the start of
the model's answer, and the model continues from there.

Threat model: the attacker decodes from the released weights (any open-weight deployment, and
APIs that allow prefilling the assistant turn); no training, no weights change. It probes
shallow alignment: a model whose refusal lives in its first few answer tokens continues a
harmful answer once those tokens are given.

Rule. For each evaluated harmful request x with a compliant answer y in the data (SafetyWorld's
own; for real prompts, the unaligned base model's answer), the answer starts with y's first k
tokens (tokenised as in training: " " + y) and greedy decoding continues; the judge reads the
model's continuation only (the forced tokens are the attacker's, kept beside it as `prefill` in
the generations). Other requests are decoded as usual.

Defaults: k = 10 (Qi et al. report k = 5, 10, 20, 40; `make real` runs 5, 10 and 20).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataBundle
from ..registry import register_attack
from ..world import Example
from .base import Attack, AttackTask


@dataclass
class PrefillConfig(AttackTask):
    tokens: int = field(default=10, metadata={"help": "k: answer tokens forced before the model continues"})

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"attack.tokens must be at least 1, got {self.tokens}")


@register_attack("prefill")
class Prefill(Attack):
    Config = PrefillConfig
    writes_weights = False  # an attack on the decoding: nothing to export

    def __init__(self, config: PrefillConfig):
        super().__init__(config)
        self.prefixes: dict[str, list[int]] = {}

    def run(
        self, model, tokenizer, data: DataBundle, seed: int, progress: bool = True, merge: bool = True, adapter=None
    ):
        k = self.config.tokens
        self.prefixes = {
            e.prompt: tokenizer(" " + e.answer, add_special_tokens=False)["input_ids"][:k]
            for split in ("val", "eval")
            for e in data.harmful.get(split, [])
            if e.answer
        }
        if not self.prefixes:
            raise ValueError("the prefill attack needs compliant answers to the evaluated harmful requests")
        self.notes = {"tokens": k, "prompts": len(self.prefixes)}
        return model

    def prompt_prefill(self, example: Example) -> list[int] | None:
        return self.prefixes.get(example.prompt)
