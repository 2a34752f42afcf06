"""The Jacobian family: jacobian (and its two modes jacfwd / jacrev) and batch_jacobian.

All rows (vector-Jacobian products, reverse mode) or columns (Jacobian-vector products, forward
mode) are stacked in one vectorized pass, compiled and cached per function and input signature
(see ``_compile`` and ``_vectorize``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _calls, _compile, _missing, _tensors, _vectorize
from ._args import ArgNums

__all__ = ["batch_jacobian", "jacfwd", "jacobian", "jacrev"]

_NONE = _tensors.NONE


# ---------------------------------------------------------------------------------------------
# jacobian and batch_jacobian: vectorized, compiled and cached (see _compile and _vectorize).


def _jacobian_core(
    single: bool, mode: str, chunk_size: int | None, batch: bool, has_aux: bool
) -> Callable:
    transform = "batch_jacobian" if batch else "jacobian"

    def core(user_fn: Callable, call: _calls.Call) -> Any:
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
                    flat_out,
                    call.sources,
                    output_gradients=cotangents,
                    unconnected_gradients=_tensors.ZERO,
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
                jvps = [acc.jvp(o, unconnected_gradients=_tensors.ZERO) for o in outputs(result)]
                return [_tensors.dense(t) for t in jvps]

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
    fn: Callable, call: _calls.Call, outputs: Callable, blocks: list, reverse: Callable
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
        tf.reduce_max(
            tf.abs(tf.cast(acc.jvp(o, unconnected_gradients=_tensors.ZERO)[1:], tf.float32))
        )
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
        call = _calls.make_call(fn, args, kwargs, nums, transform)
        return _compile.run(
            fn, transform, options, core, call, compile=compile, jit_compile=jit_compile
        )

    label = "_".join(str(a) for a in nums)
    _args.finish(
        jacobian_fn,
        fn,
        f"{transform}_of_{_args.fn_name(fn)}_wrt_{label}",
        f"{'Batched ' if batch else ''}Jacobian of `{_args.fn_name(fn)}` w.r.t. argument(s) "
        f"{nums}; see tapekit.{transform}.",
    )
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
        compile: Run in a cached ``tf.function`` (default). ``False`` runs ``fn`` eagerly.
            Tensors and variables are read at each call, and a closure or global name of ``fn``
            rebound to another object is traced again; Python values read through attributes
            are fixed when it is traced, as with ``tf.function``.
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
