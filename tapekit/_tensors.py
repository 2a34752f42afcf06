"""Small tensor helpers shared by the core modules, in one place.

The zero policy constants, dense gradients, "the tf.Variable behind a Keras variable", dtype
tests, zeros shaped like a source, and the ``chunk_size`` rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from .errors import describe_received

ZERO = tf.UnconnectedGradients.ZERO
NONE = tf.UnconnectedGradients.NONE


def dense(g: Any) -> Any:
    """``g`` as a dense tensor (gradients through ``tf.gather`` come as IndexedSlices)."""
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def variable(value: Any) -> tf.Variable | None:
    """The tf.Variable ``value`` is (or wraps, for a Keras variable), else None."""
    if isinstance(value, tf.Variable):
        return value
    if isinstance(value, tf.Tensor):
        return None
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, tf.Variable) else None


def tf_value(x: Any) -> Any:
    """The object TensorFlow's tapes know: the tf.Variable behind a Keras variable, else ``x``."""
    inner = variable(x)
    return x if inner is None else inner


def is_float(x: Any) -> bool:
    """Whether ``x`` (a tensor or variable) has a floating or complex dtype."""
    return x.dtype.is_floating or x.dtype.is_complex


def zeros(leading: Any, source: Any, skip: int = 0) -> tf.Tensor:
    """Zeros of shape ``leading + source.shape[skip:]`` and ``source``'s dtype.

    ``leading`` is a tensor (its shape is used) or ``[]``; shapes known only at run time work.
    """
    lead = leading.shape if isinstance(leading, (tf.Tensor, tf.Variable)) else tf.TensorShape([])
    shape = lead.concatenate(source.shape[skip:])
    if shape.is_fully_defined():
        return tf.zeros(shape, source.dtype)
    parts = [tf.shape(leading)] if lead.rank else []
    return tf.zeros(tf.concat(parts + [tf.shape(source)[skip:]], 0), source.dtype)


def zeros_like_source(source: Any) -> tf.Tensor:
    """Zeros shaped and typed like a source (tensor, tf.Variable or Keras variable)."""
    return zeros([], tf_value(source))


def check_chunk_size(chunk_size: Any, transform: str) -> None:
    """``ValueError`` unless ``chunk_size`` is None or an int >= 1."""
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(
            f"{transform} needs chunk_size to be None or an int >= 1, but received "
            f"{chunk_size!r}. It is the number of rows/columns computed at once."
        )


def split_aux(out: Any, fn: Callable, transform: str) -> tuple[Any, Any]:
    """``(value, aux)`` from what a ``has_aux=True`` function returned, or a clear error."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        name = getattr(fn, "__name__", None) or type(fn).__name__
        name = "lambda" if name == "<lambda>" else name
        raise ValueError(
            f"{transform} with has_aux=True needs `{name}` to return a pair "
            f"(value, aux), but it returned {describe_received(out)}. Return "
            f"`value, aux` or drop has_aux."
        )
    return out[0], out[1]


def is_numpy_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a graph tensor raises when it is handed to NumPy."""
    text = str(exc)
    return isinstance(exc, (NotImplementedError, AttributeError, TypeError)) and (
        "numpy" in text or "symbolic" in text
    )


class _Aux:
    """The ``aux`` of a ``has_aux`` function, from one plain call of it (the differentiated
    calls may run inside pfor's vectorized loop, where their values are not usable)."""

    def __init__(self, fn: Callable, transform: str) -> None:
        self.fn, self.transform = fn, transform

    def get(self, call: Any) -> Any:
        """The ``aux`` of ``fn`` called on the prepared ``call``."""
        return split_aux(self.fn(*call.args, **call.kwargs), self.fn, self.transform)[1]


def aux_splitter(fn: Callable, has_aux: bool, transform: str) -> tuple[Callable, _Aux]:
    """``fn`` returning only its value (``fn`` itself without ``has_aux``), and its aux."""
    if not has_aux:
        return fn, _Aux(fn, transform)

    def value_only(*args: Any, **kwargs: Any) -> Any:
        return split_aux(fn(*args, **kwargs), fn, transform)[0]

    value_only.__name__ = getattr(fn, "__name__", None) or type(fn).__name__
    return value_only, _Aux(fn, transform)
