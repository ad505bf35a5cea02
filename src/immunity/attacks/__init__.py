"""Attacks. Importing this package registers them."""

from . import backdoor, embedding, harmful_finetune, refusal_ablation, reft, steering  # noqa: F401
