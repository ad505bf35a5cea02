from .hooks import edit_block_outputs
from .loop import (
    OPTIMIZERS,
    SCHEDULES,
    AroundFrozen,
    TrainConfig,
    TrainingDiverged,
    batches,
    check_finite,
    lm_loss,
    logits_with,
    provider_objective,
    train,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "AroundFrozen",
    "TrainConfig",
    "TrainingDiverged",
    "batches",
    "check_finite",
    "edit_block_outputs",
    "lm_loss",
    "logits_with",
    "provider_objective",
    "train",
]
