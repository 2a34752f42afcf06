"""The batching engine behind vmap and per_example_grads: axes rules, pfor and its fallback.

:func:`map_call` runs a function of one example on every slice of the mapped axes at once: one
``pfor`` (the vectorizer behind ``tf.vectorized_map`` and ``GradientTape.jacobian``) turns the
per-example computation into batched ops. ``in_axes``/``out_axes`` follow JAX: an int, ``None``
(broadcast / not mapped) or a nest that is a prefix of the arguments / outputs. When pfor has no
rule for an op it runs that op one example at a time in a ``tf.while_loop``; that is said once,
naming the op types (or raised, with ``fallback="error"``).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorflow.python.ops.parallel_for import control_flow_ops as _pfor_ops

from . import _args, _compile
from ._args import fn_name
from ._vectorize import VectorizationWarning, failure_reason, sequential_loop, watched

Axes = Any
"""An int, ``None``, or a (nested) tuple / list / dict of them: a prefix of the values' nest."""

_FALLBACKS = ("warn", "error")
_EAGER = tf.__internal__.EagerTensor  # importing must not start TF's runtime
_warned: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------
# Validating in_axes / out_axes and broadcasting a prefix to every leaf.


def _check_axes_spec(axes: Axes, name: str, where: str = "") -> None:
    """Build-time check: ints, None, or tuples / lists / dicts of them."""
    if axes is None or _args._is_index(axes):
        return
    if isinstance(axes, dict):
        for k, v in axes.items():
            _check_axes_spec(v, name, f"{where}[{k!r}]")
        return
    if isinstance(axes, (tuple, list)):
        for i, v in enumerate(axes):
            _check_axes_spec(v, name, f"{where}[{i}]")
        return
    raise TypeError(
        f"vmap needs `{name}` to be an int, None, or a tuple/list/dict of them, but "
        f"{name}{where} is {_args.describe_received(axes)}. Use e.g. {name}=0, {name}=None or "
        f"{name}=(0, None)."
    )


def _leaf_axes(axes: Axes, value: Any, name: str, where: str) -> list[int | None]:
    """The axis of every leaf of ``value`` (``tf.nest.flatten`` order) from prefix ``axes``."""
    if axes is None or _args._is_index(axes):
        ax = None if axes is None else operator.index(axes)
        return [ax] * len(tf.nest.flatten(value))
    if isinstance(axes, dict):
        if not isinstance(value, dict) or set(axes) != set(value):
            keys = lambda d: "[" + ", ".join(sorted(map(repr, d))) + "]"  # noqa: E731
            got = (
                f"a dict with keys {keys(value)}"
                if isinstance(value, dict)
                else (_args.describe_received(value))
            )
            raise ValueError(
                f"vmap: {name} gives a dict with keys {keys(axes)} for {where}, but that value "
                f"is {got}. Give {name} the same keys as the value, or one int/None for all "
                f"of it."
            )
        out: list[int | None] = []
        for k in sorted(value, key=_args._sort_key):  # tf.nest.flatten's order
            out.extend(_leaf_axes(axes[k], value[k], name, f"{where}[{k!r}]"))
        return out
    if not isinstance(value, (tuple, list)) or len(value) != len(axes):
        got = (
            f"a {type(value).__name__} of {len(value)}"
            if isinstance(value, (tuple, list))
            else _args.describe_received(value)
        )
        raise ValueError(
            f"vmap: {name} gives a {type(axes).__name__} of {len(axes)} entries for {where}, "
            f"but that value is {got}. The nest in {name} must match the value's structure "
            f"(or be one int/None for all of it)."
        )
    out = []
    for i, (a, v) in enumerate(zip(axes, value)):
        out.extend(_leaf_axes(a, v, name, f"{where}[{i}]"))
    return out


def _normalize(axis: int, rank: int, name: str, where: str, extra: str = "") -> int:
    if not -rank <= axis < rank:
        valid = f"{-rank}..{rank - 1}" if rank else "none"
        raise ValueError(
            f"vmap: {name}={axis} is out of range for {where}, which has rank {rank}{extra}; "
            f"valid axes are {valid}. Pick an existing axis, or None to broadcast it."
        )
    return axis % rank


