"""Vectorized Jacobians: reverse-mode rows and forward-mode columns stacked by TensorFlow's pfor.

Both routes run one ``pfor`` (the vectorizer behind ``GradientTape.jacobian`` and
``tf.vectorized_map``) over the standard basis, so a Jacobian costs one batched backward (or
forward) pass instead of one pass per row. ``chunk_size`` vectorizes that many basis vectors at
a time in a sequential loop, bounding memory. When pfor cannot vectorize an op it falls back to
a ``tf.while_loop`` (or, failing that, to a plain loop over the basis); that is detected and
reported once per op type with a warning. Where TensorFlow cannot run a function in forward
mode at all, :func:`forward_or_reverse` lets the callers use reverse mode instead.

Ranks must be known; sizes may be known only at run time (e.g. after tf.unique, or a ``None``
batch dimension in a ``tf.function`` signature).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import variable_scope as _variable_scope
from tensorflow.python.ops.parallel_for import control_flow_ops as _pfor_ops

from . import _args, _tensors
from ._args import fn_name

__all__ = [
    "VectorizationWarning",
    "check_batch",
    "failure_reason",
    "forward",
    "forward_or_reverse",
    "pack_columns",
    "pfor",
    "reverse",
    "same_batch",
    "sequential_loop",
    "size",
    "src_dtype",
    "watched",
]

_warned: set[tuple[str, str]] = set()


class VectorizationWarning(UserWarning):
    """pfor could not vectorize an op and runs those iterations in a ``tf.while_loop`` (same
    result, slower); shown once per cause. Public as ``tapekit.VectorizationWarning``.

    Example:
        >>> import warnings, tensorflow as tf, tapekit
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", tapekit.VectorizationWarning)
        ...     tapekit.vmap(tf.strings.as_string)(tf.constant([1, 2])).numpy()
        array([b'1', b'2'], dtype=object)
    """


class _DropLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence TensorFlow's Python logger (pfor logs an error before raising)."""
    logger = tf.get_logger()
    drop = _DropLogs()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def pfor(
    loop_fn: Callable[[tf.Tensor], list[tf.Tensor]], iters: Any, chunk_size: int | None, what: str
) -> list[tf.Tensor]:
    """``pfor(loop_fn, iters)`` for a loop_fn returning a flat list; warn once on fallback.

    When pfor cannot vectorize an op it runs those iterations in a ``tf.while_loop``; when it
    cannot even do that (e.g. forward mode through a ``tf.cond``), every iteration runs one by
    one in a plain loop. Either way the result is the same and a warning says so once.
    """
    if chunk_size is not None and isinstance(iters, int) and chunk_size >= iters:
        chunk_size = None
    if chunk_size == 1:  # one basis vector at a time: a plain sequential loop
        return sequential_loop(loop_fn, iters)
    body, body_failed = watched(loop_fn)
    try:
        with _quiet():
            return _pfor_ops.pfor(
                body, iters, fallback_to_while_loop=False, parallel_iterations=chunk_size
            )
    except (ValueError, TypeError, NotImplementedError) as exc:
        if body_failed:
            raise
        strict_error = exc
    match = re.search(r"No pfor vectorization defined for (\w+)", str(strict_error))
    op = match.group(1) if match else ""
    try:
        if not op:  # not a missing rule: pfor's own while_loop fallback would not help
            raise ValueError(str(strict_error))
        with _quiet():
            out = _pfor_ops.pfor(
                loop_fn, iters, fallback_to_while_loop=True, parallel_iterations=chunk_size
            )
    except (ValueError, TypeError, NotImplementedError):
        out = sequential_loop(loop_fn, iters)  # if this fails too, its (maybe fn's) error is raised
    if (what, op) not in _warned:  # the fallback worked: say once that it is slower
        _warned.add((what, op))
        reason = failure_reason(strict_error)
        cannot = f"op `{op}`" if op else f"part of this computation ({reason})"
        warnings.warn(
            f"{what}: TensorFlow cannot vectorize {cannot}, so those iterations run one by one "
            f"in a tf.while_loop (slower, same result). Replace the op if speed matters, or pass "
            f"mode='fwd'/'rev' to try the other route. (This warning is shown once.)",
            VectorizationWarning,
            stacklevel=2,
        )
    return out


