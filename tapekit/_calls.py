"""A prepared call of a user function, and its split into what ``tf.function`` can key on.

:func:`make_call` validates ``argnums`` and prepares the differentiated arguments. :func:`split`
turns a :class:`Call` into a hashable *spec* (nest structure, which leaves are differentiated,
Python constants), the flat list of tensors and the *opaque* objects (variables and other
objects) that ``tf.function`` handles by its own rules; :func:`join` rebuilds the call inside
the trace.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from . import _args, _tensors


@dataclass
class Call:
    """A prepared call of the user function.

    ``args``/``kwargs`` are what ``fn`` receives; ``sources`` the flat list of values to watch
    (one per differentiated leaf, in ``argnums`` order); ``structs`` holds, per differentiated
    position, the value passed (its nest structure) and its number of leaves. ``extra`` holds
    further tensors a core needs (e.g. the tangents of ``hvp``), as a flat list.
    """

    args: list[Any]
    kwargs: dict[str, Any]
    positions: list[int]
    sources: list[Any]
    structs: list[tuple[Any, int]]
    extra: list[Any] = field(default_factory=list)


def make_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    argnums: tuple[int, ...],
    transform: str,
) -> Call:
    """Validate ``argnums`` against a call and prepare the differentiated arguments."""
    positions = _args.resolve_argnums(argnums, len(args), fn, transform)
    if len(set(positions)) != len(positions):
        raise ValueError(
            f"{transform}: argnums={argnums} names the same argument twice. List each "
            f"argument once, e.g. argnums=(0, 1)."
        )
    args_list = list(args)
    # a tensor at two positions gets a copy: one derivative per position (see _args.prepare)
    wheres = [functools.partial(_args.describe_arg, fn, i) for i in positions]
    others = [a for i, a in enumerate(args) if i not in positions] + list(kwargs.values())
    values, sources, structs = _args.prepare_all(
        [args[i] for i in positions], wheres, transform, others
    )
    for i, value in zip(positions, values):
        args_list[i] = value
    return Call(args_list, kwargs, positions, sources, structs)


# ---------------------------------------------------------------------------------------------
# Splitting a call into (spec, flat tensors, opaque objects) and back.

_STATIC = (str, bytes, int, float, complex, bool, type(None))
_LEAF = ("x",)
_EagerTensor = tf.__internal__.EagerTensor  # importing must not start TF's runtime


def _encode(value: Any, flat: list, opaque: list, diff: bool) -> Any:
    """A hashable description of ``value``; tensors go to ``flat``, other objects to ``opaque``."""
    if type(value) is _EagerTensor:
        flat.append(value)
        return _LEAF
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (str(type(k)), k) if not isinstance(k, str) else ("", k))
        items = tuple((k, _encode(value[k], flat, opaque, diff)) for k in keys)
        return ("d", type(value), tuple(value.keys()), items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("n", type(value), tuple(_encode(v, flat, opaque, diff) for v in value))
    if isinstance(value, (list, tuple)):
        return ("l", type(value), tuple(_encode(v, flat, opaque, diff) for v in value))
    if diff:  # a differentiated leaf: tensor, tf.Variable or Keras variable
        variable = _tensors.variable(value)
        if variable is not None:
            # Passed as the tf.Variable itself (not its value), so that reads of it inside fn,
            # also from fn's closure (e.g. a Keras model's own weights), reach the watched source.
            opaque.append(variable)
            return ("o",)
        flat.append(tf.convert_to_tensor(value))
        return _LEAF
    if isinstance(value, tf.Tensor) or isinstance(value, np.ndarray):
        flat.append(tf.convert_to_tensor(value))
        return _LEAF
    if isinstance(value, _STATIC):
        if isinstance(value, np.generic):  # np.float64 (a float): tf.function would make it a
            value = value.item()  # float64 tensor, which float32 ops reject; eager code accepts it
        return ("s", type(value), value)
    opaque.append(value)
    return ("o",)


def _decode(spec: Any, flat: Any, opaque: Any) -> Any:
    kind = spec[0]
    if kind == "x":
        return next(flat)
    if kind == "s":
        return spec[2]
    if kind == "o":
        return next(opaque)
    if kind == "d":
        items = dict((k, _decode(s, flat, opaque)) for k, s in spec[3])
        ordered = {k: items[k] for k in spec[2]}
        if spec[1] is dict:
            return ordered
        if issubclass(spec[1], collections.defaultdict):
            return spec[1](None, ordered)
        return spec[1](ordered)
    if kind == "n":
        return spec[1](*(_decode(s, flat, opaque) for s in spec[2]))
    values = [_decode(s, flat, opaque) for s in spec[2]]
    return values if spec[1] is list else spec[1](values)


def split(call: Call) -> tuple[Any, list[tf.Tensor], tuple]:
    """``(spec, flat tensors, opaque objects)`` of a prepared call (differentiated leaves first)."""
    flat: list[tf.Tensor] = []
    opaque: list[Any] = []
    diff = tuple(_encode(call.args[i], flat, opaque, True) for i in call.positions)
    extra = tuple(_encode(v, flat, opaque, True) for v in call.extra)
    rest = tuple(
        (i, _encode(a, flat, opaque, False))
        for i, a in enumerate(call.args)
        if i not in call.positions
    )
    kw = tuple((k, _encode(v, flat, opaque, False)) for k, v in sorted(call.kwargs.items()))
    spec = (tuple(call.positions), len(call.args), diff, extra, rest, kw)
    return spec, flat, tuple(opaque)


def join(spec: Any, flat: tuple, opaque: tuple) -> Call:
    """Rebuild the :class:`Call` (inside the trace) from :func:`split`'s pieces."""
    positions, nargs, diff, extra_spec, rest, kw = spec
    it, ot = iter(flat), iter(opaque)
    args: list[Any] = [None] * nargs
    structs = []
    sources = []
    for i, s in zip(positions, diff):
        args[i] = _decode(s, it, ot)
        leaves = tf.nest.flatten(args[i])
        structs.append((args[i], len(leaves)))
        sources.extend(v if (v := _tensors.variable(leaf)) is not None else leaf for leaf in leaves)
    extra = [_decode(s, it, ot) for s in extra_spec]
    for i, s in rest:
        args[i] = _decode(s, it, ot)
    kwargs = {k: _decode(s, it, ot) for k, s in kw}
    return Call(args, kwargs, list(positions), sources, structs, tf.nest.flatten(extra))
