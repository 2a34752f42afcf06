"""First-order transforms in JAX's vocabulary: grad, value_and_grad, partials, partial, derivative.

Each transform takes a function and returns a new function. All of them record ``fn`` on a
``tf.GradientTape`` and ask it for the gradient; they work eagerly and inside ``tf.function``.
A gradient that TensorFlow would report as ``None`` (the output does not depend on the input)
is returned as zeros.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _compile, _missing, _tensors, _variables
from ._args import ArgNums
from .errors import DisconnectedGradientError

__all__ = ["derivative", "grad", "partial", "partials", "value_and_grad"]

_ZERO = _tensors.ZERO
_dense = _tensors.dense


def _value_and_grad_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    argnums: tuple[int, ...],
    has_aux: bool,
    transform: str,
    where: Callable[[int], str] | None = None,
    owner: Callable | None = None,
    others: list[Any] | None = None,
) -> tuple[Any, Any, list[Any]]:
    """Run ``fn`` on a tape; return ``(value, aux, [gradient nest per argnum])``.

    ``where(i)`` names argument ``i`` in messages; ``owner`` is the user function behind ``fn``
    and ``others`` the values it receives besides ``args`` (for a wrapper such as the one of
    :func:`partials`).
    """
    positions = _args.resolve_argnums(argnums, len(args), fn, transform)
    unique = list(dict.fromkeys(positions))  # argnums=(0, 0) differentiates argument 0 once
    args = list(args)
    where = where or functools.partial(_args.describe_arg, fn)
    wheres = [functools.partial(where, i) for i in unique]  # formatted on error only
    if others is None:
        others = [a for i, a in enumerate(args) if i not in unique] + list(kwargs.values())
    values, sources, structs = _args.prepare_all(
        [args[i] for i in unique], wheres, transform, others
    )
    for i, value in zip(unique, values):
        args[i] = value
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(sources)
        out = fn(*args, **kwargs)

    def select(out: Any) -> list[tf.Tensor]:
        value = _args.as_output_tensor(
            _tensors.split_aux(out, fn, transform)[0] if has_aux else out, fn, transform
        )
        _args.check_scalar(value, fn, transform)
        return [value]

    aux = _tensors.split_aux(out, fn, transform)[1] if has_aux else None
    (value,) = select(out)

    def names() -> list[str]:
        return [w() + p for w, (v, _) in zip(wheres, structs) for p in _args.leaf_paths(v)]

    flat = [_tensors.dense(g) for g in _gradient(tape, [value], sources, transform, names)]
    call = _compile.Call(args, kwargs, unique, sources, structs)
    _missing.check([value], sources, transform, names, _missing.retrace(fn, call, select, owner))
    if any(g is None for g in flat):  # an unused input (the check found no cut): zeros
        flat = [_tensors.zeros_like_source(s) if g is None else g for g, s in zip(flat, sources)]
    grads = _args.unflatten(flat, structs)
    return value, aux, [grads[unique.index(i)] for i in positions]


def _gradient(
    tape: tf.GradientTape,
    targets: list,
    sources: list,
    transform: str,
    names: Callable[[], list[str]],
) -> list[Any]:
    """``tape.gradient`` with ``None`` for missing gradients; an op without a registered
    gradient raises the diagnosed error (a ``LookupError`` too) instead of TensorFlow's."""
    try:
        return tape.gradient(targets, sources, unconnected_gradients=_tensors.NONE)
    except LookupError as exc:
        if isinstance(exc, DisconnectedGradientError):
            raise
        raise _missing.no_gradient_error(tape, targets, sources, exc, transform, names()) from exc


def _first_gradient(
    tape: tf.GradientTape,
    out: tf.Tensor,
    src: Any,
    fn1: Callable,
    owner: Callable,
    transform: str,
    where: str,
) -> tf.Tensor:
    """The gradient of ``out = fn1(src)`` w.r.t. ``src``: zeros if unused, an error if cut."""
    names = lambda: [where]  # noqa: E731
    g = _gradient(tape, out, [src], transform, names)[0]
    call = _compile.Call([src], {}, [0], [src], [(src, 1)])
    select = lambda o: [_args.as_output_tensor(o, fn1, transform)]  # noqa: E731
    _missing.check([out], [src], transform, names, _missing.retrace(fn1, call, select, owner))
    return _tensors.zeros_like_source(src) if g is None else _dense(g)


def _is_nest(x: Any) -> bool:
    return isinstance(x, (dict, list, tuple))


