"""Batched greedy generation with KV cache; generations are saved before any judge sees them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import prompt_ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "generate",
    prefills: list[list[int] | None] | None = None,
) -> list[str]:
    """Greedy answers to `prompts` (chat template applied). `prefills[i]`: token ids forced at
    the start of answer i (a prefilling attack); the answer returned is the model's continuation
    after them, what a judge reads (the attacker's own tokens are not the model's answer)."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    prefills = prefills or [None] * len(prompts)
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        forced = [f or [] for f in prefills[start : start + batch_size]]
        encoded = [prompt_ids(tokenizer, p) + f for p, f in zip(prompts[start : start + batch_size], forced)]
        width = max(map(len, encoded))
        # Left padding, so every prompt ends where generation begins.
        input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs += tokenizer.batch_decode(out[:, width:].tolist(), skip_special_tokens=True)
    return [o.strip() for o in outputs]


def save_generations(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def load_generations(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f]
