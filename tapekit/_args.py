"""Turning user arguments into watched float tensors: nests, argnums, names and checks.

Shared by every transform. Validation happens in two phases: ``check_callable`` and
``normalize_argnums`` when a transform is built, the rest when it is called.
"""

from __future__ import annotations

import collections
import inspect
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from . import _tensors
from .errors import describe_received

Nest = Any
"""A tensor-like leaf, or a dict / list / tuple (nested arbitrarily) of them."""

ArgNums = int | Sequence[int]

_EagerTensor = tf.__internal__.EagerTensor  # not type(tf.constant(...)): importing must not
# start TF's runtime (logical devices and MultiWorkerMirroredStrategy are set up after imports)


def fn_name(fn: Callable) -> str:
    """The readable name of a user function, for messages and generated ``__name__``s."""
    name = getattr(fn, "__name__", None) or getattr(type(fn), "__name__", "fn")
    if name.startswith("tf__"):  # the copy AutoGraph made of the user's function
        name = name[4:]
    return "lambda" if name == "<lambda>" else name


def check_callable(fn: object, transform: str) -> None:
    """Raise ``TypeError`` when a transform is built over something that is not callable."""
    if not callable(fn):
        raise TypeError(
            f"{transform} needs a callable `fn`, but received {describe_received(fn)}. "
            f"Pass the function itself, e.g. tapekit.{transform}(f), not f(x)."
        )


def normalize_argnums(argnums: object, transform: str) -> tuple[tuple[int, ...], bool]:
    """Validate ``argnums`` at build time. Returns ``(argnums as a tuple, was a single int)``."""
    if _is_index(argnums):
        return (operator.index(argnums),), True
    if isinstance(argnums, (tuple, list)) and argnums and all(_is_index(a) for a in argnums):
        return tuple(operator.index(a) for a in argnums), False
    raise TypeError(
        f"{transform} needs `argnums` to be an int or a non-empty tuple of ints, but received "
        f"{argnums!r}. Use e.g. argnums=0 or argnums=(0, 1)."
    )


def _is_index(a: object) -> bool:
    """An int or NumPy integer, but not a bool."""
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def resolve_argnums(
    argnums: tuple[int, ...], nargs: int, fn: Callable, transform: str
) -> list[int]:
    """Check ``argnums`` against the number of positional arguments of a call; make them >= 0."""
    out = []
    for a in argnums:
        if not -nargs <= a < nargs:
            valid = f"0..{nargs - 1}" if nargs else "none (the call had no positional arguments)"
            raise ValueError(
                f"{transform}: argnums={a} is out of range for a call of `{fn_name(fn)}` with "
                f"{nargs} positional argument(s); valid argnums are {valid}. Pass the "
                f"argument positionally, or change argnums."
            )
        out.append(a % nargs)
    return out


