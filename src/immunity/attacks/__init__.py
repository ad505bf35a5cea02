"""Attacks. Importing this package registers them."""

from . import harmful_finetune, refusal_ablation, steering  # noqa: F401
