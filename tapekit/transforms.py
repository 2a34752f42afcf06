"""First-order transforms in JAX's vocabulary: grad, value_and_grad and derivative.

Each transform takes a function and returns a new function. All of them record ``fn`` on a
``tf.GradientTape`` and ask it for the gradient; they work eagerly and inside ``tf.function``.
A gradient that TensorFlow would report as ``None`` is a zero when the output does not use the
input, and an error naming the cause when the path was cut (NumPy, an op without that gradient,
an assignment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _grads, _tensors, _variables
from ._args import ArgNums

__all__ = ["derivative", "grad", "value_and_grad"]

_dense = _tensors.dense


def _wrt_label(argnums: tuple[int, ...]) -> str:
    return "_".join(str(a) for a in argnums)


def value_and_grad(
    fn: Callable,
    argnums: ArgNums = 0,
    *,
    has_aux: bool = False,
    variables: _variables.Variables | None = None,
) -> Callable:
    """Make a function that returns ``fn``'s value and its gradient.

    Args:
        fn: A function returning a scalar float tensor (or ``(scalar, aux)`` with ``has_aux``).
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
        has_aux: If True, ``fn`` returns ``(value, aux)`` and ``aux`` is passed through untouched.
        variables: Differentiate w.r.t. these variables instead of ``argnums``: a Keras
            layer/model or ``tf.Module`` (its trainable variables, looked up after ``fn`` ran,
            so a layer built by that call counts), a list of variables, or a function returning
            one of those. ``argnums`` is then not used.

    Returns:
        A function with ``fn``'s signature returning ``(value, grads)``, or
        ``((value, aux), grads)`` with ``has_aux``. ``grads`` is shaped like ``args[argnums]``
        (same nest and dtype) for an int ``argnums``, and a tuple of those for a tuple; with
        ``variables``, a dict ``{variable path: gradient}``. Inputs the value does not depend on
        get zeros.

    Raises:
        TypeError: At build time if ``fn`` is not callable or ``argnums`` is not int(s); at call
            time if a differentiated argument is not floating point or the output is not a float.
        ValueError: At call time if ``argnums`` is out of range, the output is not a scalar, or
            ``variables`` holds no variables (e.g. a layer that was never built).
        DisconnectedGradientError: If the output is computed from an input along a path that
            TensorFlow cannot differentiate (NumPy, an op without that gradient, an assignment).

    Example:
        >>> import tapekit
        >>> value, g = tapekit.value_and_grad(lambda x, y: x**2 * y)(3.0, 2.0)
        >>> float(value), float(g)
        (18.0, 12.0)
    """
    _args.check_callable(fn, "value_and_grad")
    nums, single = _args.normalize_argnums(argnums, "value_and_grad")

    _variables.check(variables, "value_and_grad")

    def value_and_grad_fn(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if variables is not None:
            value, aux, g = _variables.value_and_grad(
                fn, args, kwargs, variables, has_aux, "value_and_grad"
            )
            return ((value, aux), g) if has_aux else (value, g)
        value, aux, grads = _grads.value_and_grad_call(
            fn, args, kwargs, nums, has_aux, "value_and_grad"
        )
        g = grads[0] if single else tuple(grads)
        return ((value, aux), g) if has_aux else (value, g)

    name = f"value_and_grad_of_{_args.fn_name(fn)}_wrt_{_wrt_label(nums)}"
    return _args.finish(
        value_and_grad_fn,
        fn,
        name,
        f"Value and gradient of `{_args.fn_name(fn)}` "
        f"w.r.t. argument(s) {nums}; see tapekit.value_and_grad.",
    )


def grad(
    fn: Callable,
    argnums: ArgNums = 0,
    *,
    has_aux: bool = False,
    variables: _variables.Variables | None = None,
) -> Callable:
    """Make a function that returns the gradient of ``fn``'s scalar output.

    Args:
        fn: A function returning a scalar float tensor (or ``(scalar, aux)`` with ``has_aux``).
        argnums: Which positional argument(s) to differentiate: an int, or a tuple of ints.
        has_aux: If True, ``fn`` returns ``(value, aux)`` and the new function returns
            ``(grads, aux)``.
        variables: Differentiate w.r.t. these variables instead of ``argnums`` (see
            :func:`value_and_grad`): a Keras layer/model, a ``tf.Module``, a list of variables
            or a function returning one; the gradient is a dict keyed by variable path.

    Returns:
        A function with ``fn``'s signature. For an int ``argnums`` it returns one gradient shaped
        like that argument (same nest and dtype: float64 in, float64 out); for a tuple, a tuple of
        them; with ``variables``, ``{variable path: gradient}``. Python numbers are treated as
        float32 scalars. Inputs the output does not depend on get zeros, never ``None``.

    Raises:
        TypeError: At build time if ``fn`` is not callable or ``argnums`` is not int(s); at call
            time if a differentiated argument is integer/bool or the output is not a float.
        ValueError: At call time if ``argnums`` is out of range, the output is not a scalar, or
            ``variables`` holds no variables (e.g. a layer that was never built).
        DisconnectedGradientError: If the output is computed from an input along a path that
            TensorFlow cannot differentiate (NumPy, an op without that gradient, an assignment).

    Example:
        >>> import tensorflow as tf, tapekit
        >>> x = tf.Variable(3.0)
        >>> float(tapekit.grad(lambda x: x**2)(x))  # dy/dx = 2x
        6.0
        >>> dx, dy = tapekit.grad(lambda x, y: x**2 * y + y + 2, argnums=(0, 1))(3.0, 4.0)
        >>> float(dx), float(dy)
        (24.0, 10.0)
        >>> import keras
        >>> layer = keras.layers.Dense(1, kernel_initializer="ones", name="d")  # not built yet
        >>> g = tapekit.grad(lambda x: tf.reduce_sum(layer(x)), variables=layer)(tf.ones([2, 3]))
        >>> {k: v.shape for k, v in g.items()}
        {'d/kernel': TensorShape([3, 1]), 'd/bias': TensorShape([1])}
    """
    _args.check_callable(fn, "grad")
    nums, single = _args.normalize_argnums(argnums, "grad")

    _variables.check(variables, "grad")

    def grad_fn(*args: Any, **kwargs: Any) -> Any:
        if variables is not None:
            _, aux, g = _variables.value_and_grad(fn, args, kwargs, variables, has_aux, "grad")
            return (g, aux) if has_aux else g
        _, aux, grads = _grads.value_and_grad_call(fn, args, kwargs, nums, has_aux, "grad")
        g = grads[0] if single else tuple(grads)
        return (g, aux) if has_aux else g

    name = f"grad_of_{_args.fn_name(fn)}_wrt_{_wrt_label(nums)}"
    return _args.finish(
        grad_fn,
        fn,
        name,
        f"Gradient of `{_args.fn_name(fn)}` w.r.t. argument(s) {nums}; see tapekit.grad.",
    )


def derivative(fn: Callable[[tf.Tensor], tf.Tensor], order: int = 1) -> Callable:
    """Make a function giving the elementwise ``order``-th derivative of a scalar function.

    ``fn`` must act elementwise (like ``tf.tanh`` or ``lambda x: x**3 - x``): output element i
    depends only on input element i. Then ``derivative(fn, k)(xs)[i]`` is ``fn⁽ᵏ⁾(xs[i])``, which
    is what you plot next to ``fn``.

    TensorFlow's gradient of ``x**n`` divides by ``x``, so derivatives of order >= n of a power
    are NaN at exactly 0; write ``x * x * x`` (or ``tf.square``) where that point matters.

    Args:
        fn: An elementwise function of one tensor.
        order: The derivative order, an int >= 0 (0 gives ``fn`` itself).

    Returns:
        A function of one argument (a number, list of numbers, array or tensor of points)
        returning a tensor of the same shape and dtype.

    Raises:
        TypeError: If ``fn`` is not callable, ``order`` is not an int, or the points are not
            floating point.
        ValueError: If ``order`` is negative.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> tapekit.derivative(lambda x: x**3, 2)([1.0, 2.0]).numpy()  # 6x
        array([ 6., 12.], dtype=float32)
    """
    _args.check_callable(fn, "derivative")
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(
            f"derivative needs an int `order`, but received {order!r}. Example: order=2."
        )
    if order < 0:
        raise ValueError(f"derivative needs order >= 0, but received order={order}.")

    def derivative_fn(x: Any) -> tf.Tensor:
        if isinstance(x, (list, tuple)):
            x = tf.convert_to_tensor(x)  # keeps float64 elements' dtype
            if not x.dtype.is_floating:  # Python numbers are float32 points
                x = tf.cast(x, tf.float32)
        x, watched = _args.prepare(x, "the points `x`", "derivative")
        src = watched[0]

        def level(k: int) -> tf.Tensor:
            if k == 0:
                return _args.as_output_tensor(fn(x), fn, "derivative")
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(src)
                out = level(k - 1)
            if k == 1:
                return _grads.first_gradient(tape, out, src, fn, fn, "derivative", "the points `x`")
            return _dense(tape.gradient(out, src, unconnected_gradients=_tensors.ZERO))

        return level(order)

    result = _args.finish(
        derivative_fn,
        fn,
        f"derivative_{order}_of_{_args.fn_name(fn)}",
        f"Elementwise derivative of order {order} of `{_args.fn_name(fn)}`.",
    )
    # derivative_fn takes one argument `x` whatever fn's signature is (tf.function binds by it)
    del result.__wrapped__
    return result