def param_names(fn: Callable) -> list[str] | None:
    """Names of ``fn``'s positional parameters, or ``None`` when they cannot be read."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


def describe_arg(fn: Callable, i: int) -> str:
    """``argument 0 (`x`)`` for messages."""
    names = param_names(fn)
    if names is not None and i < len(names):
        return f"argument {i} (`{names[i]}`)"
    return f"argument {i}"


Where = str | Callable[[], str]
"""A description of an argument for messages, or a function making it (called only on error)."""


def _where_text(where: Where, path: str) -> str:
    return (where() if callable(where) else where) + path


def _leaf_to_tensor(x: Any, where: Where, path: str, transform: str) -> tuple[Any, Any]:
    """Convert one differentiated leaf. Returns ``(value passed to fn, value to watch)``."""
    if isinstance(x, (tf.Tensor, tf.Variable)):
        if x.dtype.is_floating:
            return x, x
        dtype = x.dtype
    elif (inner := _tensors.variable(x)) is not None:
        # A Keras 3 variable: pass it to fn as it is, watch the tf.Variable behind it.
        if inner.dtype.is_floating:
            return x, inner
        dtype = inner.dtype
    elif isinstance(x, bool) or isinstance(x, np.bool_):
        dtype = tf.bool
    elif isinstance(x, (np.ndarray, np.generic)):  # before float: np.float64 is a float
        try:
            dtype = tf.as_dtype(x.dtype)
        except TypeError:
            dtype = x.dtype
        if isinstance(dtype, tf.DType) and dtype.is_floating:
            t = tf.convert_to_tensor(x)
            return t, t
    elif isinstance(x, (int, float)):
        t = tf.constant(float(x), tf.float32)
        return t, t
    else:
        raise TypeError(
            f"{transform} can only differentiate with respect to floating-point numbers, arrays, "
            f"tensors or variables (or dicts/lists/tuples of them), but "
            f"{_where_text(where, path)} is "
            f"{describe_received(x)}. Pass a float value there, or move it out of argnums/wrt."
        )
    name = getattr(dtype, "name", str(dtype))
    if getattr(dtype, "is_complex", False):
        raise TypeError(
            f"{transform} differentiates real floating-point values, but "
            f"{_where_text(where, path)} is complex ({describe_received(x)}). Differentiate the "
            f"real and imaginary parts as two float arguments (tf.math.real / tf.math.imag)."
        )
    raise TypeError(
        f"{transform} needs floating-point inputs at differentiated positions, but "
        f"{_where_text(where, path)} has "
        f"dtype {name} ({describe_received(x)}); integer and bool values have no gradient. "
        f"Cast it first, e.g. tf.cast(x, tf.float32), or pass 3.0 instead of 3."
    )


def _like_dict(like: dict, items: dict) -> dict:
    """``items`` as a dict of the same type as ``like`` (OrderedDict, defaultdict, ...)."""
    if type(like) is dict:
        return items
    if isinstance(like, collections.defaultdict):
        return type(like)(like.default_factory, items)
    return type(like)(items)


def _map_with_path(fn: Callable[[Any, str], Any], struct: Any, path: str) -> Any:
    if isinstance(struct, dict):
        items = {k: _map_with_path(fn, v, f"{path}[{k!r}]") for k, v in struct.items()}
        return _like_dict(struct, items)
    if isinstance(struct, tuple) and hasattr(struct, "_fields"):  # namedtuple
        return type(struct)(
            *(_map_with_path(fn, v, f"{path}.{f}") for f, v in zip(struct._fields, struct))
        )
    if isinstance(struct, (list, tuple)):
        return type(struct)(_map_with_path(fn, v, f"{path}[{i}]") for i, v in enumerate(struct))
    return fn(struct, path)


def prepare(
    value: Nest, where: Where, transform: str, seen: set[int] | None = None
) -> tuple[Nest, list[Any]]:
    """Turn a differentiated argument into ``(value to pass to fn, flat list of values to watch)``.

    Python numbers become float32 scalars, NumPy arrays become tensors of their own dtype, tensors
    and variables are kept (so float64 in gives float64 out). Integer/bool leaves raise
    ``TypeError`` naming ``where`` (and the path inside a nest).

    ``seen`` (shared by all differentiated arguments of one call) holds the ids of the tensors
    already watched: a tensor met a second time is replaced by a ``tf.identity`` copy, so each
    position gets its own partial derivative (as in JAX), not the total derivative.
    """
    # Fast path: the common single float tensor.
    if type(value) is _EagerTensor or isinstance(value, tf.Tensor):
        if value.dtype.is_floating:
            value = _distinct(value, seen)
            return value, [value]

    def leaf(x: Any, path: str) -> _Pair:
        call_value, watched = _leaf_to_tensor(x, where, path, transform)
        if isinstance(watched, tf.Tensor):
            call_value = watched = _distinct(watched, seen)
        elif seen is not None:  # a variable cannot be copied without changing what fn reads
            if id(watched) in seen:
                raise ValueError(
                    f"{transform}: the same variable `{watched.name}` is passed at two "
                    f"differentiated places ({_where_text(where, path)} is the second), so its "
                    f"gradient cannot be split between them. Pass it once, or pass "
                    f"`v.read_value()` at one of the places."
                )
            seen.add(id(watched))
        return _Pair((call_value, watched))

    pairs = _map_with_path(leaf, value, "")
    return _map_pairs(pairs, 0), tf.nest.flatten(_map_pairs(pairs, 1))


def _distinct(t: tf.Tensor, seen: set[int] | None) -> tf.Tensor:
    if seen is not None:
        if id(t) in seen:
            t = tf.identity(t)
        seen.add(id(t))
    return t


def prepare_all(
    values: Sequence[Nest], wheres: Sequence[Where], transform: str, others: Sequence[Any] = ()
) -> tuple[list[Nest], list[Any], list[tuple[Nest, int]]]:
    """``prepare`` for all differentiated values of one call (they share ``seen``).

    ``others`` are the values passed to the non-differentiated arguments: a tensor passed there
    too is watched as a copy, so it stays a constant where it is not differentiated (as in JAX).

    Returns ``(values to pass to fn, flat list of values to watch, [(value, leaf count)])``;
    the last is what ``unflatten`` needs to turn per-leaf results back into nests.
    """
    seen: set[int] = set()
    for other in others:
        if type(other) is _EagerTensor or isinstance(other, tf.Tensor):
            seen.add(id(other))
        elif isinstance(other, (dict, list, tuple)):
            seen.update(id(t) for t in tf.nest.flatten(other) if isinstance(t, tf.Tensor))
    call_values: list[Nest] = []
    sources: list[Any] = []
    structs: list[tuple[Nest, int]] = []
    for value, where in zip(values, wheres):
        call_value, watched = prepare(value, where, transform, seen)
        call_values.append(call_value)
        sources.extend(watched)
        structs.append((call_value, len(watched)))
    return call_values, sources, structs


def unflatten(flat: Sequence[Any], structs: Sequence[tuple[Nest, int]]) -> list[Any]:
    """Per-leaf results (in ``sources`` order) -> one nest per prepared value; a lone leaf
    stays itself."""
    out, start = [], 0
    for struct, n in structs:
        leaves = list(flat[start : start + n])
        start += n
        nested = isinstance(struct, (dict, list, tuple))
        out.append(tf.nest.pack_sequence_as(struct, leaves) if nested else leaves[0])
    return out


class _Pair(tuple):
    """(value passed to fn, value watched) for one leaf; its own type so nests may hold tuples."""


def _map_pairs(struct: Any, k: int) -> Any:
    if isinstance(struct, _Pair):
        return struct[k]
    if isinstance(struct, dict):
        items = {key: _map_pairs(v, k) for key, v in struct.items()}
        return _like_dict(struct, items)
    if isinstance(struct, tuple) and hasattr(struct, "_fields"):
        return type(struct)(*(_map_pairs(v, k) for v in struct))
    if isinstance(struct, (list, tuple)):
        return type(struct)(_map_pairs(v, k) for v in struct)
    return struct


def leaf_paths(value: Nest) -> list[str]:
    """Paths (``['w']``, ``[0]``) of the leaves of a nest, in ``tf.nest.flatten`` order."""
    paths: list[str] = []

    def walk(s: Any, path: str) -> None:
        if isinstance(s, dict):
            for k in sorted(s, key=_sort_key):
                walk(s[k], f"{path}[{k!r}]")
        elif isinstance(s, tuple) and hasattr(s, "_fields"):
            for f, v in zip(s._fields, s):
                walk(v, f"{path}.{f}")
        elif isinstance(s, (list, tuple)):
            for i, v in enumerate(s):
                walk(v, f"{path}[{i}]")
        else:
            paths.append(path)

    walk(value, "")
    return paths


def _sort_key(k: Any) -> Any:
    return (str(type(k)), k) if not isinstance(k, str) else ("", k)


def as_output_tensor(value: Any, fn: Callable, transform: str) -> tf.Tensor:
    """Convert what ``fn`` returned into a float tensor, or raise a clear error."""
    aux_hint = transform in ("grad", "value_and_grad")
    if isinstance(value, (list, tuple, dict)):
        hint = " If it returns (value, aux), pass has_aux=True." if aux_hint else ""
        raise TypeError(
            f"{transform} needs `{fn_name(fn)}` to return one tensor, but it returned a "
            f"{type(value).__name__} of {len(value)} items.{hint} Otherwise return a single "
            f"tensor (e.g. the sum of the items)."
        )
    if not isinstance(value, (tf.Tensor, tf.Variable)):
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{transform}: `{fn_name(fn)}` must return a tensor (or a number), but returned "
                f"{describe_received(value)}."
                + (
                    " If it returns several values, use has_aux=True and return (value, aux)."
                    if aux_hint and value is not None
                    else " Did it forget a `return`?"
                )
            ) from exc
    if not value.dtype.is_floating:
        raise TypeError(
            f"{transform}: the output of `{fn_name(fn)}` has dtype {value.dtype.name}, which has "
            f"no gradient. Compute it in floating point (cast inputs/constants to float)."
        )
    return value


def check_scalar(value: tf.Tensor, fn: Callable, transform: str) -> None:
    """``ValueError`` unless ``value`` is a scalar (rank 0)."""
    rank = value.shape.rank
    if rank is None:  # unknown until run time (a tf.function with a shapeless signature)
        tf.debugging.assert_rank(
            value, 0, message=f"{transform} needs a scalar output from `{fn_name(fn)}`; reduce it"
        )
    elif rank != 0:
        raise ValueError(
            f"{transform} needs a scalar output, but `{fn_name(fn)}` returned shape "
            f"{tuple(value.shape)}. Reduce it (tf.reduce_sum / tf.reduce_mean) or use "
            f"tapekit.jacobian."
        )


def finish(transformed: Callable, fn: Callable, name: str, doc: str) -> Callable:
    """Give a generated function its readable ``__name__``, ``__doc__`` and ``__wrapped__``."""
    transformed.__name__ = transformed.__qualname__ = name
    transformed.__doc__ = doc
    transformed.__wrapped__ = fn  # inspect.signature(transformed) shows fn's parameters
    return transformed
