"""The op graph behind ``tapekit.explain``: trace, evaluate and differentiate op by op.

The traced ``FuncGraph`` is walked in creation (topological) order. Each op between the inputs
and the output is run eagerly through ``tf.raw_ops`` on its input values, under a
``tf.GradientTape`` that watches a separate copy of each differentiable input slot; that gives
the op's local derivative per slot (``x * x`` has two slots, two edges). ``Identity`` ops are
collapsed into their input, and every read of one ``tf.Variable`` is one node.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from .. import _args
from . import formulas as _formulas

_CONTROL_FLOW = {
    "If",
    "StatelessIf",
    "While",
    "StatelessWhile",
    "Case",
    "StatelessCase",
    "PartitionedCall",
    "StatefulPartitionedCall",
}

DIFF = ("input", "variable", "op")  # kinds of nodes that carry derivatives


@dataclass(frozen=True)
class Node:
    """One value of the computation.

    Attributes:
        name: The TF op name (as in the Graphs dashboard), the parameter name for inputs, the
            variable name for variables.
        op: The op type (``"Pow"``), or ``"input"``, ``"variable"``, ``"constant"``.
        kind: ``"input"``, ``"variable"``, ``"op"`` (differentiable), ``"constant"`` (does not
            depend on the inputs) or ``"discrete"`` (integer/bool, no derivative).
        inputs: Names of the nodes feeding it, in argument order.
        value: Its value (a float for differentiable nodes; constants may be arrays).
        grad: ∂output/∂node (``None`` for constant and discrete nodes).
        expression: What it computes in terms of its inputs, e.g. ``"x ** 2"``.
    """

    name: str
    op: str
    kind: str
    inputs: tuple[str, ...]
    value: Any
    grad: float | None
    expression: str


@dataclass(frozen=True)
class Edge:
    """A differentiable edge ``source → target`` with its local derivative ∂target/∂source.

    Attributes:
        source: Name of the input node.
        target: Name of the node computed from it.
        slot: Which argument of ``target``'s op the source is (``x * x`` has two edges).
        local: The local derivative ∂target/∂source at the evaluated point.
        formula: The local derivative as a formula of node names (``"2·x"``), or ``""``.
    """

    source: str
    target: str
    slot: int
    local: float
    formula: str


@functools.cache
def _raw_op(op_type: str) -> tuple[Callable, tuple[str, ...]] | None:
    """``tf.raw_ops.<op_type>`` and its parameter names (inputs first, then attrs)."""
    raw = getattr(tf.raw_ops, op_type, None)
    if raw is None:
        return None
    return raw, tuple(p for p in inspect.signature(raw).parameters if p != "name")


def _attr_value(op: tf.Operation, attr: Any) -> Any:
    value = op.get_attr(attr.name)
    if attr.type == "shape":
        return tf.TensorShape(value)
    if attr.type == "list(shape)":
        return [tf.TensorShape(v) for v in value]
    if attr.type == "func" or attr.type == "list(func)":
        raise ValueError(
            f"explain cannot evaluate op `{op.name}` ({op.type}): it calls another function. "
            f"Write the computation with plain TensorFlow ops."
        )
    return value


def _run_op(op: tf.Operation, inputs: list[Any]) -> list[tf.Tensor]:
    """Run graph op ``op`` eagerly on ``inputs`` (one value per input slot) via ``tf.raw_ops``."""
    found = _raw_op(op.type)
    if found is None:
        raise ValueError(
            f"explain cannot evaluate op `{op.name}` of type {op.type} (it has no tf.raw_ops "
            f"entry). Write the computation with standard TensorFlow ops."
        )
    raw, params = found
    op_def = op.op_def
    inferred = {
        a for arg in op_def.input_arg for a in (arg.type_attr, arg.number_attr, arg.type_list_attr)
    }
    kwargs: dict[str, Any] = {}
    i = 0
    for arg, pname in zip(op_def.input_arg, params):
        if arg.number_attr or arg.type_list_attr:  # a list input
            n = (
                op.get_attr(arg.number_attr)
                if arg.number_attr
                else len(op.get_attr(arg.type_list_attr))
            )
            kwargs[pname], i = list(inputs[i : i + n]), i + n
        else:
            kwargs[pname], i = inputs[i], i + 1
    attrs = [a for a in op_def.attr if a.name not in inferred]
    attr_params = params[len(op_def.input_arg) :]
    by_name = {a.name for a in attrs} <= set(attr_params)  # raw_ops may rename, rarely
    for k, attr in enumerate(attrs):
        kwargs[attr.name if by_name else attr_params[k]] = _attr_value(op, attr)
    return tf.nest.flatten(raw(**kwargs))


def _scalar(t: tf.Tensor, name: str, op_type: str) -> float:
    if t.shape.num_elements() != 1:
        raise ValueError(
            f"explain follows scalar values through the computation (teaching scale), but node "
            f"`{name}` ({op_type}) has shape {tuple(t.shape)}. Write the function on scalars "
            f"(e.g. f(x0, x1) instead of f(x) with x of shape (2,)), or use tapekit.grad / "
            f"tapekit.jacobian for tensors."
        )
    return float(tf.reshape(t, []).numpy())


def control_flow_message(fn: Callable, found: str) -> str:
    return (
        f"explain follows straight-line code on scalars, but `{_args.fn_name(fn)}` contains "
        f"{found}: control flow that depends on a tensor (tf.cond, tf.while_loop, a Python "
        f"if/while on a tensor) or a nested tf.function. Write it with tf.where / tf.maximum, "
        f"use Python numbers for the control flow, or call the inner function's "
        f"python_function."
    )


class Evaluator:
    """Evaluate and differentiate, op by op, the part of ``graph`` that feeds its output."""

    def __init__(
        self, fn: Callable, graph: tf.Graph, labels: list[str], values: list[tf.Tensor]
    ) -> None:
        self.fn = fn
        self.graph = graph
        self.value: dict[str, tf.Tensor] = {}  # tensor name -> eager value
        self.node: dict[str, str] = {}  # tensor name -> node name (Identity collapsed)
        self.kind: dict[str, str] = {}  # node name -> kind
        self.nodes: list[Node] = []
        self.locals: dict[str, list[tuple[str, int, float, str]]] = {}  # target -> in-edges
        n = len(values)
        external = {internal.name: ext for ext, internal in graph.captures}
        variables = {id(v.handle): v for v in graph.variables}
        self._feeds = {graph.inputs[i].name: (labels[i], values[i]) for i in range(n)}
        self._external = external
        self._variables = variables
        self.output = graph.outputs[0]
        self._reads: dict[int, str] = {}  # id(variable) -> tensor name of its first read

    def _ancestors(self) -> list[tf.Operation]:
        needed = {t.op.name for t in self.graph.inputs if t.name in self._feeds}  # unused too
        stack = [self.output.op]
        while stack:
            op = stack.pop()
            if op.name in needed and op.type != "Placeholder":
                continue
            needed.add(op.name)
            stack.extend(t.op for t in op.inputs)
        return [op for op in self.graph.get_operations() if op.name in needed]

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.kind:
            name, k = f"{base}_{k}", k + 1
        return name

    def _add(
        self,
        tensor: tf.Tensor,
        name: str,
        op: str,
        kind: str,
        inputs: tuple,
        value: Any,
        expr: str = "",
    ) -> str:
        name = self._unique(name)
        self.value[tensor.name] = value
        self.node[tensor.name] = name
        self.kind[name] = kind
        if kind in DIFF:
            shown = _scalar(value, name, op)
        else:
            shown = value.numpy()
            shown = shown.item() if shown.ndim == 0 else shown
        self.nodes.append(Node(name, op, kind, inputs, shown, None, expr))
        return name

    def _visit(self, op: tf.Operation) -> None:
        out0 = op.outputs[0] if op.outputs else None
        if op.type == "Placeholder":
            if out0.name in self._feeds:
                label, v = self._feeds[out0.name]
                self._add(out0, label, "input", "input", (), v)
            elif out0.dtype != tf.resource:
                self._add(out0, op.name, "constant", "constant", (), self._external[out0.name])
            else:  # a captured variable handle: the ReadVariableOp reading it is the node
                self.value[out0.name] = self._external[out0.name]
            return
        if op.type == "Const":
            value = tf.constant(tf.make_ndarray(op.get_attr("value")), out0.dtype)
            self._add(out0, op.name, "constant", "constant", (), value)
            return
        if op.type in _CONTROL_FLOW:
            raise ValueError(control_flow_message(self.fn, f"a {op.type} op (`{op.name}`)"))
        ins = [self.value[t.name] for t in op.inputs]
        if op.type in ("Identity", "Snapshot") and op.inputs[0].name in self.node:
            self.value[out0.name] = ins[0]
            self.node[out0.name] = self.node[op.inputs[0].name]
            return
        if op.type == "ReadVariableOp" and op.inputs[0].op.type == "Placeholder":
            var = self._variables.get(id(self._external.get(op.inputs[0].name)))
            if var is not None:  # every read of one variable is the same node
                seen = self._reads.get(id(var))
                if seen is None:
                    name = var.name.split(":")[0]
                    self._reads[id(var)] = out0.name
                    self._add(out0, name, "variable", "variable", (), _run_op(op, ins)[0])
                else:
                    self.value[out0.name] = self.value[seen]
                    self.node[out0.name] = self.node[seen]
                return
        src = [self.node.get(t.name) for t in op.inputs]
        active = [
            s
            for s, n in enumerate(src)
            if n is not None and self.kind[n] in DIFF and op.inputs[s].dtype.is_floating
        ]
        watched = [tf.identity(v) if s in active else v for s, v in enumerate(ins)]
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch([watched[s] for s in active])
            outs = _run_op(op, watched)
        labels = self._labels(op)
        inputs = tuple(n or t.op.name for n, t in zip(src, op.inputs))
        for k, (t, v) in enumerate(zip(op.outputs, outs)):
            name = f"{op.name}:{k}" if len(op.outputs) > 1 else op.name
            expr = _formulas.expression(op.type, labels)
            if not active:
                self._add(t, name, op.type, "constant", inputs, v, expr)
            elif not t.dtype.is_floating:
                self._add(t, name, op.type, "discrete", inputs, v, expr)
            else:
                name = self._add(t, name, op.type, "op", inputs, v, expr)
                self.locals[name] = [
                    (
                        src[s],
                        s,
                        _local(tape.gradient(v, watched[s]), name, op.type),
                        _formulas.formula(op.type, s, labels, self._const(op)),
                    )
                    for s in active
                ]
        del tape

    def _const(self, op: tf.Operation) -> list[Any]:
        """Per input slot: the value if that input is a constant scalar, else None."""
        out = []
        for t in op.inputs:
            name = self.node.get(t.name)
            v = self.value.get(t.name)
            scalar = v is not None and v.shape.num_elements() == 1 and v.dtype.is_floating
            out.append(
                float(tf.reshape(v, [])) if scalar and self.kind.get(name) == "constant" else None
            )
        return out

    def _labels(self, op: tf.Operation) -> list[str]:
        """How each input of ``op`` is written in formulas: its node name, or a constant's value."""
        labels = []
        for t in op.inputs:
            name = self.node.get(t.name)
            if name is not None and self.kind[name] != "constant":
                labels.append(name)
            else:
                labels.append(_formulas.fmt_value(self.value[t.name]))
        return labels

    def run(self) -> tuple[list[Node], list[Edge], str, float]:
        """Evaluate; then the backward pass. Returns ``(nodes, edges, output name, value)``."""
        for op in self._ancestors():
            self._visit(op)
        out_name = self.node[self.output.name]
        value = float(tf.reshape(self.value[self.output.name], []).numpy())
        # The backward pass: adjoints from the output back, one node at a time.
        grads = {n.name: 0.0 for n in self.nodes if n.kind in DIFF}
        if out_name in grads:
            grads[out_name] = 1.0
        edges: list[Edge] = []
        for node in reversed(self.nodes):
            for src, slot, local, formula in self.locals.get(node.name, []):
                grads[src] += grads[node.name] * local
                edges.append(Edge(src, node.name, slot, local, formula))
        nodes = [
            Node(n.name, n.op, n.kind, n.inputs, n.value, grads.get(n.name), n.expression)
            for n in self.nodes
        ]
        return nodes, edges, out_name, value


def _local(g: Any, name: str, op_type: str) -> float:
    return 0.0 if g is None else _scalar(tf.convert_to_tensor(g), name, op_type)
