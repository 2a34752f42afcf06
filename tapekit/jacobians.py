"""Linearization transforms: jvp (forward mode), vjp (reverse mode) and the Jacobian family.

``jvp`` runs ``fn`` under ``tf.autodiff.ForwardAccumulator``; ``vjp`` records it on a
persistent ``tf.GradientTape``. Both accept nests of primals and keep their dtypes.
``jacobian`` and ``batch_jacobian`` stack all rows (or columns) of those products in one
vectorized pass, compiled and cached per function and input signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from . import _args, _compile, _missing, _tensors, _vectorize
from ._args import ArgNums
from .errors import describe_received

__all__ = ["batch_jacobian", "jacfwd", "jacobian", "jacrev", "jvp", "vjp"]

_ZERO = _tensors.ZERO
_NONE = _tensors.NONE


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
    primals = _check_primals(primals, "jvp")
    tangents = _check_primals(tangents, "jvp", "tangents")
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp needs one tangent per primal, but received {len(primals)} primals and "
            f"{len(tangents)} tangents."
        )
    wheres = [f"primal {i}" for i in range(len(primals))]
    call_args, watch, structs = _args.prepare_all(primals, wheres, "jvp")
    tans: list[tf.Tensor] = []
    start = 0
    for i, ((value, n), t) in enumerate(zip(structs, tangents)):
        flat_t = _flatten_like(t, value, f"tangent {i}", "jvp")
        for j, (w, ft) in enumerate(zip(watch[start : start + n], flat_t)):
            where = f"tangent {i}" if n == 1 else f"tangent {i} (leaf {j})"
            tans.append(_match_dtype_shape(ft, w, where, "jvp"))
        start += n

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
            gs = inner.gradient(flat_out, watch, output_gradients=us, unconnected_gradients=_ZERO)
            gs = [_tensors.dense(g) for g in gs]
        flat_t = outer.gradient(gs, us, output_gradients=tans, unconnected_gradients=_NONE)
        return out, flat_t, aux

    out, flat_t, aux = _vectorize.forward_or_reverse(forward, reverse)
    flat_out = tf.nest.flatten(out)
    positions = list(range(len(primals)))
    call = _compile.Call(call_args, {}, positions, watch, structs)
    retrace = _missing.retrace(fn, call, lambda o: tf.nest.flatten(split(o)[0]))
    names = lambda: _missing.labels(fn, positions, structs, wheres)  # noqa: E731
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
    call = _compile.Call(call_args, {}, positions, sources, structs)

    def select(o: Any) -> list[tf.Tensor]:
        o = _tensors.split_aux(o, fn, "vjp")[0] if has_aux else o
        return [_args.as_output_tensor(t, fn, "vjp") for t in tf.nest.flatten(o)]

    names = lambda: _missing.labels(fn, positions, structs, wheres)  # noqa: E731
    _missing.check(flat_out, sources, "vjp", names, _missing.retrace(fn, call, select))

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        flat_c = _flatten_like(cotangent, out, "the cotangent", "vjp")
        cots = [
            _match_dtype_shape(
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

    vjp_fn.__name__ = vjp_fn.__qualname__ = f"vjp_of_{_args.fn_name(fn)}"
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


# ---------------------------------------------------------------------------------------------
# jacobian and batch_jacobian: vectorized, compiled and cached (see _compile and _vectorize).


def _jacobian_core(
    single: bool, mode: str, chunk_size: int | None, batch: bool, has_aux: bool
) -> Callable:
    transform = "batch_jacobian" if batch else "jacobian"

    def core(user_fn: Callable, call: _compile.Call) -> Any:
        fn, plain_aux = _tensors.aux_splitter(user_fn, has_aux, transform)

        def outputs(out: Any) -> list[tf.Tensor]:
            return [_args.as_output_tensor(o, fn, transform) for o in tf.nest.flatten(out)]

        def record() -> tuple[tf.GradientTape, Any, list[tf.Tensor]]:
            tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
            with tape:
                tape.watch(call.sources)
                out = fn(*call.args, **call.kwargs)
            flat_out = outputs(out)
            _missing.check_call(fn, call, flat_out, outputs, transform)
            if batch:
                _vectorize.check_batch(call.sources, flat_out, fn)
            return tape, out, flat_out

        def reverse(recorded: tuple) -> tuple[Any, list]:
            tape, out, flat_out = recorded

            def vjp(cotangents: list[tf.Tensor]) -> list[Any]:
                return tape.gradient(
                    flat_out, call.sources, output_gradients=cotangents, unconnected_gradients=_ZERO
                )

            return out, _vectorize.reverse(
                vjp, flat_out, call.sources, batch=batch, chunk_size=chunk_size, what=transform
            )

        def forward() -> tuple[Any, list]:
            seen: list[Any] = []

            def jvp(tangents: list[tf.Tensor]) -> list[tf.Tensor]:
                with tf.autodiff.ForwardAccumulator(call.sources, tangents) as acc:
                    result = fn(*call.args, **call.kwargs)
                seen.append(result)
                jvps = [acc.jvp(o, unconnected_gradients=_ZERO) for o in outputs(result)]
                return [_vectorize.dense(t) for t in jvps]

            if _vectorize.size(call.sources, batch) == 0:
                seen.append(fn(*call.args, **call.kwargs))
            first = outputs(seen[0]) if seen else None
            blocks = _vectorize.forward(
                jvp, call.sources, first, batch=batch, chunk_size=chunk_size, what=transform
            )
            # forward mode gives zeros where a path is cut
            _missing.check_call(fn, call, outputs(seen[0]), outputs, transform)
            if batch:
                _vectorize.check_batch(call.sources, outputs(seen[0]), fn)
            if batch:  # TensorFlow's convention in every mode (see _interacting)
                blocks = _batch_convention(fn, call, outputs, blocks, lambda: reverse(record())[1])
            return seen[0], blocks

        recorded = None if mode == "fwd" else record()
        use_fwd = mode == "fwd"
        if mode == "auto":
            n_in = _vectorize.size(call.sources, batch)
            n_out = _vectorize.size(recorded[2], batch)
            use_fwd = None not in (n_in, n_out) and n_in < n_out
        if use_fwd:  # reverse mode where TensorFlow cannot run this fn in forward mode
            out, blocks = _vectorize.forward_or_reverse(
                forward, lambda: reverse(recorded or record())
            )
        else:
            out, blocks = reverse(recorded)
        rows = [_vectorize.pack_columns(row, call.structs, single) for row in blocks]
        result = tf.nest.pack_sequence_as(out, rows)
        return (result, plain_aux.get(call)) if has_aux else result

    return core


def _batch_convention(
    fn: Callable, call: _compile.Call, outputs: Callable, blocks: list, reverse: Callable
) -> list:
    """Forward-mode ``blocks`` of a batch Jacobian, or the reverse-mode ones if examples interact.

    When output example ``b`` depends on input example ``b' != b`` (batch normalization in
    training mode), forward mode would sum over the input batch and reverse mode over the
    output batch. tapekit keeps TensorFlow's ``batch_jacobian`` convention (reverse mode) in
    every mode: one probe tangent on example 0 finds the interaction, at the cost of one more
    forward pass, and then the reverse-mode blocks are computed instead.
    """
    probe = []
    for s in call.sources:
        dtype = _vectorize.src_dtype(s)
        inner = tf.shape(s)[1:]
        pattern = tf.reshape(
            tf.sin(tf.range(1, tf.reduce_prod(inner) + 1, dtype=tf.float32)), inner
        )
        mask = tf.one_hot(0, tf.shape(s)[0], dtype=tf.float32)
        mask = tf.reshape(mask, tf.concat([[-1], tf.ones_like(inner)], 0))
        probe.append(tf.cast(mask * pattern, dtype))
    with tf.autodiff.ForwardAccumulator(call.sources, probe) as acc:
        result = fn(*call.args, **call.kwargs)
    leaks = [
        tf.reduce_max(tf.abs(tf.cast(acc.jvp(o, unconnected_gradients=_ZERO)[1:], tf.float32)))
        for o in outputs(result)
    ]
    interacting = tf.reduce_max(tf.stack(leaks)) > 0.0
    if tf.executing_eagerly():
        return reverse() if bool(interacting) else blocks
    return tf.cond(interacting, reverse, lambda: blocks)


def _make(
    fn: Callable,
    argnums: ArgNums,
    mode: str,
    compile: bool,
    jit_compile: bool,
    chunk_size: int | None,
    batch: bool,
    has_aux: bool = False,
) -> Callable:
    transform = "batch_jacobian" if batch else "jacobian"
    _args.check_callable(fn, transform)
    nums, single = _args.normalize_argnums(argnums, transform)
    _compile.check_options(transform, mode, compile, jit_compile, chunk_size)
    core = _jacobian_core(single, mode, chunk_size, batch, has_aux)
    options = (nums, single, mode, chunk_size, has_aux)

    def jacobian_fn(*args: Any, **kwargs: Any) -> Any:
        call = _compile.make_call(fn, args, kwargs, nums, transform)
        return _compile.run(
            fn, transform, options, core, call, compile=compile, jit_compile=jit_compile
        )

    label = "_".join(str(a) for a in nums)
    jacobian_fn.__name__ = jacobian_fn.__qualname__ = (
        f"{transform}_of_{_args.fn_name(fn)}_wrt_{label}"
    )
    jacobian_fn.__doc__ = (
        f"{'Batched ' if batch else ''}Jacobian of `{_args.fn_name(fn)}` w.r.t. argument(s) "
        f"{nums}; see tapekit.{transform}."
    )
    jacobian_fn.__wrapped__ = fn
    return _compile.no_autograph(jacobian_fn)


def jacobian(
    fn: Callable,
    argnums: ArgNums = 0,
    *,
    mode: str = "auto",
    compile: bool = True,
    jit_compile: bool = False,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> Callable:
    """Make a function that returns the full Jacobian of ``fn``.

    All rows (reverse mode) or columns (forward mode) are computed in one vectorized pass, in a
    ``tf.function`` cached per ``fn``, options and input shapes/dtypes (one trace each).

    Args:
        fn: A function returning a float tensor or a nest of them.
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
            Differentiated arguments may be numbers, arrays, tensors, variables or nests.
        mode: ``"rev"`` (vector-Jacobian products, best when the output is smaller than the
            input), ``"fwd"`` (Jacobian-vector products, best for few inputs) or ``"auto"``,
            which picks forward mode when the input has fewer elements than the output. Where
            TensorFlow cannot run ``fn`` in forward mode (e.g. ``tf.map_fn``), reverse is used.
        compile: Run in a cached ``tf.function`` (default). ``False`` runs ``fn`` eagerly. As
            with ``tf.function``, Python values ``fn`` reads from its closure or attributes are
            fixed when it is traced (tensors and variables are read at each call).
        jit_compile: Compile with XLA as well.
        chunk_size: Compute at most this many rows/columns at once (bounds memory for large
            Jacobians); ``None`` computes them all at once.
        has_aux: If True, ``fn`` returns ``(out, aux)`` and the new function returns
            ``(jacobian, aux)`` (as ``jax.jacobian``); ``aux`` is a tensor or nest of tensors.

    Returns:
        A function with ``fn``'s signature. For an output ``out`` and an argument ``x`` the
        Jacobian has shape ``out.shape + x.shape`` and ``x``'s dtype rules (float64 in, float64
        out). Nested outputs give the output's structure whose leaves have the argument's
        structure (a tuple of them for tuple ``argnums``). Outputs that do not depend on an
        input give zeros; a path TensorFlow cannot differentiate (NumPy, an op without that
        gradient, an assignment) raises ``DisconnectedGradientError``.

    Raises:
        TypeError: If ``fn`` is not callable or ``argnums`` is not int(s) (at build time); if a
            differentiated argument or an output is not floating point (at call time).
        ValueError: If ``mode``/``chunk_size`` are invalid (at build time), or ``argnums`` is out
            of range (at call time).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> J = tapekit.jacobian(lambda x: x**2)(tf.constant([1.0, 2.0]))
        >>> J.numpy()
        array([[2., 0.],
               [0., 4.]], dtype=float32)
    """
    return _make(fn, argnums, mode, compile, jit_compile, chunk_size, False, has_aux)


def batch_jacobian(
    fn: Callable,
    argnums: ArgNums = 0,
    *,
    mode: str = "auto",
    compile: bool = True,
    jit_compile: bool = False,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> Callable:
    """Make a function that returns the per-example Jacobians of a batched ``fn``.

    ``fn`` must treat the leading axis as a batch: output example ``i`` depends only on input
    example ``i`` (like a Keras model without batch normalization in training mode). Then only
    the diagonal blocks of the full Jacobian are non-zero, and they are computed at the cost of
    one example's Jacobian. If examples interact (batch normalization in training mode), the
    result is not a Jacobian; it then follows TensorFlow's ``GradientTape.batch_jacobian``
    convention in every mode, block ``b`` = Σ_b' ∂out[b'] / ∂x[b] (forward mode detects the
    interaction with one probe tangent and computes those blocks in reverse mode). Use
    :func:`jacobian` for the full matrix.

    Args:
        fn: A function of batched tensors returning a batched float tensor or a nest of them.
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
        mode: ``"rev"``, ``"fwd"`` or ``"auto"`` as in :func:`jacobian` (sizes per example).
        compile: Run in a cached ``tf.function`` (default). ``False`` runs ``fn`` eagerly.
        jit_compile: Compile with XLA as well.
        chunk_size: Compute at most this many rows/columns at once (bounds memory).
        has_aux: If True, ``fn`` returns ``(out, aux)`` and the result is ``(blocks, aux)``.

    Returns:
        A function with ``fn``'s signature returning, for an output ``out`` of shape
        ``(batch,) + o`` and an argument ``x`` of shape ``(batch,) + i``, a tensor of shape
        ``(batch,) + o + i``; nests as in :func:`jacobian`.

    Raises:
        TypeError: As :func:`jacobian`.
        ValueError: As :func:`jacobian`, and if the inputs and outputs do not share one leading
            batch dimension.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        >>> tapekit.batch_jacobian(lambda x: x**2)(x).numpy()
        array([[[2., 0.],
                [0., 4.]],
        <BLANKLINE>
               [[6., 0.],
                [0., 8.]]], dtype=float32)
    """
    return _make(fn, argnums, mode, compile, jit_compile, chunk_size, True, has_aux)


def jacfwd(fn: Callable, argnums: ArgNums = 0, *, has_aux: bool = False) -> Callable:
    """The Jacobian of ``fn`` in forward mode, as ``jax.jacfwd``: ``jacobian(mode="fwd")``.

    Args:
        fn: A function returning a float tensor or a nest of them (``(out, aux)`` with
            ``has_aux``).
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
        has_aux: If True, the new function returns ``(jacobian, aux)``.

    Returns:
        The function of :func:`jacobian` (shape ``out.shape + x.shape``), computed column by
        column with Jacobian-vector products (best when the input is small), compiled and
        cached. Where TensorFlow cannot run ``fn`` in forward mode, reverse mode is used.

    Raises:
        TypeError: As :func:`jacobian`.
        ValueError: As :func:`jacobian`.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> tapekit.jacfwd(lambda x: tf.stack([x[0] * x[1], tf.sin(x[0])]))(
        ...     tf.constant([0.0, 2.0])).numpy()
        array([[2., 0.],
               [1., 0.]], dtype=float32)
    """
    return _make(fn, argnums, "fwd", True, False, None, False, has_aux)


def jacrev(fn: Callable, argnums: ArgNums = 0, *, has_aux: bool = False) -> Callable:
    """The Jacobian of ``fn`` in reverse mode, as ``jax.jacrev``: ``jacobian(mode="rev")``.

    Args:
        fn: A function returning a float tensor or a nest of them (``(out, aux)`` with
            ``has_aux``).
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
        has_aux: If True, the new function returns ``(jacobian, aux)``.

    Returns:
        The function of :func:`jacobian` (shape ``out.shape + x.shape``), computed row by row
        with vector-Jacobian products (best when the output is small), compiled and cached.

    Raises:
        TypeError: As :func:`jacobian`.
        ValueError: As :func:`jacobian`.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> J, aux = tapekit.jacrev(lambda x: (x**2, x + 1), has_aux=True)(tf.constant([1.0, 2.0]))
        >>> J.numpy(), aux.numpy()
        (array([[2., 0.],
               [0., 4.]], dtype=float32), array([2., 3.], dtype=float32))
    """
    return _make(fn, argnums, "rev", True, False, None, False, has_aux)


for _public in (jacobian, batch_jacobian, jacfwd, jacrev):
    _compile.no_autograph(_public)
