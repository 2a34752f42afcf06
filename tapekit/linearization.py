"""``linearize``: record ``fn`` once, then evaluate its Jacobian-vector products from the recording.

TensorFlow has no forward-mode recording that can be replayed, so the tangent map is taken from
the reverse-mode one: ``vjp(u) = Jᵀu`` is linear in ``u``, and ``J·t`` is the gradient of
``<Jᵀu, t>`` with respect to ``u`` (the "double VJP"). Each ``jvp_fn`` call runs two passes over
the recorded tape (a backward pass and its transpose) and never runs ``fn`` again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _tensors
from ._tangents import flatten_like as _flatten_like
from ._tangents import match_dtype_shape as _match_dtype_shape
from ._tensors import split_aux

__all__ = ["linearize"]


def linearize(fn: Callable, *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """Evaluate ``fn`` at ``primals`` and return its linear approximation there (JAX's linearize).

    ``fn`` runs once, on a persistent ``tf.GradientTape``; ``jvp_fn(*tangents)`` then gives the
    Jacobian-vector product ``J·tangents`` at ``primals`` from that recording, as many times as
    needed, without running ``fn`` again. It equals ``tapekit.jvp(fn, primals, tangents)[1]``.

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a float tensor or a
            nest of them (``(out, aux)`` with ``has_aux``).
        *primals: The point: numbers, arrays, tensors, variables or nests of them (Python
            numbers become float32 scalars).
        has_aux: If True, ``fn`` returns ``(out, aux)``; ``aux`` is returned as it is, not
            linearized.

    Returns:
        ``(out, jvp_fn)``, or ``(out, jvp_fn, aux)`` with ``has_aux``. ``jvp_fn`` takes one
        tangent per primal (same structure, shapes and dtypes) and returns the output tangent
        with ``out``'s structure, shapes and dtypes; outputs that do not depend on the primals
        get zeros. The recording is released when ``jvp_fn`` is garbage collected.

    Raises:
        TypeError: If ``fn`` is not callable, a primal or output is not floating point, or a
            tangent's dtype differs from its primal's.
        ValueError: If ``fn`` does not return a pair with ``has_aux``, or the tangents do not
            match the primals in number, structure or shape (when ``jvp_fn`` is called).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> out, f_jvp = tapekit.linearize(lambda x: tf.sin(x) * x, tf.constant(2.0))
        >>> float(f_jvp(tf.constant(1.0)))  # cos(2)·2 + sin(2)
        0.077...
    """
    _args.check_callable(fn, "linearize")
    wheres = [f"primal {i}" for i in range(len(primals))]
    call_args, sources, structs = _args.prepare_all(primals, wheres, "linearize")
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
    with tape:
        tape.watch(sources)
        result = fn(*call_args)
    out, aux = split_aux(result, fn, "linearize") if has_aux else (result, None)
    out = tf.nest.map_structure(lambda o: _args.as_output_tensor(o, fn, "linearize"), out)
    flat_out = tf.nest.flatten(out)

    def jvp_fn(*tangents: Any) -> Any:
        if len(tangents) != len(primals):
            raise ValueError(
                f"linearize: jvp_fn needs one tangent per primal ({len(primals)}), but received "
                f"{len(tangents)}. Pass them positionally, shaped like the primals."
            )
        flat_t: list[tf.Tensor] = []
        start = 0
        for i, ((value, n), t) in enumerate(zip(structs, tangents)):
            leaves = _flatten_like(t, value, f"tangent {i}", "linearize")
            for j, (w, leaf) in enumerate(zip(sources[start : start + n], leaves)):
                where = f"tangent {i}" if n == 1 else f"tangent {i} (leaf {j})"
                flat_t.append(_match_dtype_shape(leaf, w, where, "linearize"))
            start += n
        us = [tf.zeros_like(o) for o in flat_out]  # any value: Jᵀu is linear in u
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(us)
            vjps = tape.gradient(
                flat_out, sources, output_gradients=us, unconnected_gradients=_tensors.ZERO
            )
            dots = [tf.reduce_sum(tf.convert_to_tensor(g) * t) for g, t in zip(vjps, flat_t)]
        jt = outer.gradient(dots, us, unconnected_gradients=_tensors.ZERO)
        return tf.nest.pack_sequence_as(out, [tf.convert_to_tensor(g) for g in jt])

    jvp_fn.__name__ = jvp_fn.__qualname__ = f"linearized_{_args.fn_name(fn)}"
    return (out, jvp_fn, aux) if has_aux else (out, jvp_fn)
