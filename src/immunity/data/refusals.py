"""The defender's refusals: a fixed set of refusal sentences written for this project, one
chosen per harmful request by a hash of its text (the alignment target where real data gives
none; stated on every model card)."""

from __future__ import annotations

import hashlib

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "Sorry, I won't help with this because it could cause harm.",
    "I cannot help with that. It could hurt people.",
    "I'm not able to provide that. Is there something else I can help you with?",
    "I must decline this request; it asks for something harmful.",
    "Sorry, I can't do that.",
    "I won't provide help with this.",
)
REFUSAL_SOURCE = (
    f"one of {len(REFUSALS)} fixed refusal sentences written for immunity (immunity/data/refusals.py), "
    "chosen per request by a hash of its text"
)


def refusal_for(prompt: str) -> str:
    return REFUSALS[int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(REFUSALS)]
