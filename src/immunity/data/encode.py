"""Tokenise (prompt, answer) pairs with an answer-only loss mask, and pad batches.

The prompt goes through the tokenizer's chat template; the answer and EOS follow. Labels are
-100 on the prompt and on padding, so a fine-tuning loss covers answer tokens only (the field's
`--correct_loss` lesson).
"""

from __future__ import annotations

import torch

IGNORE = -100


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
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
