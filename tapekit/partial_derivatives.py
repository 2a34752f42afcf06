"""Derivatives by parameter name: partials (all first partials) and partial (mixed, higher).

Both bind the call to ``fn``'s signature and differentiate on the shared path of
``tapekit.grad`` (see ``_grads``), so unused parameters get zeros and cut paths raise.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _grads, _tensors

__all__ = ["partial", "partials"]


def _is_nest(x: Any) -> bool:
    return isinstance(x, (dict, list, tuple))


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
        _, _, grads = _grads.value_and_grad_call(
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

    return _args.finish(
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
                return _grads.first_gradient(tape, out, src, with_value, fn, "partial", where)
            if out.shape.rank == 0:
                return _tensors.dense(tape.gradient(out, src, unconnected_gradients=_tensors.ZERO))
            return tape.jacobian(out, src, unconnected_gradients=_tensors.ZERO)

        return level(len(names))

    label = "_".join(names)
    return _args.finish(
        partial_fn,
        fn,
        f"partial_of_{_args.fn_name(fn)}_wrt_{label}",
        f"∂^{len(names)} {_args.fn_name(fn)} / ∂{' ∂'.join(names)}; see tapekit.partial.",
    )
