from .loop import OPTIMIZERS, SCHEDULES, TrainConfig, batches, lm_loss, logits_with, train

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "batches", "lm_loss", "logits_with", "train"]
from .hooks import edit_block_outputs  # noqa: E402

__all__.append("edit_block_outputs")
