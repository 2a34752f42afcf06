"""Checking tangents and cotangents against the values they pair with (jvp, vjp, hvp)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from .errors import describe_received


def check_primals(primals: Any, transform: str, what: str = "primals") -> list[Any]:
    if not isinstance(primals, (tuple, list)):
        raise TypeError(
            f"{transform} needs `{what}` as a tuple with one entry per argument of fn, but "
            f"received {describe_received(primals)}. Wrap a single argument: ({what[:-1]},)."
        )
    return list(primals)


def match_dtype_shape(value: Any, like: Any, where: str, transform: str) -> tf.Tensor:
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


def flatten_like(value: Any, structure: Any, where: str, transform: str) -> list[Any]:
    try:
        tf.nest.assert_same_structure(structure, value, check_types=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{transform}: {where} must have the same structure as the value it pairs with; {exc}"
        ) from exc
    check_keys(structure, value, where, transform)
    return tf.nest.flatten(value)


def check_keys(structure: Any, value: Any, where: str, transform: str) -> None:
    """assert_same_structure(check_types=False) pairs dict values by sorted position only."""
    if isinstance(structure, dict):
        if set(structure) != set(value):
            raise ValueError(
                f"{transform}: {where} must have the same dict keys as the value it pairs with, "
                f"{sorted(map(repr, structure))}, but has {sorted(map(repr, value))}."
            )
        for k in structure:
            check_keys(structure[k], value[k], where, transform)
    elif isinstance(structure, (list, tuple)):
        for s, v in zip(structure, value):
            check_keys(s, v, where, transform)


def tangents_for(
    structs: list[tuple[Any, int]], sources: list[Any], tangents: list[Any], transform: str
) -> list[tf.Tensor]:
    """One tangent tensor per source leaf, checked against its primal (dtype, shape, nest)."""
    out: list[tf.Tensor] = []
    start = 0
    for i, ((value, n), t) in enumerate(zip(structs, tangents)):
        flat_t = flatten_like(t, value, f"tangent {i}", transform)
        for j, (w, ft) in enumerate(zip(sources[start : start + n], flat_t)):
            where = f"tangent {i}" if n == 1 else f"tangent {i} (leaf {j})"
            out.append(match_dtype_shape(ft, w, where, transform))
        start += n
    return out
