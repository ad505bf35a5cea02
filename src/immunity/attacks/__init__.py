"""Attacks. Importing this package registers them."""

from . import harmful_finetune, refusal_ablation, reft, steering  # noqa: F401
