"""Per-example gradient norms without forming the per-example gradients of dense layers.

Inside the vectorized loop each example runs as a batch of one. For a kernel ``W`` used once,
in ``z = x @ W`` with ``x`` of shape ``(1, n)``, the example's gradient is the outer product
``xᵀ·∂L/∂z``, whose norm is ``|x|·|∂L/∂z|``; for a bias used once, in ``a = z + b``, it is
``|∂L/∂a|``. So the squared norm needs the gradients with respect to ``z`` and ``a`` (vectors),
never the ``(n, m)`` matrix per example that pfor would stack into ``(batch, n, m)``. Variables
used any other way (convolutions, several uses, a cast before use) get their gradients formed
as usual. Both routes give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _tensors

_ADDS = ("AddV2", "Add", "BiasAdd")


def _outermost(t: Any) -> Any:
    """The tensor a graph tensor stands for, following the captures of nested functions out."""
    while True:
        graph = getattr(t, "graph", None)
        captures = getattr(graph, "captures", None)
        if not captures:
            return t
        outer = next((ext for ext, internal in captures if internal is t), None)
        if outer is None:
            return t
        t = outer


def _uses(ops: list[Any], variables: list[tf.Variable]) -> list[list[tuple[Any, int]]]:
    """For each variable, the (op, input position) pairs that consume a read of it in ``ops``."""
    index = {id(v.handle): k for k, v in enumerate(variables)}
    reads: dict[Any, int] = {}
    for op in ops:
        if op.type == "ReadVariableOp":
            k = index.get(id(_outermost(op.inputs[0])))
            if k is not None:
                reads[op.outputs[0].ref()] = k
    uses: list[list[tuple[Any, int]]] = [[] for _ in variables]
    for op in ops:
        for j, x in enumerate(op.inputs):
            k = reads.get(x.ref())
            if k is not None:
                uses[k].append((op, j))
    return uses


def _shortcut(uses: list[tuple[Any, int]], variable: tf.Variable) -> tuple[Any, Callable] | None:
    """``(tensor to differentiate, its gradient -> squared norm)`` for a dense use, else None."""
    if len(uses) != 1:
        return None
    op, j = uses[0]
    if op.type == "MatMul" and j == 1:
        x = op.inputs[0]
        plain = not op.get_attr("transpose_a") and not op.get_attr("transpose_b")
        if plain and x.shape.rank == 2 and x.shape[0] == 1:
            x_sq = tf.reduce_sum(tf.square(x))
            return op.outputs[0], lambda g: x_sq * tf.reduce_sum(tf.square(g))
    if op.type in _ADDS and variable.shape.rank == 1:
        other = op.inputs[1 - j]
        if other.shape.rank == 2 and other.shape[0] == 1 and op.outputs[0].shape == other.shape:
            return op.outputs[0], lambda g: tf.reduce_sum(tf.square(g))
    return None


def example_norm(
    tape: tf.GradientTape, loss: tf.Tensor, sources: list[tf.Variable], new_ops: list[Any]
) -> tf.Tensor:
    """The norm of one example's gradient (a batch of one recorded on ``tape``)."""
    uses = _uses(new_ops, sources) if new_ops else [[] for _ in sources]
    shortcuts = [_shortcut(u, v) for u, v in zip(uses, sources)]
    targets = [s[0] if s else v for s, v in zip(shortcuts, sources)]
    grads = tape.gradient(loss, targets, unconnected_gradients=_tensors.ZERO)
    squares = [
        s[1](g) if s else tf.reduce_sum(tf.square(tf.convert_to_tensor(g)))
        for s, g in zip(shortcuts, grads)
    ]
    return tf.sqrt(tf.add_n(squares))
