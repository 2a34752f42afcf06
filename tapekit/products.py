"""Jacobian-vector and vector-Jacobian products in JAX's vocabulary: jvp and vjp.

``jvp`` runs ``fn`` under ``tf.autodiff.ForwardAccumulator`` (or, where TensorFlow cannot run
forward mode, computes the same product from two reverse passes); ``vjp`` records it on a
persistent ``tf.GradientTape``. Both accept nests of primals and keep their dtypes, and a path
TensorFlow cannot differentiate raises instead of giving zeros (see ``_missing``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from . import _args, _calls, _compile, _diagnose, _missing, _tangents, _tensors, _vectorize
from .errors import DisconnectedGradientError

__all__ = ["jvp", "vjp"]

_NONE = _tensors.NONE


def jvp(
    fn: Callable, primals: Sequence[Any], tangents: Sequence[Any], *, has_aux: bool = False
) -> tuple[Any, ...]:
    """Evaluate ``fn`` and its Jacobian-vector product (forward mode).

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a tensor or a nest of
            tensors (or ``(out, aux)`` with ``has_aux``).
        primals: A tuple (or list) with the point at which to evaluate, one entry per argument;
            entries may be numbers, arrays, tensors, variables or nests of them.
        tangents: The direction: same structure, shapes and dtypes as ``primals`` (Python numbers
            and arrays are converted to the primal's dtype).
        has_aux: If True, ``fn`` returns ``(out, aux)``; ``aux`` is returned untouched.

    Returns:
        ``(out, tangent_out)``, or ``(out, tangent_out, aux)`` with ``has_aux``: ``fn(*primals)``
        and J·tangents, with the structure, shapes and dtypes of ``out``. Outputs that do not
        depend on the primals get zero tangents. Where TensorFlow cannot run ``fn`` in forward
        mode (``tf.map_fn`` inside a ``tf.function``), the same product is computed in reverse
        mode (the gradient of a vector-Jacobian product).

    Raises:
        TypeError: If ``fn`` is not callable, ``primals``/``tangents`` are not tuples, a primal is
            not floating point, or a tangent's dtype differs from its primal's.
        ValueError: If ``tangents`` do not match ``primals`` in length, structure or shape, or
            ``fn`` does not return a pair with ``has_aux``.
        DisconnectedGradientError: If an output is computed from a primal along a path that
            TensorFlow cannot differentiate (NumPy, an op without that gradient, an assignment).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> out, t = tapekit.jvp(lambda x: x**2, (3.0,), (1.0,))
        >>> float(out), float(t)
        (9.0, 6.0)
    """
    _args.check_callable(fn, "jvp")
    primals = _tangents.check_primals(primals, "jvp")
    tangents = _tangents.check_primals(tangents, "jvp", "tangents")
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp needs one tangent per primal, but received {len(primals)} primals and "
            f"{len(tangents)} tangents."
        )
    wheres = [f"primal {i}" for i in range(len(primals))]
    call_args, watch, structs = _args.prepare_all(primals, wheres, "jvp")
    tans = _tangents.tangents_for(structs, watch, tangents, "jvp")

    def split(out: Any) -> tuple[Any, Any]:
        if has_aux:
            out, aux = _tensors.split_aux(out, fn, "jvp")
        else:
            aux = None
        return tf.nest.map_structure(lambda o: _args.as_output_tensor(o, fn, "jvp"), out), aux

    def forward() -> tuple[Any, list[Any], Any]:
        with tf.autodiff.ForwardAccumulator(watch, tans) as acc:
            out, aux = split(fn(*call_args))
        return out, [acc.jvp(o, unconnected_gradients=_NONE) for o in tf.nest.flatten(out)], aux

    def reverse() -> tuple[Any, list[Any], Any]:  # d/du <vjp(u), t>: J·t by two reverse passes
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as inner:
            inner.watch(watch)
            out, aux = split(fn(*call_args))
        flat_out = tf.nest.flatten(out)
        us = [tf.zeros_like(o) for o in flat_out]
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(us)
            gs = inner.gradient(
                flat_out, watch, output_gradients=us, unconnected_gradients=_tensors.ZERO
            )
            gs = [_tensors.dense(g) for g in gs]
        flat_t = outer.gradient(gs, us, output_gradients=tans, unconnected_gradients=_NONE)
        return out, flat_t, aux

    positions = list(range(len(primals)))
    call = _calls.Call(call_args, {}, positions, watch, structs)
    retrace = _missing.retrace(fn, call, lambda o: tf.nest.flatten(split(o)[0]))
    names = lambda: _missing.labels(fn, positions, structs, wheres)  # noqa: E731
    try:
        out, flat_t, aux = _vectorize.forward_or_reverse(forward, reverse)
    except LookupError as exc:  # an op without a registered gradient: name it, as grad does
        if isinstance(exc, DisconnectedGradientError):
            raise
        found = retrace(list(range(len(watch)))) or [
            (j, "no_gradient_op", {"op": _diagnose.no_gradient_op(None, [], [], exc)[0]})
            for j in range(len(watch))
        ]
        raise _missing.error("jvp", names(), found, watch) from exc
    flat_out = tf.nest.flatten(out)
    _missing.check(flat_out, watch, "jvp", names, retrace)  # forward mode gives zeros for a cut
    flat_t = [tf.zeros_like(o) if t is None else t for t, o in zip(flat_t, flat_out)]
    tangent_out = tf.nest.pack_sequence_as(out, flat_t)
    return (out, tangent_out, aux) if has_aux else (out, tangent_out)


def vjp(fn: Callable, *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Evaluate ``fn`` and return a function for its vector-Jacobian products (reverse mode).

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a tensor or a nest of
            tensors (or ``(out, aux)`` with ``has_aux``).
        *primals: The point at which to evaluate: numbers, arrays, tensors, variables or nests.
        has_aux: If True, ``fn`` returns ``(out, aux)``; ``aux`` is returned untouched.

    Returns:
        ``(out, vjp_fn)``, or ``(out, vjp_fn, aux)`` with ``has_aux``. ``vjp_fn(cotangent)``
        takes a cotangent with ``out``'s structure and shapes (numbers are converted to
        ``out``'s dtype) and returns a tuple with one gradient per primal, each shaped like its
        primal (zeros for a primal ``out`` does not use). ``vjp_fn`` may be called many times;
        the recording is released when ``vjp_fn`` is garbage collected.

    Raises:
        TypeError: If ``fn`` is not callable or a primal or output is not floating point.
        ValueError: If a cotangent does not match ``out``'s structure or shape.
        DisconnectedGradientError: (from ``vjp_fn``) if ``out`` is computed from a primal along
            a path TensorFlow cannot differentiate (NumPy, an op without that gradient, an
            assignment).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> out, vjp_fn = tapekit.vjp(lambda x, y: x * y, 3.0, 4.0)
        >>> [float(g) for g in vjp_fn(1.0)]
        [4.0, 3.0]
    """
    _args.check_callable(fn, "vjp")
    wheres = [f"primal {i}" for i in range(len(primals))]
    call_args, sources, structs = _args.prepare_all(primals, wheres, "vjp")
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    with tape:
        tape.watch(sources)
        out = fn(*call_args)
    aux = None
    if has_aux:
        out, aux = _tensors.split_aux(out, fn, "vjp")
    out = tf.nest.map_structure(lambda o: _args.as_output_tensor(o, fn, "vjp"), out)
    flat_out = tf.nest.flatten(out)
    positions = list(range(len(primals)))
    call = _calls.Call(call_args, {}, positions, sources, structs)

    def select(o: Any) -> list[tf.Tensor]:
        o = _tensors.split_aux(o, fn, "vjp")[0] if has_aux else o
        return [_args.as_output_tensor(t, fn, "vjp") for t in tf.nest.flatten(o)]

    names = lambda: _missing.labels(fn, positions, structs, wheres)  # noqa: E731
    _missing.check(flat_out, sources, "vjp", names, _missing.retrace(fn, call, select))

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        flat_c = _tangents.flatten_like(cotangent, out, "the cotangent", "vjp")
        cots = [
            _tangents.match_dtype_shape(
                c, o, "the cotangent" if len(flat_out) == 1 else f"cotangent {j}", "vjp"
            )
            for j, (c, o) in enumerate(zip(flat_c, flat_out))
        ]
        flat = tape.gradient(flat_out, sources, output_gradients=cots, unconnected_gradients=_NONE)
        flat = [
            _tensors.zeros_like_source(s) if g is None else _tensors.dense(g)
            for g, s in zip(flat, sources)
        ]
        return tuple(_args.unflatten(flat, structs))

    _args.finish(
        vjp_fn, fn, f"vjp_of_{_args.fn_name(fn)}", f"VJP of `{_args.fn_name(fn)}`; see tapekit.vjp."
    )
    del vjp_fn.__wrapped__  # vjp_fn takes a cotangent, not fn's arguments
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


for _public in (jvp, vjp):
    _compile.no_autograph(_public)
