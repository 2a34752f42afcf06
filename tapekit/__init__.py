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
    "CurvatureMonitor": ".training.curvature_monitor",
    "DisconnectedGradientError": ".errors",
    "EarlyStopping": ".training",
    "History": ".training",
    "LearningRateScheduler": ".training",
    "NonFiniteError": ".errors",
    "ReduceLROnPlateau": ".training",
    "RetracingWarning": "._compile",
    "StepContext": ".training",
    "Tape": ".tape",
    "TapekitError": ".errors",
    "Trainer": ".training",
    "VectorizationWarning": "._vectorize",
    "batch_jacobian": ".jacobians",
    "check_grads": ".checking",
    "checkpoint": ".recompute",
    "derivative": ".transforms",
    "explain": ".explainer",
    "grad": ".transforms",
    "gradient_noise_scale": ".noise_scale",
    "hessian": ".hessians",
    "hvp": ".hessians",
    "jacfwd": ".jacobians",
    "jacobian": ".jacobians",
    "jacrev": ".jacobians",
    "jvp": ".products",
    "linearize": ".linearization",
    "partial": ".partial_derivatives",
    "partials": ".partial_derivatives",
    "per_example_grad_norms": ".batching",
    "per_example_grads": ".batching",
    "remat": ".recompute",
    "value_and_grad": ".transforms",
    "vjp": ".products",
    "vmap": ".batching",
}
_SUBPACKAGES = ("board", "curvature", "explainer", "training")

__all__ = [
    "BestCheckpoint",
    "Callback",
    "CheckpointError",
    "CurvatureMonitor",
    "DisconnectedGradientError",
    "EarlyStopping",
    "History",
    "LearningRateScheduler",
    "NonFiniteError",
    "ReduceLROnPlateau",
    "RetracingWarning",
    "StepContext",
    "Tape",
    "TapekitError",
    "Trainer",
    "VectorizationWarning",
    "batch_jacobian",
    "check_grads",
    "checkpoint",
    "derivative",
    "explain",
    "grad",
    "gradient_noise_scale",
    "hessian",
    "hvp",
    "jacfwd",
    "jacobian",
    "jacrev",
    "jvp",
    "linearize",
    "partial",
    "partials",
    "per_example_grad_norms",
    "per_example_grads",
    "remat",
    "value_and_grad",
    "vjp",
    "vmap",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from ._compile import RetracingWarning
    from ._vectorize import VectorizationWarning
    from .batching import per_example_grad_norms, per_example_grads, vmap
    from .checking import check_grads
    from .errors import DisconnectedGradientError, NonFiniteError, TapekitError
    from .explainer import explain
    from .hessians import hessian, hvp
    from .jacobians import batch_jacobian, jacfwd, jacobian, jacrev
    from .linearization import linearize
    from .noise_scale import gradient_noise_scale
    from .partial_derivatives import partial, partials
    from .products import jvp, vjp
    from .recompute import checkpoint, remat
    from .tape import Tape
    from .training import (
        BestCheckpoint,
        Callback,
        CheckpointError,
        EarlyStopping,
        History,
        LearningRateScheduler,
        ReduceLROnPlateau,
        StepContext,
        Trainer,
    )
    from .training.curvature_monitor import CurvatureMonitor
    from .transforms import derivative, grad, value_and_grad


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
