"""The training loop: ``Trainer``, callbacks, checkpoints, compiled steps and data handling.

>>> from tapekit.training import Trainer, EarlyStopping, History
"""

from .callbacks import Callback, EarlyStopping, History
from .checkpoints import CheckpointError
from .context import StepContext
from .trainer import Trainer

__all__ = ["Callback", "CheckpointError", "EarlyStopping", "History", "StepContext", "Trainer"]
