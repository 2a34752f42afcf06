"""tapekit: JAX-style derivatives, explained gradients, a fast training loop and TensorBoard views
for TensorFlow 2.

Names are imported on first use, so ``import tapekit`` (and the ``tapekit`` command) starts
without loading TensorFlow until a transform, ``Tape`` or ``Trainer`` is touched.

>>> import tapekit
>>> float(tapekit.grad(lambda x: x**2)(3.0))
6.0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BestCheckpoint": ".training",
    "Callback": ".training",
    "CheckpointError": ".training",
    "DisconnectedGradientError": ".errors",
    "EarlyStopping": ".training",
    "History": ".training",
    "LearningRateScheduler": ".training",
    "NonFiniteError": ".errors",
    "ReduceLROnPlateau": ".training",
    "Tape": ".tape",
    "TapekitError": ".errors",
    "Trainer": ".training",
    "batch_jacobian": ".jacobians",
    "check_grads": ".checking",
    "derivative": ".transforms",
    "explain": ".board",
    "grad": ".transforms",
    "hessian": ".hessians",
    "hvp": ".hessians",
    "jacobian": ".jacobians",
    "jvp": ".jacobians",
    "partial": ".transforms",
    "partials": ".transforms",
    "value_and_grad": ".transforms",
    "vjp": ".jacobians",
}
_SUBPACKAGES = ("board", "training")

__all__ = [
    "BestCheckpoint",
    "Callback",
    "CheckpointError",
    "DisconnectedGradientError",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "NonFiniteError",
    "ReduceLROnPlateau",
    "Tape",
    "TapekitError",
    "Trainer",
    "batch_jacobian",
    "check_grads",
    "derivative",
    "explain",
    "grad",
    "hessian",
    "hvp",
    "jacobian",
    "jvp",
    "partial",
    "partials",
    "value_and_grad",
    "vjp",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from .board import explain
    from .checking import check_grads
    from .errors import DisconnectedGradientError, NonFiniteError, TapekitError
    from .hessians import hessian, hvp
    from .jacobians import batch_jacobian, jacobian, jvp, vjp
    from .tape import Tape
    from .training import (
        BestCheckpoint,
        Callback,
        CheckpointError,
        EarlyStopping,
        History,
        LearningRateScheduler,
        ReduceLROnPlateau,
        Trainer,
    )
    from .transforms import derivative, grad, partial, partials, value_and_grad


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'tapekit' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
