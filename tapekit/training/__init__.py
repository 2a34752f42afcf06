"""The training loop: ``Trainer``, callbacks, checkpoints, compiled steps and data handling.

>>> from tapekit.training import Trainer, EarlyStopping, History
"""

from .best_checkpoint import BestCheckpoint
from .callbacks import Callback, EarlyStopping, History
from .checkpoints import CheckpointError
from .context import StepContext
from .lr_callbacks import LearningRateScheduler, ReduceLROnPlateau
from .trainer import Trainer

__all__ = [
    "BestCheckpoint",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "ReduceLROnPlateau",
    "StepContext",
    "Trainer",
]
