"""Tokenise (prompt, answer) pairs with an answer-only loss mask, and pad batches.

The prompt goes through the tokenizer's chat template; the answer and EOS follow. Labels are
-100 on the prompt and on padding, so a fine-tuning loss covers answer tokens only (the field's
`--correct_loss` lesson).
"""

from __future__ import annotations

import torch

IGNORE = -100


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer, prompt: str, answer: str) -> dict[str, list[int]]:
    p = prompt_ids(tokenizer, prompt)
    a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}


def encode_text(tokenizer, text: str) -> dict[str, list[int]]:
    """Plain language-model text (pretraining facts): every token is a target."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    ids = ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def collate(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; padding is masked in attention and labels."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        attention[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def header_ids(tokenizer) -> list[int]:
    """The tokens the chat template adds for the assistant's turn (where every prompt ends)."""
    turn = [{"role": "user", "content": "x"}]
    bare = tokenizer.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
    full = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    if not full.startswith(bare) or full == bare:
        raise ValueError(
            "this needs a chat template that ends a prompt with an assistant header (the tokenizer's "
            "template adds nothing for add_generation_prompt=True)"
        )
    return tokenizer(full[len(bare) :], add_special_tokens=False)["input_ids"]


def header_ends(input_ids: torch.Tensor, header: list[int]) -> torch.Tensor:
    """Per row, the index of the last token of the first assistant header (-1 if it has none)."""
    width = len(header)
    if input_ids.shape[1] < width:
        return torch.full((input_ids.shape[0],), -1, device=input_ids.device)
    windows = input_ids.unfold(1, width, 1)
    found = (windows == torch.tensor(header, device=input_ids.device)).all(-1)
    first = found.float().argmax(1)
    return torch.where(found.any(1), first + width - 1, torch.full_like(first, -1))
