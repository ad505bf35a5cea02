from .hooks import edit_block_outputs
from .loop import (
    OPTIMIZERS,
    SCHEDULES,
    AroundFrozen,
    TrainConfig,
    TrainingDiverged,
    batches,
    check_finite,
    length_grouped,
    lm_loss,
    logits_with,
    padding_fraction,
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
    "length_grouped",
    "lm_loss",
    "logits_with",
    "padding_fraction",
    "provider_objective",
    "train",
]
