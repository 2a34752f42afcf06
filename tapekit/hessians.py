"""Second-order transforms: hessian (the full matrix of second derivatives) and hvp (H·v).

``hessian`` differentiates the gradient once more, all rows at once: reverse-over-reverse
(``tape.gradient`` recorded on an outer tape, rows vectorized by pfor) or forward-over-reverse
(``ForwardAccumulator`` over the tape gradient, columns vectorized). ``hvp`` is one
forward-over-reverse pass and never forms the matrix. Both are compiled and cached like
:func:`tapekit.jacobian`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from . import _args, _calls, _compile, _missing, _tangents, _tensors, _vectorize
from ._args import ArgNums

__all__ = ["hessian", "hvp"]


def _scalar(fn: Callable, call: _calls.Call, transform: str) -> tf.Tensor:
    def select(out: Any) -> list[tf.Tensor]:
        value = _args.as_output_tensor(out, fn, transform)
        _args.check_scalar(value, fn, transform)
        return [value]

    (value,) = select(fn(*call.args, **call.kwargs))
    _missing.check_call(fn, call, [value], select, transform)  # once per trace when compiled
    return value


def dense_gradient(fn: Callable, call: _calls.Call, what: str) -> list[tf.Tensor]:
    """The dense gradient of scalar ``fn`` w.r.t. ``call.sources`` (recorded by enclosing tapes)."""
    with tf.GradientTape(watch_accessed_variables=False) as inner:
        inner.watch(call.sources)
        value = _scalar(fn, call, what)
    grads = inner.gradient(value, call.sources, unconnected_gradients=_tensors.ZERO)
    return [_tensors.dense(g) for g in grads]


def _hessian_core(single: bool, mode: str, chunk_size: int | None, has_aux: bool) -> Callable:
    def core(user_fn: Callable, call: _calls.Call) -> Any:
        fn, plain_aux = _tensors.aux_splitter(user_fn, has_aux, "hessian")
        sources = call.sources

        def forward() -> list[list[tf.Tensor]]:
            def jvp(tangents: list[tf.Tensor]) -> list[tf.Tensor]:
                with tf.autodiff.ForwardAccumulator(sources, tangents) as acc:
                    grads = dense_gradient(fn, call, "hessian")
                return [
                    _tensors.dense(acc.jvp(g, unconnected_gradients=_tensors.ZERO)) for g in grads
                ]

            outputs = [tf.convert_to_tensor(s) for s in sources]
            return _vectorize.forward(jvp, sources, outputs, chunk_size=chunk_size, what="hessian")

        def reverse() -> list[list[tf.Tensor]]:
            outer = tf.GradientTape(persistent=True, watch_accessed_variables=False)
            with outer:
                outer.watch(sources)
                grads = dense_gradient(fn, call, "hessian")

            def vjp(cotangents: list[tf.Tensor]) -> list[Any]:
                return outer.gradient(
                    grads, sources, output_gradients=cotangents, unconnected_gradients=_tensors.ZERO
                )

            return _vectorize.reverse(vjp, grads, sources, chunk_size=chunk_size, what="hessian")

        blocks = _vectorize.forward_or_reverse(forward, reverse) if mode == "fwd" else reverse()
        rows = [_vectorize.pack_columns(row, call.structs, single) for row in blocks]
        result = _vectorize.pack_columns(rows, call.structs, single)
        return (result, plain_aux.get(call)) if has_aux else result

    return core


def hessian(
    fn: Callable,
    argnums: ArgNums = 0,
    *,
    mode: str = "auto",
    compile: bool = True,
    jit_compile: bool = False,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> Callable:
    """Make a function that returns the Hessian (all second derivatives) of a scalar ``fn``.

    Args:
        fn: A function returning a scalar float tensor.
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
            Differentiated arguments may be numbers, arrays, tensors, variables or nests.
        mode: How the gradient is differentiated again: ``"rev"`` (reverse-over-reverse),
            ``"fwd"`` (forward-over-reverse, or reverse where TensorFlow cannot run forward
            mode) or ``"auto"`` (currently ``"rev"``, the faster of the two on CPU). Both give
            the same matrix up to rounding.
        compile: Run in a ``tf.function`` cached per ``fn``, options and input shapes/dtypes
            (default). ``False`` runs ``fn`` eagerly. Tensors and variables are read at each
            call, and a closure or global name of ``fn`` rebound to another object is traced
            again; Python values read through attributes are fixed when it is traced, as with
            ``tf.function``: pass changing numbers as arguments.
        jit_compile: Compile with XLA as well.
        chunk_size: Compute at most this many rows at once (bounds memory for large inputs).
        has_aux: If True, ``fn`` returns ``(value, aux)`` and the new function returns
            ``(hessian, aux)`` (as ``jax.hessian``); ``aux`` is a tensor or nest of tensors.

    Returns:
        A function with ``fn``'s signature. For an argument ``x`` the Hessian has shape
        ``x.shape + x.shape`` and ``x``'s dtype. For a nest (or tuple ``argnums``) it is the
        nest of blocks: ``H[a][b]`` has shape ``a.shape + b.shape`` and holds
        ``∂²fn / ∂a ∂b``. Inputs the output does not depend on get zeros.

    Raises:
        TypeError: If ``fn`` is not callable or ``argnums`` is not int(s) (at build time); if a
            differentiated argument or the output is not floating point (at call time).
        ValueError: If ``mode``/``chunk_size`` are invalid (at build time); if ``argnums`` is out
            of range or the output is not a scalar (at call time).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> f = lambda x: x[0] ** 2 * x[1] + x[1] ** 3
        >>> tapekit.hessian(f)(tf.constant([1.0, 2.0])).numpy()  # [[2 y, 2 x], [2 x, 6 y]]
        array([[ 4.,  2.],
               [ 2., 12.]], dtype=float32)
    """
    _args.check_callable(fn, "hessian")
    nums, single = _args.normalize_argnums(argnums, "hessian")
    _compile.check_options("hessian", mode, compile, jit_compile, chunk_size)
    core = _hessian_core(single, "fwd" if mode == "fwd" else "rev", chunk_size, has_aux)
    options = (nums, single, mode, chunk_size, has_aux)

    def hessian_fn(*args: Any, **kwargs: Any) -> Any:
        call = _calls.make_call(fn, args, kwargs, nums, "hessian")
        return _compile.run(
            fn, "hessian", options, core, call, compile=compile, jit_compile=jit_compile
        )

    label = "_".join(str(a) for a in nums)
    _args.finish(
        hessian_fn,
        fn,
        f"hessian_of_{_args.fn_name(fn)}_wrt_{label}",
        f"Hessian of `{_args.fn_name(fn)}` w.r.t. argument(s) {nums}; see tapekit.hessian.",
    )
    return _compile.no_autograph(hessian_fn)


def hvp_at(fn: Callable, call: _calls.Call) -> Callable[[list[tf.Tensor]], list[tf.Tensor]]:
    """``tangents -> H·tangents`` at one point, for many products in one graph (internal).

    The loss and its gradient are computed once, here, on a persistent tape; each product is
    then one reverse pass over that gradient (``H v`` is the vector-Jacobian product of the
    gradient, H being symmetric), which repeats neither the forward nor the first backward
    pass. A Lanczos loop built on it costs about 40% less per product than repeating
    :func:`hvp` (benchmarks/curvature.py's MLP). The products may be traced inside a
    ``tf.while_loop`` of the same graph. Raises at trace time where TensorFlow has no
    second-order reverse gradient for an op; :func:`hvp_products` is the fallback.
    """
    sources = call.sources
    with tf.GradientTape(watch_accessed_variables=False, persistent=True) as outer:
        outer.watch(sources)
        grads = dense_gradient(fn, call, "hvp")

    def products(tangents: list[tf.Tensor]) -> list[tf.Tensor]:
        out = outer.gradient(
            grads, sources, output_gradients=tangents, unconnected_gradients=_tensors.ZERO
        )
        return [_tensors.dense(p) for p in out]

    products.gradient = grads  # type: ignore[attr-defined]  # (the Lanczos loop reports its norms)
    return products


def hvp_products(fn: Callable, call: _calls.Call, tangents: list[tf.Tensor]) -> list[tf.Tensor]:
    """``H·tangents``, one dense tensor per source of ``call`` (the core of :func:`hvp`, also
    traced inside the Lanczos loop of :mod:`tapekit._lanczos`): forward-over-reverse, or,
    where TensorFlow cannot run forward mode over the gradient, reverse over it
    (:func:`hvp_at`)."""

    def forward() -> list[tf.Tensor]:
        with tf.autodiff.ForwardAccumulator(call.sources, tangents) as acc:
            grads = dense_gradient(fn, call, "hvp")
        return [_tensors.dense(acc.jvp(g, unconnected_gradients=_tensors.ZERO)) for g in grads]

    return _vectorize.forward_or_reverse(forward, lambda: hvp_at(fn, call)(tangents))


def _hvp_core(fn: Callable, call: _calls.Call) -> tuple[Any, ...]:
    products = hvp_products(fn, call, call.extra)
    return _vectorize.pack_columns(products, call.structs, single=False)


def hvp(
    fn: Callable,
    primals: Sequence[Any],
    tangents: Sequence[Any],
    *,
    compile: bool = True,
    jit_compile: bool = False,
) -> tuple[Any, ...]:
    """Hessian-vector product ``H·v`` of a scalar ``fn``, without forming ``H``.

    One forward-over-reverse pass: the gradient is recorded on a ``tf.GradientTape`` inside a
    ``tf.autodiff.ForwardAccumulator`` carrying ``tangents``. It costs a small multiple of one
    gradient, whatever the size of the input. Where TensorFlow cannot run forward mode over the
    gradient (e.g. ``tf.cond`` or ``tf.map_fn`` inside a ``tf.function``), the same product is
    computed reverse-over-reverse, as the gradient of ``<grad fn, v>``; H is never formed.
    Compiled and cached like :func:`hessian`.

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a scalar float tensor.
        primals: A tuple (or list) with the point, one entry per argument of ``fn``; entries may
            be numbers, arrays, tensors, variables or nests of them. All are differentiated.
        tangents: The vector ``v``: same structure, shapes and dtypes as ``primals``.
        compile: Run in a cached ``tf.function`` (default). ``False`` runs eagerly.
        jit_compile: Compile with XLA as well.

    Returns:
        A tuple with one entry per primal, shaped like that primal (same nest and dtype):
        ``sum_b H[a][b] · v[b]`` for each argument ``a``.

    Raises:
        TypeError: If ``fn`` is not callable, ``primals``/``tangents`` are not tuples, a primal
            or the output is not floating point, or a tangent's dtype differs from its primal's.
        ValueError: If ``tangents`` do not match ``primals`` in length, structure or shape, or
            the output is not a scalar.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> f = lambda x: tf.reduce_sum(x ** 3)  # H = diag(6 x)
        >>> (hv,) = tapekit.hvp(f, (tf.constant([1.0, 2.0]),), (tf.constant([1.0, 1.0]),))
        >>> hv.numpy()
        array([ 6., 12.], dtype=float32)
    """
    _args.check_callable(fn, "hvp")
    if jit_compile and not compile:
        _compile.check_options("hvp", "auto", compile, jit_compile, None)
    primals = _tangents.check_primals(primals, "hvp")
    tangents = _tangents.check_primals(tangents, "hvp", "tangents")
    if len(primals) != len(tangents):
        raise ValueError(
            f"hvp needs one tangent per primal, but received {len(primals)} primals and "
            f"{len(tangents)} tangents."
        )
    call = _calls.make_call(fn, tuple(primals), {}, tuple(range(len(primals))), "hvp")
    call.extra.extend(_tangents.tangents_for(call.structs, call.sources, tangents, "hvp"))
    return _compile.run(fn, "hvp", (), _hvp_core, call, compile=compile, jit_compile=jit_compile)


for _public in (hessian, hvp):
    _compile.no_autograph(_public)