def _finish(transformed: Callable, fn: Callable, name: str, doc: str) -> Callable:
    transformed.__name__ = transformed.__qualname__ = name
    transformed.__doc__ = doc
    transformed.__wrapped__ = fn  # inspect.signature(transformed) shows fn's parameters
    return transformed


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
        value, aux, grads = _value_and_grad_call(fn, args, kwargs, nums, has_aux, "value_and_grad")
        g = grads[0] if single else tuple(grads)
        return ((value, aux), g) if has_aux else (value, g)

    name = f"value_and_grad_of_{_args.fn_name(fn)}_wrt_{_wrt_label(nums)}"
    return _finish(
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
        _, aux, grads = _value_and_grad_call(fn, args, kwargs, nums, has_aux, "grad")
        g = grads[0] if single else tuple(grads)
        return (g, aux) if has_aux else g

    name = f"grad_of_{_args.fn_name(fn)}_wrt_{_wrt_label(nums)}"
    return _finish(
        grad_fn,
        fn,
        name,
        f"Gradient of `{_args.fn_name(fn)}` w.r.t. argument(s) {nums}; see tapekit.grad.",
    )


def _signature(fn: Callable, transform: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{transform} names parameters, but the signature of `{_args.fn_name(fn)}` cannot be "
            f"read. Wrap it: tapekit.{transform}(lambda x, y: {_args.fn_name(fn)}(x, y), ...)."
        ) from exc


def _named_params(sig: inspect.Signature) -> list[str]:
    return [p.name for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]


def _check_names(names: list[str], sig: inspect.Signature, fn: Callable, transform: str) -> None:
    valid = _named_params(sig)
    for n in names:
        if n not in valid:
            raise ValueError(
                f"{transform}: `{_args.fn_name(fn)}` has no parameter named {n!r}; valid names are "
                f"{valid}. Use one of those names (or a position)."
            )


def _bind(sig: inspect.Signature, fn: Callable, args: tuple, kwargs: dict, transform: str) -> Any:
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"{transform}: cannot call `{_args.fn_name(fn)}{sig}` with these arguments: {exc}."
        ) from exc
    bound.apply_defaults()
    return bound