# ---------------------------------------------------------------------------------------------
# pfor with vmap's fallback rule.


class _Catch(logging.Filter):
    """Record the op types pfor runs in a while_loop; drop pfor's own log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        match = re.match(r"Using a while_loop for converting (\w+)", record.getMessage())
        if match and match.group(1) not in self.ops:
            self.ops.append(match.group(1))
        return False


@contextlib.contextmanager
def _catching() -> Any:
    logger = tf.get_logger()
    catch, level = _Catch(), logger.level
    logger.addFilter(catch)
    logger.setLevel(logging.DEBUG)  # the fallback of some ops is only logged at debug level
    try:
        yield catch
    finally:
        logger.setLevel(level)
        logger.removeFilter(catch)


def _run_pfor(
    loop_fn: Callable[[tf.Tensor], list[tf.Tensor]],
    size: Any,
    chunk_size: int | None,
    fallback: str,
    what: str,
) -> list[tf.Tensor]:
    if chunk_size is not None and isinstance(size, int) and chunk_size >= size:
        chunk_size = None
    if chunk_size == 1:
        return sequential_loop(loop_fn, size)
    body, body_failed = watched(loop_fn)
    try:
        with _catching() as catch:
            out = _pfor_ops.pfor(
                body, size, fallback_to_while_loop=True, parallel_iterations=chunk_size
            )
    except (ValueError, TypeError, NotImplementedError) as exc:
        # pfor failed where its own while_loop fallback does not reach (e.g. the gradient of
        # a tf.cond, as AutoGraph makes of a Python `if` on a tensor): a plain loop, or an
        # error with fallback="error"
        if body_failed:
            raise
        reason = failure_reason(exc)
        if fallback == "error":
            raise ValueError(
                f"{what}: TensorFlow cannot vectorize this computation ({reason}), and "
                f"fallback='error' forbids running it one example at a time. Replace the "
                f"part it names (e.g. a Python `if` on a tensor: use tf.where), or pass "
                f"fallback='warn' to accept the slower loop (same result)."
            ) from None
        if (what, reason) not in _warned:
            _warned.add((what, reason))
            warnings.warn(
                f"{what}: TensorFlow cannot vectorize this computation ({reason}), so it runs "
                f"one example at a time in a tf.while_loop (slower, same result). A Python `if` "
                f"on a tensor written with tf.where vectorizes; fallback='error' makes this an "
                f"error. (Shown once.)",
                VectorizationWarning,
                stacklevel=4,
            )
        return sequential_loop(loop_fn, size)
    if catch.ops:
        ops = ", ".join(f"`{op}`" for op in catch.ops)
        if fallback == "error":
            raise ValueError(
                f"{what}: TensorFlow has no vectorization (pfor) rule for op(s) {ops}, and "
                f"fallback='error' forbids running them one example at a time. Replace those "
                f"ops, or pass fallback='warn' to accept the slower loop (same result)."
            )
        new = [op for op in catch.ops if (what, op) not in _warned]
        if new:
            _warned.update((what, op) for op in new)
            warnings.warn(
                f"{what}: TensorFlow has no vectorization (pfor) rule for op(s) {ops}, so those "
                f"run one example at a time in a tf.while_loop (slower, same result). Replace "
                f"them if speed matters; fallback='error' makes this an error. (Shown once.)",
                VectorizationWarning,
                stacklevel=4,
            )
    return out


# ---------------------------------------------------------------------------------------------
# The mapping itself (shared by vmap and per_example_grads).


def _mapped_leaves(
    fn: Callable, args: Sequence[Any], kwargs: dict, in_axes: Axes
) -> tuple[list[Any], list[int | None], Any, Any]:
    """Flat leaves of ``(args, kwargs)``, their axes (made >= 0), the mapped size, the nest."""
    if isinstance(in_axes, (tuple, list)):
        if len(in_axes) != len(args):
            raise ValueError(
                f"vmap: in_axes has {len(in_axes)} entries but `{fn_name(fn)}` was called with "
                f"{len(args)} positional argument(s). Give one entry per positional argument "
                f"(None for those to broadcast), or a single int for all."
            )
        per_arg = list(in_axes)
    elif isinstance(in_axes, dict):
        raise ValueError(
            f"vmap needs in_axes to be an int, None or a tuple with one entry per positional "
            f"argument, but received a dict {in_axes!r}. Wrap it: in_axes=({in_axes!r},) for "
            f"a dict argument."
        )
    else:
        per_arg = [in_axes] * len(args)
    axes: list[int | None] = []
    for i, (a, v) in enumerate(zip(per_arg, args)):
        axes.extend(_leaf_axes(a, v, "in_axes", _args.describe_arg(fn, i)))
    for k in sorted(kwargs):  # keyword arguments are mapped over axis 0, as in JAX
        axes.extend(_leaf_axes(0, kwargs[k], "in_axes", f"keyword argument `{k}`"))
    nest = (list(args), kwargs)
    leaves = tf.nest.flatten(nest)
    paths = _paths(fn, args, kwargs)
    sizes: list[tuple[Any, str]] = []
    out_axes: list[int | None] = []
    out_leaves: list[Any] = []
    for leaf, ax, path in zip(leaves, axes, paths):
        if ax is None:
            out_axes.append(None)
            out_leaves.append(leaf)
            continue
        t = tf.convert_to_tensor(leaf)
        rank = t.shape.rank
        if rank is None:
            raise ValueError(
                f"vmap needs mapped values of known rank, but {path} has unknown shape. Give it "
                f"a shape (e.g. an input_signature with a fixed rank)."
            )
        if rank == 0:
            raise ValueError(
                f"vmap: in_axes maps axis {ax} of {path}, but it is a scalar (rank 0) and has "
                f"no axis to map. Pass None for it in in_axes to broadcast it."
            )
        ax = _normalize(ax, rank, "in_axes", path)
        dim = t.shape[ax]
        sizes.append((int(dim) if dim is not None else tf.shape(t)[ax], f"{path} (axis {ax})"))
        out_axes.append(ax)
        out_leaves.append(t)
    if not sizes:
        raise ValueError(
            f"vmap needs at least one mapped argument, but in_axes={in_axes!r} maps none of "
            f"the arguments of `{fn_name(fn)}`. Give an int for the argument(s) to map."
        )
    static = {s for s, _ in sizes if isinstance(s, int)}
    if len(static) > 1:
        listed = ", ".join(f"{where} has size {s}" for s, where in sizes if isinstance(s, int))
        raise ValueError(
            f"vmap needs every mapped axis to have the same size, but {listed}. Make the sizes "
            f"equal, or pass None in in_axes for values to broadcast rather than map."
        )
    size = static.pop() if static else sizes[0][0]
    return out_leaves, out_axes, size, nest


def _paths(fn: Callable, args: Sequence[Any], kwargs: dict) -> list[str]:
    paths = []
    for i, a in enumerate(args):
        paths.extend(_args.describe_arg(fn, i) + p for p in _args.leaf_paths(a))
    for k in sorted(kwargs):
        paths.extend(f"keyword argument `{k}`" + p for p in _args.leaf_paths(kwargs[k]))
    return paths


def _move_to_front(t: tf.Tensor, axis: int) -> tf.Tensor:
    if axis == 0:
        return t
    rank = t.shape.rank
    return tf.transpose(t, [axis] + [d for d in range(rank) if d != axis])


def _take(t: tf.Tensor, i: tf.Tensor, keepdims: bool) -> tf.Tensor:
    row = tf.gather(t, i)
    return tf.expand_dims(row, 0) if keepdims else row


def _place(t: tf.Tensor, axis: int) -> tf.Tensor:
    """Move axis 0 (pfor's stacking axis) of ``t`` to ``axis``."""
    if axis == 0:
        return t
    rank = t.shape.rank
    perm = list(range(1, rank))
    perm.insert(axis, 0)
    return tf.transpose(t, perm)


def map_call(
    fn: Callable,
    example_fn: Callable,
    args: Sequence[Any],
    kwargs: dict,
    in_axes: Axes,
    out_axes: Axes,
    chunk_size: int | None,
    fallback: str,
    what: str,
    keepdims: bool = False,
) -> Any:
    """``example_fn`` (``fn`` or a function of one example built from it) over the mapped axes.

    With ``keepdims`` each example keeps its mapped axis (of size 1) at the front.
    """
    leaves, axes, size, nest = _mapped_leaves(fn, args, kwargs, in_axes)
    fronts = [leaf if ax is None else _move_to_front(leaf, ax) for leaf, ax in zip(leaves, axes)]
    results: list[Any] = []  # (index, output nest, flat outputs) of the traced loop body

    def loop_fn(i: tf.Tensor) -> list[tf.Tensor]:
        sliced = [
            leaf if ax is None else _take(leaf, i, keepdims) for leaf, ax in zip(fronts, axes)
        ]
        ex_args, ex_kwargs = tf.nest.pack_sequence_as(nest, sliced)
        out = example_fn(*ex_args, **ex_kwargs)
        flat = [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]
        results.append((i, out, flat))
        return flat

    stacked = _run_pfor(loop_fn, size, chunk_size, fallback, what)
    index, structure, loop_outs = results[0]
    o_axes = _leaf_axes(out_axes, structure, "out_axes", f"the output of `{fn_name(fn)}`")
    o_paths = _args.leaf_paths(structure)
    placed = []
    for t, loop_out, ax, path in zip(stacked, loop_outs, o_axes, o_paths):
        where = f"output{path} of `{fn_name(fn)}`" if path else f"the output of `{fn_name(fn)}`"
        if ax is None:
            placed.append(_unmapped(t, loop_out, index, where))
            continue
        rank = t.shape.rank - 1
        extra = " per example (a scalar)" if rank == 0 else " per example"
        if rank == 0 and ax not in (0, -1):
            raise ValueError(
                f"vmap: out_axes={ax} is out of range for {where}, which is a scalar per "
                f"example (rank 0), so the mapped axis can only be 0 (or -1). Use out_axes=0."
            )
        placed.append(_place(t, _normalize(ax, rank + 1, "out_axes", where, extra)))
    return tf.nest.pack_sequence_as(structure, placed)


def _unmapped(t: tf.Tensor, loop_out: tf.Tensor, index: tf.Tensor, where: str) -> tf.Tensor:
    """``t[0]`` for ``out_axes=None``; ``ValueError`` if the output depends on the mapped index."""
    if _depends_on(loop_out, index):
        raise ValueError(
            f"vmap: out_axes=None for {where}, but it depends on a mapped input, so it differs "
            f"between examples. Give it an int in out_axes to stack it, or compute it outside "
            f"the mapped function."
        )
    return t[0]


def _depends_on(t: tf.Tensor, index: tf.Tensor) -> bool:
    """Whether graph tensor ``t`` is computed from ``index`` (pfor's loop variable)."""
    if isinstance(t, _EAGER):  # a value, not a graph tensor: nothing to trace back
        return False
    seen, todo = set(), [t.op]
    while todo:
        op = todo.pop()
        if op in seen:
            continue
        seen.add(op)
        if any(x is index or x.ref() == index.ref() for x in op.inputs):
            return True
        todo.extend(x.op for x in op.inputs)
        todo.extend(op.control_inputs)
    return False


def check_options(in_axes: Axes, out_axes: Axes, chunk_size: int | None, fallback: str) -> None:
    """Build-time validation of vmap's options."""
    _check_axes_spec(in_axes, "in_axes")
    _check_axes_spec(out_axes, "out_axes")
    _compile.check_options("vmap", "auto", True, False, chunk_size)
    if fallback not in _FALLBACKS:
        raise ValueError(
            f"vmap needs fallback to be one of {_FALLBACKS}, but received {fallback!r}. 'warn' "
            f"runs ops without a vectorization rule one example at a time (and warns once); "
            f"'error' raises instead."
        )
