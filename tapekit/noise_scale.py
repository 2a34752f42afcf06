"""The gradient noise scale of McCandlish, Kaplan, Amodei et al. (2018), "An Empirical Model of
Large-Batch Training": ``B_simple = tr(Σ) / |G|²``.

``G`` is the true (expected) gradient and ``Σ`` the covariance of per-example gradients.
``B_simple`` is the batch size at which the gradient noise is about as large as the gradient
itself: training with batches much smaller than it wastes steps on noise, much larger ones
waste examples. Both parts are estimated without bias from one batch:

* ``method="per_example"``: from the ``B`` per-example gradients ``g_i`` with mean ``ḡ``,
  ``tr Σ ≈ Σ_i |g_i - ḡ|² / (B - 1)`` and ``|G|² ≈ |ḡ|² - tr Σ / B``.
* ``method="two_batch"`` (their appendix A.1): from the squared norms of the gradients of a
  small and a big batch, ``E|G_b|² = |G|² + tr Σ / b``: the batch is split into ``chunks``
  equal small batches (their norms averaged) and the whole batch is the big one. This needs
  only ordinary (mean) gradients, e.g. one per replica under data parallelism.

With ``chunks`` equal to the batch size the two estimates are the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _compile
from ._tensors import ZERO, dense, variable
from .batching import per_example_grads, vmap
from .errors import describe_received

__all__ = ["gradient_noise_scale"]

_METHODS = ("per_example", "two_batch")


def _variables_of(variables: Any) -> list[Any]:
    """The trainable variables of a Keras model/layer or ``tf.Module``, or a nest's leaves."""
    if hasattr(variables, "trainable_variables") and not isinstance(variables, tf.Variable):
        found = list(variables.trainable_variables)
    else:
        found = tf.nest.flatten(variables)
    found = [v if (inner := variable(v)) is None else inner for v in found]
    if not found:
        raise ValueError(
            "gradient_noise_scale needs at least one variable, but `variables` holds none. "
            "Pass model.trainable_variables (build the model first) or a list of tf.Variables."
        )
    return found


def _squared_norm(grads: list[tf.Tensor], axis: int | None = None) -> tf.Tensor:
    """Sum of squares over every gradient (per leading index when ``axis`` is 0)."""
    if axis is None:
        return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
    return tf.add_n(
        [tf.reduce_sum(tf.square(tf.reshape(g, [tf.shape(g)[0], -1])), 1) for g in grads]
    )


def _mean_gradient(loss_fn: Callable, variables: list[Any], args: tuple) -> list[tf.Tensor]:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(variables)
        loss = tf.reduce_mean(loss_fn(*args))
    grads = tape.gradient(loss, variables, unconnected_gradients=ZERO)
    return [dense(g) for g in grads]


def _chunk_grads(
    loss_fn: Callable, variables: list[Any], args: tuple, chunks: int
) -> list[tf.Tensor]:
    """Mean gradients of ``chunks`` equal consecutive parts of the batch, stacked."""

    def split(t: tf.Tensor) -> tf.Tensor:
        return tf.reshape(t, tf.concat([[chunks, -1], tf.shape(t)[1:]], 0))

    parts = tf.nest.map_structure(split, args)
    return vmap(lambda *part: _mean_gradient(loss_fn, variables, part))(*parts)


def _estimates(
    small: tf.Tensor, big: tf.Tensor, b_small: tf.Tensor, b_big: tf.Tensor
) -> dict[str, tf.Tensor]:
    """McCandlish et al.'s unbiased |G|² and tr Σ from E|G_b|² = |G|² + tr Σ / b."""
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    norm2 = (b_big * big - b_small * small) / (b_big - b_small)
    return {"b_simple": trace / norm2, "trace_covariance": trace, "gradient_norm_squared": norm2}


