"""`deep-alignment`: safety recovery augmentation (Qi et al., "Safety Alignment Should Be Made More
Than Just a Few Tokens Deep", ICLR 2025).

Stage: alignment, on `sft`'s data plus the defender's harmful (request, compliant answer) pairs.

Why: standard alignment is shallow; it changes the first few answer tokens, so a model that is
made to begin a harmful answer (a prefill, a few steps of harmful fine-tuning) carries on. Deep
alignment teaches the model to return to a refusal from any depth of a harmful answer.

Update rule (reference Unispac/shallow-vs-deep-alignment,
`finetuning_buckets/trainer/trainer.py`, `gen_safety_augmentation_batch`, run with
`safety_augmentation=True`, `sft_type=sft`; the README's example scripts give the settings). For each harmful request x with the
defender's compliant answer h and its refusal r:
    with probability 1/2:  the example (x, h[:k] + r),  k ~ U{1, ..., min(100, |h|)} answer tokens,
                           the loss on r's tokens only (the harmful prefix is context, masked);
    otherwise:             the example (x, r)  (plain refusal, as in `sft`).
Everything else is `sft`: cross-entropy on answer tokens, the same benign examples, adapter,
optimizer and budget, so `sft` is the matched baseline and the augmentation the only difference.

Defaults and provenance: prefix probability 0.5 and at most 100 tokens (the reference's
augmentation); training settings `sft`'s (the reference: full parameters, lr 2e-5, 10 epochs,
batch 4 safety + 16 anchor examples per device, on Llama-2-7B-chat).
Deviations, stated: the reference redraws k at each visit of an example; we draw it once per
example from the run's seed, so a run is a pure function of its seed. Its benign "anchor" batch
(utility data, 16 per 4 safety examples) is here `sft`'s own benign half of the alignment data,
mixed into the same batches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data import IGNORE, encode_chat, prompt_ids
from ..registry import register_defense
from ..world import Example
from .base import AlignmentTraining, Defense, DefenseContext, Stage, align_with


@dataclass
class DeepAlignmentConfig(AlignmentTraining):
    prefix_probability: float = field(
        default=0.5, metadata={"help": "share of refusals that follow a harmful prefix (reference 0.5)"}
    )
    max_prefix: int = field(default=100, metadata={"help": "longest harmful prefix, in tokens (reference 100)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.prefix_probability <= 1.0:
            raise ValueError(f"prefix_probability must lie in [0, 1], got {self.prefix_probability}")
        if self.max_prefix < 1:
            raise ValueError(f"max_prefix must be at least 1, got {self.max_prefix}")


def encode_recovery(tokenizer, prompt: str, harmful_answer: str, refusal: str, k: int) -> dict[str, list[int]]:
    """(x, h[:k] + r): the first k tokens of the harmful answer as context (masked), then the
    refusal and EOS as targets. The answer is tokenised as in training (" " + text)."""
    prefix = tokenizer(" " + harmful_answer, add_special_tokens=False)["input_ids"][:k]
    target = tokenizer(" " + refusal, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    context = prompt_ids(tokenizer, prompt) + prefix
    return {"input_ids": context + target, "labels": [IGNORE] * len(context) + target}


def recovery_examples(
    tokenizer, refusals: list[Example], harmful: list[Example], config: DeepAlignmentConfig, seed: int
) -> tuple[list[dict], int]:
    """Each refusal, after a harmful prefix of random depth with probability `prefix_probability`
    (its request's compliant answer), else alone; one seeded draw per example. Returns the
    encoded examples and how many carry a prefix."""
    answers = {e.prompt: e.answer for e in harmful if e.answer}
    if not any(e.prompt in answers for e in refusals):
        raise ValueError(
            "deep-alignment needs the defender's compliant answers to its harmful alignment requests "
            "(harmful pairs on the align split with the same prompts as the refusals)"
        )
    rng = random.Random(seed)
    encoded, augmented = [], 0
    for e in refusals:
        answer = answers.get(e.prompt)
        if answer is None or rng.random() >= config.prefix_probability:
            encoded.append(encode_chat(tokenizer, e.prompt, e.answer))
            continue
        length = len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
        k = rng.randint(1, max(1, min(config.max_prefix, length)))
        encoded.append(encode_recovery(tokenizer, e.prompt, answer, e.answer, k))
        augmented += 1
    return encoded, augmented


@register_defense("deep-alignment")
class DeepAlignment(Defense):
    stage = Stage.ALIGNMENT
    Config = DeepAlignmentConfig

    def apply(self, model, context: DefenseContext):
        refusals, augmented = recovery_examples(
            context.tokenizer,
            context.data.get("refusals", "align"),
            context.harmful_compliance_examples(),
            self.config,
            context.seed,
        )
        context.note(recovery_examples=augmented, refusals=len(refusals))
        features = refusals + context.encode(context.data.benign.get("align", []))
        return align_with(model, context, self.config, features=features, desc="align (deep)")