def failure_reason(exc: BaseException) -> str:
    """The message of ``exc`` without AutoGraph's "in user code:" frame listing or graph
    tensor names, shortened: the reason in a fallback warning or error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [ln for ln in lines if not ln.startswith(("in user code", "File "))]
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^\w+(Error|Exception): ", "", text)
    text = re.sub(r"\s*(for )?<tf\.Tensor.*", "", text)  # no graph tensor names
    return text.split(" (")[0][:80]


def watched(loop_fn: Callable[[tf.Tensor], Any]) -> tuple[Callable[[tf.Tensor], Any], list]:
    """``(body, failed)``: ``loop_fn`` as pfor's body, and a list that gets an entry when
    ``loop_fn`` itself raises while pfor builds it. That is the function's own error, which
    would recur in any fallback loop: raise it rather than retry."""
    failed: list[bool] = []

    def body(i: tf.Tensor) -> Any:
        try:
            return loop_fn(i)
        except Exception:
            failed.append(True)
            raise

    return body, failed


def sequential_loop(loop_fn: Callable[[tf.Tensor], list[tf.Tensor]], iters: Any) -> list[tf.Tensor]:
    """One iteration after the other in a ``tf.while_loop`` (no vectorization)."""
    dtypes = [t.dtype for t in loop_fn(tf.constant(0))]
    return _pfor_ops.for_loop(loop_fn, dtypes, iters, parallel_iterations=1)


Dim = Any  # a Python int where the size is static, else a scalar int32 tensor


def _dims(t: Any, what: str) -> list[Dim]:
    """The shape of ``t``: Python ints where static, scalar tensors where only known at run time."""
    shape = t.shape
    if shape.rank is None:
        raise ValueError(
            f"{what} needs values of known rank, but one has unknown shape. Inside your own "
            f"tf.function, give the input a shape (an input_signature with a fixed rank)."
        )
    if shape.is_fully_defined():
        return [int(d) for d in shape]
    dynamic = tf.shape(t)
    return [int(d) if d is not None else dynamic[i] for i, d in enumerate(shape.as_list())]


def _prod(dims: list[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


def _arg(dims: list[Dim]) -> Any:
    """A shape argument for tf.reshape / tf.broadcast_to."""
    if all(isinstance(d, int) for d in dims):
        return list(dims)
    return tf.stack([tf.convert_to_tensor(d, tf.int32) for d in dims])


def _basis(i: tf.Tensor, offset: Dim, dims: list[Dim], dtype: tf.DType, batch: bool) -> Any:
    """The ``i``-th standard basis vector restricted to one leaf (zeros when outside it)."""
    inner = dims[1:] if batch else dims
    e = tf.one_hot(i - offset, _prod(inner), dtype=dtype)
    e = tf.reshape(e, _arg(inner))
    return tf.broadcast_to(e, _arg(dims)) if batch else e


def _offsets(sizes: list[Dim]) -> tuple[list[Dim], Dim]:
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total = total + n
    return offsets, total


def _is_zero(n: Dim) -> bool:
    return isinstance(n, int) and n == 0


def reverse(
    gradient: Callable[[list[tf.Tensor]], list[Any]],
    targets: list[tf.Tensor],
    sources: list[Any],
    *,
    batch: bool = False,
    chunk_size: int | None = None,
    what: str = "jacobian",
) -> list[list[tf.Tensor]]:
    """Jacobian ``[target k][source j]`` from vector-Jacobian products, one pfor over rows.

    ``gradient(cotangents)`` must return the gradients of ``targets`` weighted by
    ``cotangents`` w.r.t. ``sources`` (e.g. ``tape.gradient(targets, sources, cotangents)``),
    with zeros for unconnected sources. Shapes: ``target.shape + source.shape``, or with
    ``batch`` ``(B,) + target.shape[1:] + source.shape[1:]``.
    """
    t_dims = [_dims(t, what) for t in targets]
    s_dims = [_dims(s, what) for s in sources]
    skip = 1 if batch else 0
    t_sizes = [_prod(d[skip:]) for d in t_dims]
    offsets, total = _offsets(t_sizes)
    dtypes = [t.dtype for t in targets]

    def loop_fn(i: tf.Tensor) -> list[tf.Tensor]:
        cots = [_basis(i, o, d, dt, batch) for o, d, dt in zip(offsets, t_dims, dtypes)]
        return [_tensors.dense(g) for g in gradient(cots)]

    if _is_zero(total) or any(_is_zero(_prod(d[skip:])) for d in s_dims):
        rows = [tf.zeros(_arg([total] + d), src_dtype(s)) for d, s in zip(s_dims, sources)]
    else:
        rows = pfor(loop_fn, total, chunk_size, what)
    out = []
    for o, n, td in zip(offsets, t_sizes, t_dims):
        per_source = []
        for rows_j, sd in zip(rows, s_dims):
            block = rows_j[o : o + n]
            if batch:  # (n, B, *s_inner) -> (B, *t_inner, *s_inner)
                block = tf.reshape(block, _arg(td[1:] + sd))
                k = len(td) - 1
                block = tf.transpose(block, [k] + list(range(k)) + list(range(k + 1, k + len(sd))))
            else:
                block = tf.reshape(block, _arg(td + sd))
            per_source.append(block)
        out.append(per_source)
    return out


def forward(
    jvp: Callable[[list[tf.Tensor]], list[tf.Tensor]],
    sources: list[Any],
    outputs: list[tf.Tensor] | None = None,
    *,
    batch: bool = False,
    chunk_size: int | None = None,
    what: str = "jacobian",
) -> list[list[tf.Tensor]]:
    """Jacobian ``[output k][source j]`` from Jacobian-vector products, one pfor over columns.

    ``jvp(tangents)`` runs the function under a ``tf.autodiff.ForwardAccumulator`` with one
    tangent per source and returns the flat list of output tangents. ``outputs`` (values with
    the outputs' shapes and dtypes) is needed only when the inputs have no elements. Executing
    eagerly (``compile=False``), the columns are computed one by one so that the function
    really runs eagerly (pfor would trace it).
    """
    if tf.executing_eagerly():
        chunk_size = 1
    s_dims = [_dims(s, what) for s in sources]
    skip = 1 if batch else 0
    offsets, total = _offsets([_prod(d[skip:]) for d in s_dims])
    s_dtypes = [src_dtype(s) for s in sources]

    def loop_fn(i: tf.Tensor) -> list[tf.Tensor]:
        return list(
            jvp([_basis(i, o, d, dt, batch) for o, d, dt in zip(offsets, s_dims, s_dtypes)])
        )

    if _is_zero(total):
        assert outputs is not None  # internal contract
        cols = [tf.zeros(_arg([0] + _dims(o, what)), o.dtype) for o in outputs]
    else:
        cols = pfor(loop_fn, total, chunk_size, what)
    out = []
    for cols_k in cols:
        od = _dims(cols_k, what)[1:]
        per_source = []
        for o, sd, dt in zip(offsets, s_dims, s_dtypes):
            block = cols_k[o : o + _prod(sd[skip:])]
            if batch:  # (n, B, *o_inner) -> (B, *o_inner, *s_inner)
                block = tf.reshape(block, _arg(sd[1:] + od))
                k, m = len(sd) - 1, len(od)
                perm = [k] + list(range(k + 1, k + m)) + list(range(k))
            else:  # (n, *o) -> (*o, *s)
                block = tf.reshape(block, _arg(sd + od))
                k, m = len(sd), len(od)
                perm = list(range(k, k + m)) + list(range(k))
            block = tf.transpose(block, perm) if perm != sorted(perm) else block
            # the dtype of the source, as reverse mode gives (they differ if fn casts)
            per_source.append(tf.cast(block, dt) if block.dtype != dt else block)
        out.append(per_source)
    return out


def forward_or_reverse(forward: Callable[[], Any], reverse: Callable[[], Any]) -> Any:
    """``forward()``, or ``reverse()`` if TensorFlow cannot run the function in forward mode.

    Forward mode fails for some ops and control flow (a ``tf.cond``, ``tf.map_fn`` or a
    counted ``tf.while_loop`` under a tape inside a graph, ``tf.gather_nd``), where reverse
    mode computes the same values. An error of the function itself is raised again by
    ``reverse()``, so nothing is hidden.
    """
    scope = _variable_scope.get_variable_scope()
    caching_device = scope.caching_device
    try:
        return forward()
    except Exception:  # noqa: BLE001 - retried in reverse mode, which re-raises real errors
        # tf.map_fn sets the variable scope's caching device while it builds a graph and resets
        # it only when it returns; failing inside it (forward mode) would leave it set for the
        # whole process, and Keras could then no longer create variables eagerly.
        if scope.caching_device is not caching_device:
            scope.set_caching_device(caching_device)
        return reverse()


def pack_columns(row: list[Any], structs: list[tuple[Any, int]], single: bool) -> Any:
    """One result leaf per source leaf -> the argument nests (a tuple of them for tuple argnums)."""
    per_arg = _args.unflatten(row, structs)
    return per_arg[0] if single else tuple(per_arg)


def size(values: list[Any], batch: bool) -> int | None:
    """Total number of elements (per example with ``batch``); None if not known statically."""
    shapes = [v.shape[1:] if batch else v.shape for v in values]
    if not all(s.is_fully_defined() for s in shapes):
        return None
    return sum(int(np.prod(s.as_list(), dtype=np.int64)) for s in shapes)


def check_batch(inputs: list[Any], outputs: list[Any], fn: Callable) -> None:
    """``ValueError`` unless all inputs and outputs share one leading dimension.

    A leading dimension unknown until run time (``None`` in a ``tf.function`` signature) is
    accepted; known ones must be equal.
    """
    if not same_batch(inputs + outputs):
        raise ValueError(
            f"batch_jacobian needs the differentiated inputs and the outputs of "
            f"`{fn_name(fn)}` to share one leading (batch) dimension, but received input "
            f"shapes {[tuple(v.shape) for v in inputs]} and output shapes "
            f"{[tuple(v.shape) for v in outputs]}. Use tapekit.jacobian for values without a "
            f"batch dimension."
        )


def same_batch(values: list[Any]) -> bool:
    """Whether all ``values`` have rank >= 1 and compatible leading dimensions."""
    if any(v.shape.rank == 0 for v in values):
        return False
    known = {v.shape[0] for v in values if v.shape.rank is not None and v.shape[0] is not None}
    return len(known) <= 1


def src_dtype(s: Any) -> tf.DType:
    """The dtype of a source (the tf.Variable's behind a Keras variable)."""
    return _tensors.tf_value(s).dtype
