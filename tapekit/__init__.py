"""tapekit: JAX-style derivatives, explained gradients, a fast training loop and TensorBoard views
for TensorFlow 2.

>>> import tapekit
>>> float(tapekit.grad(lambda x: x**2)(3.0))
6.0
"""

from .board import explain
from .checking import check_grads
from .errors import DisconnectedGradientError, NonFiniteError, TapekitError
from .jacobians import jvp, vjp
from .training import Callback, CheckpointError, EarlyStopping, History, Trainer
from .transforms import derivative, grad, partial, partials, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CheckpointError",
    "DisconnectedGradientError",
    "EarlyStopping",
    "History",
    "NonFiniteError",
    "TapekitError",
    "Trainer",
    "check_grads",
    "derivative",
    "explain",
    "grad",
    "jvp",
    "partial",
    "partials",
    "value_and_grad",
    "vjp",
]
