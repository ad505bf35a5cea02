"""Attacks. Importing this package registers them."""

from . import harmful_finetune  # noqa: F401
