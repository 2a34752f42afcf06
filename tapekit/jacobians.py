"""Linearization transforms: jvp (forward mode), vjp (reverse mode) and the Jacobian family.

``jvp`` runs ``fn`` under ``tf.autodiff.ForwardAccumulator``; ``vjp`` records it on a
persistent ``tf.GradientTape``. Both accept nests of primals and keep their dtypes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from . import _args
from .errors import describe_received

__all__ = ["jvp", "vjp"]

_ZERO = tf.UnconnectedGradients.ZERO


def _check_primals(primals: Any, transform: str, what: str = "primals") -> list[Any]:
    if not isinstance(primals, (tuple, list)):
        raise TypeError(
            f"{transform} needs `{what}` as a tuple with one entry per argument of fn, but "
            f"received {describe_received(primals)}. Wrap a single argument: ({what[:-1]},)."
        )
    return list(primals)


def _match_dtype_shape(value: Any, like: Any, where: str, transform: str) -> tf.Tensor:
    """Convert a tangent/cotangent to the dtype of ``like``; check the shape matches."""
    dtype = like.dtype
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype != dtype:
            raise TypeError(
                f"{transform}: {where} has dtype {value.dtype.name} but must match the "
                f"corresponding value's dtype {dtype.name}. Cast it: tf.cast(t, tf.{dtype.name})."
            )
        t = tf.convert_to_tensor(value)
    else:
        try:
            t = tf.convert_to_tensor(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{transform}: {where} must be convertible to {dtype.name}, but received "
                f"{describe_received(value)}."
            ) from exc
    if t.shape.rank is not None and like.shape.rank is not None:
        if not t.shape.is_compatible_with(like.shape):
            raise ValueError(
                f"{transform}: {where} has shape {tuple(t.shape)} but must have the shape of the "
                f"corresponding value, {tuple(like.shape)}."
            )
    return t


def _flatten_like(value: Any, structure: Any, where: str, transform: str) -> list[Any]:
    try:
        tf.nest.assert_same_structure(structure, value, check_types=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{transform}: {where} must have the same structure as the value it pairs with; {exc}"
        ) from exc
    _check_keys(structure, value, where, transform)
    return tf.nest.flatten(value)


def _check_keys(structure: Any, value: Any, where: str, transform: str) -> None:
    """assert_same_structure(check_types=False) pairs dict values by sorted position only."""
    if isinstance(structure, dict):
        if set(structure) != set(value):
            raise ValueError(
                f"{transform}: {where} must have the same dict keys as the value it pairs with, "
                f"{sorted(map(repr, structure))}, but has {sorted(map(repr, value))}."
            )
        for k in structure:
            _check_keys(structure[k], value[k], where, transform)
    elif isinstance(structure, (list, tuple)):
        for s, v in zip(structure, value):
            _check_keys(s, v, where, transform)


def jvp(fn: Callable, primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, Any]:
    """Evaluate ``fn`` and its Jacobian-vector product (forward mode).

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a tensor or a nest of
            tensors.
        primals: A tuple (or list) with the point at which to evaluate, one entry per argument;
            entries may be numbers, arrays, tensors, variables or nests of them.
        tangents: The direction: same structure, shapes and dtypes as ``primals`` (Python numbers
            and arrays are converted to the primal's dtype).

    Returns:
        ``(out, tangent_out)``: ``fn(*primals)`` and J·tangents, with the structure, shapes and
        dtypes of ``out``. Outputs that do not depend on the primals get zero tangents.

    Raises:
        TypeError: If ``fn`` is not callable, ``primals``/``tangents`` are not tuples, a primal is
            not floating point, or a tangent's dtype differs from its primal's.
        ValueError: If ``tangents`` do not match ``primals`` in length, structure or shape.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> out, t = tapekit.jvp(lambda x: x**2, (3.0,), (1.0,))
        >>> float(out), float(t)
        (9.0, 6.0)
    """
    _args.check_callable(fn, "jvp")
    primals = _check_primals(primals, "jvp")
    tangents = _check_primals(tangents, "jvp", "tangents")
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp needs one tangent per primal, but received {len(primals)} primals and "
            f"{len(tangents)} tangents."
        )
    call_args, watch, tans = [], [], []
    seen: set[int] = set()
    for i, (p, t) in enumerate(zip(primals, tangents)):
        call_value, watched = _args.prepare(p, f"primal {i}", "jvp", seen)
        call_args.append(call_value)
        flat_t = _flatten_like(t, call_value, f"tangent {i}", "jvp")
        for j, (w, ft) in enumerate(zip(watched, flat_t)):
            where = f"tangent {i}" if len(watched) == 1 else f"tangent {i} (leaf {j})"
            tans.append(_match_dtype_shape(ft, w, where, "jvp"))
        watch.extend(watched)
    with tf.autodiff.ForwardAccumulator(watch, tans) as acc:
        out = fn(*call_args)
    out = tf.nest.map_structure(lambda o: _args.as_output_tensor(o, fn, "jvp"), out)
    tangent_out = tf.nest.map_structure(lambda o: acc.jvp(o, unconnected_gradients=_ZERO), out)
    return out, tangent_out


def vjp(fn: Callable, *primals: Any) -> tuple[Any, Callable]:
    """Evaluate ``fn`` and return a function for its vector-Jacobian products (reverse mode).

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a tensor or a nest of
            tensors.
        *primals: The point at which to evaluate: numbers, arrays, tensors, variables or nests.

    Returns:
        ``(out, vjp_fn)``. ``vjp_fn(cotangent)`` takes a cotangent with ``out``'s structure and
        shapes (numbers are broadcast-free converted to ``out``'s dtype) and returns a tuple with
        one gradient per primal, each shaped like its primal. ``vjp_fn`` may be called many
        times; the recording is released when ``vjp_fn`` is garbage collected.

    Raises:
        TypeError: If ``fn`` is not callable or a primal or output is not floating point.
        ValueError: If a cotangent does not match ``out``'s structure or shape.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> out, vjp_fn = tapekit.vjp(lambda x, y: x * y, 3.0, 4.0)
        >>> [float(g) for g in vjp_fn(1.0)]
        [4.0, 3.0]
    """
    _args.check_callable(fn, "vjp")
    call_args, structs, sources = [], [], []
    seen: set[int] = set()
    for i, p in enumerate(primals):
        call_value, watched = _args.prepare(p, f"primal {i}", "vjp", seen)
        call_args.append(call_value)
        structs.append((call_value, len(watched)))
        sources.extend(watched)
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    with tape:
        tape.watch(sources)
        out = fn(*call_args)
    out = tf.nest.map_structure(lambda o: _args.as_output_tensor(o, fn, "vjp"), out)
    flat_out = tf.nest.flatten(out)

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        flat_c = _flatten_like(cotangent, out, "the cotangent", "vjp")
        cots = [
            _match_dtype_shape(
                c, o, "the cotangent" if len(flat_out) == 1 else f"cotangent {j}", "vjp"
            )
            for j, (c, o) in enumerate(zip(flat_c, flat_out))
        ]
        flat = tape.gradient(flat_out, sources, output_gradients=cots, unconnected_gradients=_ZERO)
        flat = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in flat]
        result, start = [], 0
        for struct, n in structs:
            part = flat[start : start + n]
            start += n
            nested = isinstance(struct, (dict, list, tuple))
            result.append(tf.nest.pack_sequence_as(struct, part) if nested else part[0])
        return tuple(result)

    vjp_fn.__name__ = vjp_fn.__qualname__ = f"vjp_of_{_args.fn_name(fn)}"
    return out, vjp_fn
