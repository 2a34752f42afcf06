"""Central finite differences in float64, the ground truth several test modules compare with."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def central_diff(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Gradient of scalar ``f`` at float64 ``x`` by central differences."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (float(f(tf.constant(x + e))) - float(f(tf.constant(x - e)))) / (2 * eps)
    return g
