"""``explain``: the chain rule made visible for a small scalar function.

``fn`` is traced once with ``tf.function`` into an op graph. Each op that lies between the inputs
and the output is then run eagerly, one at a time, on the values of its inputs; a
``tf.GradientTape`` around that single op gives its local derivative with respect to each input
slot. The backward pass multiplies and sums those local derivatives, node by node from the output
back to the inputs, exactly as reverse-mode differentiation does; the result equals
``tapekit.grad`` and is also the sum, over all paths from an input to the output, of the product
of the local derivatives along the path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from .. import _args
from .._graphdef import readable
from . import render as _render
from .graph import Edge, Evaluator, Node, control_flow_message

__all__ = ["Edge", "Explanation", "Node", "explain"]


def _inputs(fn: Callable, args: tuple) -> tuple[list[str], list[tf.Tensor]]:
    names = _args.param_names(fn) or []
    labels, values = [], []
    for i, a in enumerate(args):
        where = _args.describe_arg(fn, i)
        if isinstance(a, (dict, list, tuple)):
            raise TypeError(
                f"explain takes scalar float arguments, but {where} is a "
                f"{type(a).__name__}. Pass the numbers separately: explain(f, 3.0, 4.0)."
            )
        call_value, _ = _args.prepare(a, where, "explain")
        t = tf.convert_to_tensor(call_value)
        if t.shape.num_elements() != 1:
            raise ValueError(
                f"explain takes scalar arguments (teaching scale), but {where} has shape "
                f"{tuple(t.shape)}. Pass scalars, or use tapekit.grad / tapekit.jacobian."
            )
        values.append(tf.reshape(t, []))
        labels.append(names[i] if i < len(names) else f"arg{i}")
    return labels, values


def explain(fn: Callable, *args: Any, **kwargs: Any) -> Explanation:
    """Show the chain rule at work: every node, every edge and its local derivative.

    ``fn`` is traced to a TensorFlow op graph; every op between the positional arguments (and
    any ``tf.Variable`` that ``fn`` reads) and the output is evaluated and differentiated on its
    own. The result lists the nodes in forward order with their values and ∂output/∂node, and
    the edges in the order the backward pass visits them with their local derivatives. For each
    input, the sum over paths of the product of local derivatives along the path is the
    gradient (``tapekit.grad(fn, argnums=...)``).

    Args:
        fn: A function of scalar floats returning a scalar float, written with TensorFlow ops
            (``x**2 * y``, ``tf.sin``, ``tf.exp``, ...), without Python ``if``/``while`` on
            tensors.
        *args: The point: one scalar per positional parameter (numbers become float32;
            float64 tensors or NumPy values stay float64). All are differentiated.
        **kwargs: Further keyword arguments, passed as constants (not differentiated).

    Returns:
        An :class:`Explanation`: ``print()`` it for a table; ``.to_dot()`` gives Graphviz text;
        ``.log(logdir)`` writes the graph and the table to TensorBoard.

    Raises:
        TypeError: If ``fn`` is not callable, an argument is not a float scalar, or ``fn``
            does not return a single float tensor.
        ValueError: If a value on the way from the inputs to the output is not a scalar, or the
            graph contains control flow (``tf.cond``, a Python ``if`` on a tensor, a nested
            ``tf.function``).

    Example:
        >>> import tapekit
        >>> e = tapekit.explain(lambda x, y: x**2 * y + y + 2, 3.0, 4.0)
        >>> e.value, e.gradients
        (42.0, {'x': 24.0, 'y': 10.0})
        >>> [(edge.source, edge.target, edge.local) for edge in e.edges][-2:]
        [('y', 'mul', 9.0), ('x', 'pow', 6.0)]
        >>> [(path, product) for path, product in e.paths("y")]
        [(('y', 'mul', 'add', 'add_1'), 9.0), (('y', 'add', 'add_1'), 1.0)]
    """
    _args.check_callable(fn, "explain")
    labels, values = _inputs(fn, args)

    inner = getattr(fn, "python_function", fn)  # a tf.function: trace its Python body

    def traced(*xs: tf.Tensor) -> Any:
        return inner(*xs, **kwargs)

    specs = [tf.TensorSpec([], v.dtype, name=n) for n, v in zip(labels, values)]
    try:
        concrete = tf.function(traced).get_concrete_function(*specs)
    except tf.errors.OperatorNotAllowedInGraphError as exc:
        raise ValueError(control_flow_message(fn, "a Python if/while on a tensor")) from exc
    out = concrete.structured_outputs
    if not isinstance(out, tf.Tensor) or not out.dtype.is_floating:
        raise TypeError(
            f"explain needs `{_args.fn_name(fn)}` to return one float tensor, but it returned "
            f"{_args.describe_received(out)}. Return a single scalar (e.g. the loss)."
        )
    nodes, edges, output, value = Evaluator(fn, concrete.graph, labels, values).run()
    return Explanation(_args.fn_name(fn), nodes, edges, output, value, concrete)


@dataclass
class Explanation:
    """The result of :func:`explain`. ``print()`` it for a readable table.

    Attributes:
        fn_name: The explained function's name.
        nodes: Every :class:`Node` in forward (evaluation) order, constants included.
        edges: Every differentiable :class:`Edge`, in the order the backward pass visits them.
        output: The name of the output node.
        value: The output value.

    Example:
        >>> import tapekit
        >>> e = tapekit.explain(lambda x: x * x, 3.0)  # x used twice: two edges, two paths
        >>> [(d.source, d.target, d.slot, d.local) for d in e.edges]
        [('x', 'mul', 0, 3.0), ('x', 'mul', 1, 3.0)]
        >>> e.node("mul").grad, e.gradients
        (1.0, {'x': 6.0})
    """

    fn_name: str
    nodes: list[Node]
    edges: list[Edge]
    output: str
    value: float
    _concrete: Any = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"<Explanation of {self.fn_name}: value {_render.fmt(self.value)}, "
            f"{len(self.nodes)} nodes, {len(self.edges)} edges; print() it for the table>"
        )

    @property
    def gradients(self) -> dict[str, float]:
        """∂output/∂leaf for every input (by parameter name) and variable, as floats."""
        return {n.name: n.grad for n in self.nodes if n.kind in ("input", "variable")}

    def node(self, name: str) -> Node:
        """The node called ``name``.

        Raises:
            KeyError: If there is no such node (the message lists the names).
        """
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(
            f"explain: no node named {name!r}; nodes are {[n.name for n in self.nodes]}."
        )

    def paths(self, source: str) -> list[tuple[tuple[str, ...], float]]:
        """Every path from node ``source`` to the output with the product of its local derivatives.

        Their sum is ∂output/∂source. An op using a value twice (``x * x``) gives two edges and
        so two paths. The number of paths can grow exponentially with depth; this is meant for
        teaching-size functions.

        Args:
            source: A node name, e.g. an input's parameter name.

        Returns:
            A list of ``(node names along the path, product of local derivatives)``.

        Raises:
            KeyError: If ``source`` is not a node.
        """
        return [
            ((source, *(e.target for e in path)), math.prod(e.local for e in path))
            for path in self.edge_paths(source)
        ]

    def edge_paths(self, source: str) -> list[list[Edge]]:
        """Like :meth:`paths`, but each path as its list of :class:`Edge` objects.

        Raises:
            KeyError: If ``source`` is not a node.
        """
        self.node(source)
        out_edges: dict[str, list[Edge]] = {}
        for e in reversed(self.edges):  # forward order
            out_edges.setdefault(e.source, []).append(e)
        result: list[list[Edge]] = []

        def walk(name: str, path: list[Edge]) -> None:
            if name == self.output:
                result.append(path)
            for e in out_edges.get(name, []):
                walk(e.target, path + [e])

        walk(source, [])
        return result

    def __str__(self) -> str:
        return _render.table(self)

    def to_markdown(self) -> str:
        """The same tables in Markdown (as written to TensorBoard's Text dashboard)."""
        return _render.markdown(self)

    def to_dot(self) -> str:
        """Graphviz ``dot`` text of the graph: values and ∂output/∂node on nodes, local
        derivatives on edges. Render with ``dot -Tsvg`` or any online Graphviz viewer."""
        return _render.dot(self)

    def log(self, logdir: str | os.PathLike, name: str | None = None) -> str:
        """Write the traced graph (Graphs dashboard) and the table (Text dashboard).

        Args:
            logdir: The TensorBoard log directory.
            name: The run name; defaults to ``explain_<fn name>``.

        Returns:
            The run directory ``<logdir>/<name>``.
        """
        run = os.path.join(os.fspath(logdir), name or f"explain_{self.fn_name}")
        with tf.init_scope():
            writer = tf.summary.create_file_writer(run)
            try:
                with writer.as_default(step=0), tf.summary.record_if(True):
                    tf.summary.graph(readable(self._concrete.graph))
                    tf.summary.text("explain", self.to_markdown())
            finally:
                writer.close()
        return run
