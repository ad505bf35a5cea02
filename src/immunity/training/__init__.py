from .hooks import edit_block_outputs
from .parallel import current_step
from .loop import (OPTIMIZERS, SCHEDULES, TrainConfig, TrainingDiverged, batches, check_finite, lm_loss, logits_with,
                   train)

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "TrainingDiverged", "batches", "check_finite", "current_step",
           "edit_block_outputs", "lm_loss", "logits_with", "train"]
