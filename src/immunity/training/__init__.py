from .loop import OPTIMIZERS, SCHEDULES, TrainConfig, batches, lm_loss, train

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "batches", "lm_loss", "train"]
