from .loop import OPTIMIZERS, SCHEDULES, TrainConfig, batches, lm_loss, train

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "batches", "lm_loss", "train"]
from .hooks import edit_block_outputs  # noqa: E402

__all__.append("edit_block_outputs")
