"""A small seeded regression problem (data, model, loss) that the Keras-oracle test modules
(test_keras_conventions, test_callbacks, test_keras_callbacks) train with both ``keras.Model.fit``
and ``tapekit.Trainer``."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def regression_data(n: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of a noisy linear target in 3 features (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = x @ np.array([[1.0], [-1.0], [2.0]], "float32") + 0.3 * rng.normal(size=(n, 1))
    return x, y.astype("float32")


def small_model(seed: int = 0) -> keras.Model:
    """A seeded 3-8-1 tanh MLP (the same initial weights for the same seed)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def mse(model, batch, training=True):
    """The mean squared error, as Keras' ``loss="mse"`` computes it."""
    return tf.reduce_mean((model(batch[0], training=training) - batch[1]) ** 2)


def close(a, b, atol: float) -> None:
    """Two weight lists agree elementwise within ``atol``."""
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)
