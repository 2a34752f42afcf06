"""JAX's batching transform: vmap over TensorFlow's pfor, and per-example gradients.

``vmap(fn, in_axes, out_axes)`` runs ``fn``, written for one example, on every slice of the
mapped axes at once (see :mod:`tapekit._mapping`). Eager calls are compiled and cached per
function, options and input signature like the other vectorized transforms; inside a
``tf.function`` the work is inlined into the caller's graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _calls, _compile, _mapping, _norms, _tensors
from ._args import fn_name
from ._mapping import Axes
from .errors import describe_received

__all__ = ["per_example_grad_norms", "per_example_grads", "vmap"]

_INSTANCES = itertools.count()  # a unique cache key per per_example_grads function


def vmap(
    fn: Callable,
    in_axes: Axes = 0,
    out_axes: Axes = 0,
    *,
    chunk_size: int | None = None,
    fallback: str = "warn",
) -> Callable:
    """Make a function that maps ``fn`` over an axis of its arguments, vectorized (JAX's vmap).

    ``fn`` is written for one example; the new function runs it on every slice along the mapped
    axes at once, by TensorFlow's pfor (as ``tf.vectorized_map``), and stacks the results along
    ``out_axes``. It composes with tapekit's transforms both ways (``vmap(grad(f))``,
    ``jacobian(vmap(f))``, ``vmap(hessian(f))``). Called eagerly it runs in a ``tf.function``
    cached per ``fn``, options and input shapes/dtypes; inside your ``tf.function`` it is
    inlined into your graph.

    Args:
        fn: A function of one example returning a tensor or a nest of tensors.
        in_axes: Which axis of each positional argument to map: an int (for every argument),
            ``None`` (broadcast: every example sees the whole value), or a tuple with one entry
            per positional argument, each an int, ``None`` or a nest matching that argument
            (a prefix of it). Negative axes count from the end. Keyword arguments are mapped
            over axis 0. Mapped values must be tensors, arrays or variables; broadcast ones may
            be anything.
        out_axes: Where the mapped axis goes in each output: an int, ``None`` (the output is the
            same for every example and is returned once) or a nest matching the output.
        chunk_size: Vectorize at most this many examples at once (bounds memory); ``None``
            vectorizes all of them.
        fallback: ``"warn"`` (default): ops without a pfor rule run one example at a time in a
            ``tf.while_loop`` (same result, slower) and a warning names their op types once;
            so does all of ``fn`` where pfor fails outright (e.g. on the gradient of a
            ``tf.cond``, as AutoGraph makes of a Python ``if`` on a tensor; ``tf.where``
            vectorizes). ``"error"``: raise ``ValueError`` instead.

    Returns:
        A function taking ``fn``'s arguments with the extra mapped axes. Each output leaf gets
        the mapped axis (of the common mapped size ``B``) at its ``out_axes`` position; dtypes
        are those ``fn`` returns (float64 stays float64).

    Raises:
        TypeError: If ``fn`` is not callable, or ``in_axes``/``out_axes`` are not ints/None or
            nests of them (at build time).
        ValueError: If ``chunk_size``/``fallback`` are invalid (at build time); at call time if
            the mapped axes differ in size, an axis is out of range (also ``out_axes`` on a
            scalar output), the ``in_axes``/``out_axes`` nest does not match the arguments or
            outputs, no argument is mapped, an output with ``out_axes=None`` depends on a
            mapped input, or (``fallback="error"``) an op cannot be vectorized.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> dot = lambda a, b: tf.reduce_sum(a * b)
        >>> x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
        >>> tapekit.vmap(dot, in_axes=(0, None))(x, tf.constant([1.0, 10.0])).numpy()
        array([21., 43.], dtype=float32)
        >>> tapekit.vmap(tapekit.grad(lambda w: tf.reduce_sum(w**3)))(x).numpy()  # 3 w²
        array([[ 3., 12.],
               [27., 48.]], dtype=float32)
    """
    _args.check_callable(fn, "vmap")
    _mapping.check_options(in_axes, out_axes, chunk_size, fallback)
    name = f"vmap({fn_name(fn)})"

    def core(f: Callable, call: _compile.Call) -> Any:
        return _mapping.map_call(
            fn, f, call.args, call.kwargs, in_axes, out_axes, chunk_size, fallback, name
        )

    options = (repr(in_axes), repr(out_axes), chunk_size, fallback)

    def vmap_fn(*args: Any, **kwargs: Any) -> Any:
        # Variables are passed as their values: as an argument of the compiled function a
        # variable would be aliased with the same variable read from fn's closure, and a later
        # call with another variable of that shape would be read in its place.
        args, kwargs = tf.nest.map_structure(_value_of_variable, (args, kwargs))
        call = _calls.make_call(fn, args, kwargs, (), "vmap")
        return _compile.run(fn, "vmap", options, core, call, compile=True, jit_compile=False)

    vmap_fn.__name__ = vmap_fn.__qualname__ = f"vmap_of_{fn_name(fn)}"
    vmap_fn.__doc__ = f"`{fn_name(fn)}` mapped over in_axes={in_axes!r}; see tapekit.vmap."
    vmap_fn.__wrapped__ = fn
    return _compile.no_autograph(vmap_fn)


_compile.no_autograph(vmap)


def _value_of_variable(leaf: Any) -> Any:
    return leaf if _tensors.variable(leaf) is None else tf.convert_to_tensor(leaf)


# ---------------------------------------------------------------------------------------------
# Per-example gradients of stateful (Keras) code: the parameters are variables, not arguments.


def _variables_of(variables: Any, transform: str) -> Any:
    """A Keras model/layer -> its trainable variables; a nest of variables is checked."""
    if hasattr(variables, "trainable_variables") and not isinstance(variables, (list, tuple, dict)):
        found = list(variables.trainable_variables)
        if not found:
            raise ValueError(
                f"{transform}: {type(variables).__name__} `{getattr(variables, 'name', '')}` has "
                f"no trainable variables yet. Build it first (call it once on a batch), or pass "
                f"the variables themselves."
            )
        return found
    leaves = tf.nest.flatten(variables)
    if not leaves:
        raise ValueError(
            f"{transform} needs at least one variable, but received an empty "
            f"{type(variables).__name__}. Pass a Keras model/layer or a nest of tf.Variables."
        )
    for path, leaf in zip(_args.leaf_paths(variables), leaves):
        if _tensors.variable(leaf) is None:
            raise TypeError(
                f"{transform} needs `variables` to be a Keras model/layer or a nest of "
                f"tf.Variables / Keras variables, but variables{path} is "
                f"{describe_received(leaf)}. For gradients w.r.t. tensor arguments use "
                f"tapekit.vmap(tapekit.grad(f), in_axes=...)."
            )
        if not _tensors.variable(leaf).dtype.is_floating:
            raise TypeError(
                f"{transform}: variables{path} has dtype {_tensors.variable(leaf).dtype.name}, "
                f"which has no gradient. Pass floating-point variables only."
            )
    return variables


def _example_loss(loss_fn: Callable, args: tuple, kwargs: dict, transform: str) -> tf.Tensor:
    """The loss of one example (given as a batch of one)."""
    value = _args.as_output_tensor(loss_fn(*args, **kwargs), loss_fn, transform)
    if value.shape.rank is None or value.shape.num_elements() not in (None, 1):
        raise ValueError(
            f"{transform} needs `{fn_name(loss_fn)}` to return one loss per example, shape "
            f"(batch,), but on a batch of one example it returned shape "
            f"{tuple(value.shape) if value.shape.rank is not None else 'unknown'}. Return the "
            f"unreduced losses (e.g. reduction=None in a Keras loss)."
        )
    return tf.reshape(value, [])


def _per_example(
    per_example_loss: Callable,
    variables: Any,
    in_axes: Axes,
    chunk_size: int | None,
    fallback: str,
    norms: bool,
) -> Callable:
    transform = "per_example_grad_norms" if norms else "per_example_grads"
    _args.check_callable(per_example_loss, transform)
    _mapping.check_options(in_axes, 0, chunk_size, fallback)
    variables = _variables_of(variables, transform)
    flat_vars = [_tensors.variable(v) for v in tf.nest.flatten(variables)]
    structure = tf.nest.map_structure(lambda _: 0, variables)
    what = f"{transform}({fn_name(per_example_loss)})"

    def core(loss_fn: Callable, call: _compile.Call) -> Any:
        # The variables are captured by reference, not passed as arguments of the compiled
        # function: tf.function would alias an argument with the same variable read from
        # loss_fn's closure, and a later call with other variables of the same shapes would
        # read those in its place. So each per_example_grads function has its own cache entry.
        sources = flat_vars

        def example(*args: Any, **kwargs: Any) -> Any:
            graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
            start = len(graph.get_operations()) if graph is not None else 0
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(sources)
                loss = _example_loss(loss_fn, args, kwargs, transform)
            if norms:  # dense layers without their per-example gradient matrices
                new_ops = graph.get_operations()[start:] if graph is not None else []
                return _norms.example_norm(tape, loss, sources, new_ops)
            grads = tape.gradient(loss, sources, unconnected_gradients=_tensors.ZERO)
            return [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices from tf.gather

        out = _mapping.map_call(
            per_example_loss,
            example,
            call.args,
            call.kwargs,
            in_axes,
            0,
            chunk_size,
            fallback,
            what,
            keepdims=True,
        )
        return out if norms else tf.nest.pack_sequence_as(structure, out)

    options = (repr(in_axes), chunk_size, fallback, next(_INSTANCES))

    def per_example_fn(*batch: Any, **kwargs: Any) -> Any:
        call = _compile.Call(list(batch), dict(kwargs), [], [], [], [])
        return _compile.run(
            per_example_loss, transform, options, core, call, compile=True, jit_compile=False
        )

    per_example_fn.__name__ = per_example_fn.__qualname__ = (
        f"{transform}_of_{fn_name(per_example_loss)}"
    )
    per_example_fn.__wrapped__ = per_example_loss
    return _compile.no_autograph(per_example_fn)


def per_example_grads(
    per_example_loss: Callable,
    variables: Any,
    *,
    in_axes: Axes = 0,
    chunk_size: int | None = None,
    fallback: str = "warn",
) -> Callable:
    """Make a function that returns each example's gradient w.r.t. ``variables``.

    For stateful (Keras) code, where the parameters are variables rather than arguments: the
    equivalent of ``jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))``. Every example runs as a
    batch of one through ``per_example_loss``, vectorized over the batch by :func:`vmap`, so
    layers that mix examples (batch normalization in training mode) see one example at a time.

    Args:
        per_example_loss: ``per_example_loss(*batch) -> losses`` of shape ``(batch,)``: one
            unreduced loss per example (e.g. a Keras loss with ``reduction=None``).
        variables: A Keras model or layer (its trainable variables are used), or a nest
            (list / tuple / dict) of ``tf.Variable``\\ s or Keras variables.
        in_axes: Which arguments carry the batch, as in :func:`vmap` (default: axis 0 of all).
        chunk_size: Vectorize at most this many examples at once (bounds memory).
        fallback: ``"warn"`` or ``"error"`` when an op cannot be vectorized, as in :func:`vmap`.

    Returns:
        A function of the batch returning, for each variable of shape ``s``, its per-example
        gradients of shape ``(batch,) + s`` and the variable's dtype, in the nest of
        ``variables`` (a list for a model or layer). Unused variables get zeros.

    Raises:
        TypeError: If ``per_example_loss`` is not callable or ``variables`` holds something
            that is not a float variable (at build time).
        ValueError: If a model has no variables yet or the options are invalid (at build
            time); if ``per_example_loss`` does not return one loss per example, or the
            batch arguments differ in size (at call time).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> w = tf.Variable([1.0, 2.0])
        >>> loss = lambda x: tf.reduce_sum(w * x, axis=1) ** 2  # per example: (w·x)²
        >>> x = tf.constant([[1.0, 0.0], [0.0, 1.0]])
        >>> tapekit.per_example_grads(loss, [w])(x)[0].numpy()  # 2 (w·x) x
        array([[2., 0.],
               [0., 4.]], dtype=float32)
    """
    return _per_example(per_example_loss, variables, in_axes, chunk_size, fallback, norms=False)


def per_example_grad_norms(
    per_example_loss: Callable,
    variables: Any,
    *,
    in_axes: Axes = 0,
    chunk_size: int | None = None,
    fallback: str = "warn",
) -> Callable:
    """Make a function that returns the L2 norm of each example's gradient w.r.t. ``variables``.

    As :func:`per_example_grads`, but each example's gradient is reduced to its global norm
    (over all variables) inside the vectorized loop, so the function returns ``(batch,)``
    numbers instead of ``batch`` copies of the parameters. For a dense layer's kernel and bias
    (a variable used once, in a matrix product or a bias add) the per-example gradient is
    never formed: its norm is ``|x|·|∂loss/∂z|`` from the layer's input ``x`` and output
    ``z``. Other variables get their gradients formed (with ``chunk_size``, at most that many
    examples at a time). Used to find mislabelled examples or to clip per example.

    Args:
        per_example_loss: ``per_example_loss(*batch) -> losses`` of shape ``(batch,)``.
        variables: A Keras model or layer, or a nest of ``tf.Variable``\\ s / Keras variables.
        in_axes: Which arguments carry the batch, as in :func:`vmap` (default: axis 0 of all).
        chunk_size: Compute at most this many examples' gradients at once (bounds memory).
        fallback: ``"warn"`` or ``"error"`` when an op cannot be vectorized, as in :func:`vmap`.

    Returns:
        A function of the batch returning a ``(batch,)`` tensor: ``sqrt(sum over variables of
        the squared per-example gradient)``, in the variables' dtype.

    Raises:
        TypeError: As :func:`per_example_grads`.
        ValueError: As :func:`per_example_grads`.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> w = tf.Variable([3.0, 4.0])
        >>> loss = lambda x: tf.reduce_sum(w * x, axis=1)  # gradient of example i: x[i]
        >>> x = tf.constant([[3.0, 4.0], [1.0, 0.0]])
        >>> tapekit.per_example_grad_norms(loss, [w])(x).numpy()
        array([5., 1.], dtype=float32)
    """
    return _per_example(per_example_loss, variables, in_axes, chunk_size, fallback, norms=True)


for _public in (per_example_grads, per_example_grad_norms):
    _compile.no_autograph(_public)