def partials(fn: Callable, wrt: str | list[str] | tuple[str, ...] | None = None) -> Callable:
    """Make a function that returns every partial derivative of ``fn``, keyed by parameter name.

    Args:
        fn: A function of named parameters returning a scalar float tensor.
        wrt: The parameter names to differentiate (a name or a list of names). ``None`` means
            every parameter except ``*args``, ``**kwargs`` and those whose value is ``None``.

    Returns:
        A function with ``fn``'s signature (arguments positional or by keyword; defaults are
        used for omitted ones) returning ``{name: ∂fn/∂name}``, each shaped like its argument.

    Raises:
        TypeError: If ``fn`` is not callable, ``wrt`` is not names, or (at call time) a
            differentiated argument is not floating point.
        ValueError: If a name in ``wrt`` is not a parameter of ``fn``, or ``fn``'s output is not
            a scalar.

    Example:
        >>> import tapekit
        >>> d = tapekit.partials(lambda x, y: x**2 * y + y + 2)(3.0, 4.0)
        >>> {k: float(v) for k, v in d.items()}
        {'x': 24.0, 'y': 10.0}
    """
    _args.check_callable(fn, "partials")
    sig = _signature(fn, "partials")
    explicit = wrt is not None
    if wrt is None:
        names = [
            p.name
            for p in sig.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
    elif isinstance(wrt, str):
        names = [wrt]
    elif isinstance(wrt, (list, tuple)) and wrt and all(isinstance(n, str) for n in wrt):
        names = list(wrt)
    else:
        raise TypeError(
            f"partials needs `wrt` to be None, a parameter name or a list of names, but received "
            f"{wrt!r}. Example: tapekit.partials(f, wrt=['x', 'y'])."
        )
    _check_names(names, sig, fn, "partials")
    names = list(dict.fromkeys(names))

    def partials_fn(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = _bind(sig, fn, args, kwargs, "partials")
        # With wrt=None, parameters left at None (e.g. `name=None` of TF ops) are not inputs.
        active = names if explicit else [n for n in names if bound.arguments[n] is not None]
        rest = [v for n, v in bound.arguments.items() if n not in active]

        def with_values(*values: Any) -> Any:
            bound.arguments.update(zip(active, values))
            return fn(*bound.args, **bound.kwargs)

        with_values.__name__ = _args.fn_name(fn)
        _, _, grads = _value_and_grad_call(
            with_values,
            tuple(bound.arguments[n] for n in active),
            {},
            tuple(range(len(active))),
            False,
            "partials",
            where=lambda i: f"parameter `{active[i]}`",
            owner=fn,
            others=rest,
        )
        return dict(zip(active, grads))

    return _finish(
        partials_fn,
        fn,
        f"partials_of_{_args.fn_name(fn)}",
        f"Partial derivatives of `{_args.fn_name(fn)}` w.r.t. {names}; see tapekit.partials.",
    )


def partial(fn: Callable, *wrt: str | int) -> Callable:
    """Make a function that returns a (mixed, higher-order) partial derivative of ``fn``.

    ``partial(f, "x")`` is ∂f/∂x, ``partial(f, "x", "y")`` is ∂²f/∂x∂y and
    ``partial(f, "x", "x", "y")`` is ∂³f/∂x²∂y: fn is differentiated w.r.t. the parameters in the
    order given (nested tapes inside).

    Args:
        fn: A function returning a scalar float tensor.
        *wrt: Parameter names, or positions of positional parameters; at least one. Repeats give
            higher orders.

    Returns:
        A function with ``fn``'s signature returning the derivative. For scalar parameters it is a
        scalar; for tensor parameters its shape is the concatenation of the differentiated
        parameters' shapes in order (like ``tapekit.hessian``).

    Raises:
        TypeError: If ``fn`` is not callable, ``wrt`` holds something else than names/ints, or (at
            call time) a differentiated argument is not a single floating-point value.
        ValueError: If ``wrt`` is empty or names an unknown parameter, or ``fn``'s output is not a
            scalar.

    Example:
        >>> import tapekit
        >>> f = lambda x, y: x**3 * y**2
        >>> float(tapekit.partial(f, "x", "x", "y")(1.0, 2.0))  # 6 x * 2 y
        24.0
    """
    _args.check_callable(fn, "partial")
    if not wrt:
        raise ValueError(
            "partial needs at least one parameter to differentiate, e.g. tapekit.partial(f, 'x') "
            "or tapekit.partial(f, 0)."
        )
    sig = _signature(fn, "partial")
    positional = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    names: list[str] = []
    for w in wrt:
        if isinstance(w, int) and not isinstance(w, bool):
            if not -len(positional) <= w < len(positional):
                raise ValueError(
                    f"partial: position {w} is out of range; `{_args.fn_name(fn)}` has "
                    f"{len(positional)} positional parameter(s) {positional}. Use 0.."
                    f"{len(positional) - 1} or a name."
                )
            names.append(positional[w % len(positional)])
        elif isinstance(w, str):
            names.append(w)
        else:
            raise TypeError(
                f"partial takes parameter names or positions, but received {w!r}. Example: "
                f"tapekit.partial(f, 'x', 'y')."
            )
    _check_names(names, sig, fn, "partial")
    unique = list(dict.fromkeys(names))

    def partial_fn(*args: Any, **kwargs: Any) -> tf.Tensor:
        bound = _bind(sig, fn, args, kwargs, "partial")
        sources = {}
        seen: set[int] = set()
        for n in unique:
            call_value, watched = _args.prepare(
                bound.arguments[n], f"parameter `{n}`", "partial", seen
            )
            if _is_nest(call_value):
                raise TypeError(
                    f"partial differentiates single tensors, but parameter `{n}` is a "
                    f"{type(call_value).__name__}. Use tapekit.partials or tapekit.grad for nests."
                )
            bound.arguments[n] = call_value
            sources[n] = watched[0]

        def level(k: int) -> tf.Tensor:
            if k == 0:
                value = _args.as_output_tensor(fn(*bound.args, **bound.kwargs), fn, "partial")
                _args.check_scalar(value, fn, "partial")
                return value
            src = sources[names[k - 1]]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(src)
                out = level(k - 1)
            if k == 1:  # the first derivative: None is an unused input or a cut path
                name = names[0]

                def with_value(v: Any) -> Any:
                    bound.arguments[name] = v
                    return fn(*bound.args, **bound.kwargs)

                with_value.__name__ = _args.fn_name(fn)
                where = f"parameter `{name}`"
                return _first_gradient(tape, out, src, with_value, fn, "partial", where)
            if out.shape.rank == 0:
                return _dense(tape.gradient(out, src, unconnected_gradients=_ZERO))
            return tape.jacobian(out, src, unconnected_gradients=_ZERO)

        return level(len(names))

    label = "_".join(names)
    return _finish(
        partial_fn,
        fn,
        f"partial_of_{_args.fn_name(fn)}_wrt_{label}",
        f"∂^{len(names)} {_args.fn_name(fn)} / ∂{' ∂'.join(names)}; see tapekit.partial.",
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
                return _first_gradient(tape, out, src, fn, fn, "derivative", "the points `x`")
            return _dense(tape.gradient(out, src, unconnected_gradients=_ZERO))

        return level(order)

    result = _finish(
        derivative_fn,
        fn,
        f"derivative_{order}_of_{_args.fn_name(fn)}",
        f"Elementwise derivative of order {order} of `{_args.fn_name(fn)}`.",
    )
    # derivative_fn takes one argument `x` whatever fn's signature is (tf.function binds by it)
    del result.__wrapped__
    return result