def gradient_noise_scale(
    per_example_loss: Callable,
    variables: Any,
    *,
    method: str = "per_example",
    chunks: int = 2,
) -> Callable[..., dict[str, tf.Tensor]]:
    """Make a function that estimates the simple gradient noise scale on a batch.

    ``B_simple = tr(Σ) / |G|²`` (McCandlish et al., 2018): the trace of the per-example
    gradient covariance over the squared norm of the true gradient, both estimated without bias
    (see :mod:`tapekit.noise_scale`). A ratio of two unbiased estimates, it is itself noisy on
    one batch (and can be negative when the gradient is tiny): average the two parts over
    several batches before dividing for a steadier figure. The estimate is compiled once per
    input signature.

    Args:
        per_example_loss: ``per_example_loss(*batch) -> [B]`` losses, one per example, reading
            the parameters from ``variables`` (e.g. a Keras model in its closure). Call the
            model in inference mode (``training=False``) for a deterministic loss.
        variables: The parameters: a Keras model or layer (its trainable variables), or a
            nest of ``tf.Variable``.
        method: ``"per_example"`` (from per-example gradients) or ``"two_batch"`` (from the
            mean gradients of ``chunks`` small batches and of the whole batch).
        chunks: For ``"two_batch"``: equal parts the batch is split into (the batch size must
            be a multiple of it).

    Returns:
        A function of the batch (the arguments of ``per_example_loss``) returning
        ``{"b_simple": ..., "trace_covariance": ..., "gradient_norm_squared": ...}``, scalar
        tensors in the variables' dtype.

    Raises:
        TypeError: If ``per_example_loss`` is not callable.
        ValueError: If ``method`` or ``chunks`` is invalid, ``variables`` is empty, and (when
            called) if the batch has fewer than 2 examples per part, or is not a multiple of
            ``chunks``, or the loss is not one value per example.

    Example:
        >>> import numpy as np, tensorflow as tf, tapekit
        >>> w = tf.Variable([0.0, 0.0], dtype=tf.float64)
        >>> x = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], tf.float64)
        >>> y = tf.constant([1.0, 2.0, 2.0, 3.0], tf.float64)
        >>> loss = lambda x, y: 0.5 * (tf.linalg.matvec(x, w) - y) ** 2
        >>> noise = tapekit.gradient_noise_scale(loss, [w])
        >>> out = noise(x, y)
        >>> sorted(out), round(float(out["b_simple"]), 3)  # tr Σ = 8.25, |G|² = 4
        (['b_simple', 'gradient_norm_squared', 'trace_covariance'], 2.062)
        >>> two = tapekit.gradient_noise_scale(loss, [w], method="two_batch", chunks=4)
        >>> round(float(two(x, y)["b_simple"]), 3)  # chunks of one example: the same numbers
        2.062
    """
    if not callable(per_example_loss):
        raise TypeError(
            f"gradient_noise_scale needs a callable `per_example_loss(*batch) -> [B]`, but "
            f"received {describe_received(per_example_loss)}."
        )
    if method not in _METHODS:
        raise ValueError(
            f"gradient_noise_scale needs `method` in {_METHODS}, but received {method!r}: "
            f"'per_example' uses per-example gradients, 'two_batch' two batch sizes."
        )
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 2:
        raise ValueError(
            f"gradient_noise_scale needs `chunks` to be an int >= 2 (small batches per batch), "
            f"but received {describe_received(chunks)}."
        )
    params = _variables_of(variables)
    dtype = tf.as_dtype(params[0].dtype)
    per_example = per_example_grads(per_example_loss, params) if method == "per_example" else None

    def check(args: tuple) -> int:
        losses = per_example_loss(*args)
        size = tf.nest.flatten(args)[0].shape[0]
        if losses.shape.rank != 1 or (size is not None and losses.shape[0] != size):
            raise ValueError(
                f"gradient_noise_scale needs `per_example_loss` to return one loss per example "
                f"(shape [{size}]), but it returned shape {tuple(losses.shape)}. Do not reduce "
                f"over the batch."
            )
        parts = 1 if method == "per_example" else chunks
        if size is not None and (size % parts or size // parts < (2 if parts == 1 else 1)):
            raise ValueError(
                f"gradient_noise_scale(method={method!r}) needs a batch of at least 2 examples"
                + (f" that is a multiple of chunks={chunks}" if parts > 1 else "")
                + f", but received a batch of {size}."
            )
        return size

    @tf.function(reduce_retracing=True, autograph=False)
    def estimate(*args: Any) -> dict[str, tf.Tensor]:
        size = tf.cast(tf.shape(tf.nest.flatten(args)[0])[0], dtype)
        if method == "per_example":
            grads = list(per_example(*args))
            mean = [tf.reduce_mean(g, 0) for g in grads]
            small = tf.reduce_mean(_squared_norm(grads, axis=0))  # |G_1|², averaged
            return _estimates(small, _squared_norm(mean), tf.constant(1.0, dtype), size)
        grads = _chunk_grads(_compile.autographed(per_example_loss), params, args, chunks)
        mean = [tf.reduce_mean(g, 0) for g in grads]
        small = tf.reduce_mean(_squared_norm(grads, axis=0))
        return _estimates(small, _squared_norm(mean), size / chunks, size)

    checked: set[Any] = set()

    def noise_scale(*batch: Any) -> dict[str, tf.Tensor]:
        args = tuple(tf.nest.map_structure(tf.convert_to_tensor, batch))
        key = tuple((t.dtype, tuple(t.shape)) for t in tf.nest.flatten(args))
        if key not in checked:
            check(args)
            checked.add(key)
        return estimate(*args)

    noise_scale.__name__ = f"gradient_noise_scale_of_{getattr(per_example_loss, '__name__', 'fn')}"
    return noise_scale
