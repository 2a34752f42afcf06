"""Graph definitions as TensorBoard should label them: no operand constants named ``x``/``y``.

TensorFlow converts a Python number operand of ``a + 2`` or ``a ** 2`` to a ``Const`` named after
the op's formal parameter, ``add/y`` or ``pow/y``; the Graphs dashboard then shows a node labelled
``y`` that has nothing to do with the user's ``y``. :func:`readable` renames such constants after
their value (``add/const_2``, ``pow/const_2``) and rewires their consumers; nothing else changes
(a constant the user named ``y`` keeps its name).
"""

from __future__ import annotations

import re

import numpy as np
import tensorflow as tf

_OPERAND = re.compile(r"^(?P<scope>.+/)(?P<name>x|y)$")  # math_ops' names for converted operands


def _const_label(node: tf.compat.v1.NodeDef) -> str:
    value = tf.make_ndarray(node.attr["value"].tensor)
    if value.size != 1 or value.dtype.kind not in "fiub":
        return "const"
    number = np.asarray(value).reshape(()).item()
    text = f"{number:g}" if isinstance(number, float) else str(number)
    return "const_" + text.replace("-", "minus_").replace("+", "")


def readable(graph: tf.Graph | tf.compat.v1.GraphDef) -> tf.compat.v1.GraphDef:
    """A copy of ``graph``'s definition with operand constants named after their value.

    Args:
        graph: A ``tf.Graph`` (e.g. a ``ConcreteFunction``'s ``.graph``) or a ``GraphDef``.

    Returns:
        A ``GraphDef`` for ``tf.summary.graph``.

    Example:
        >>> import tensorflow as tf
        >>> g = tf.function(lambda x: x**2 + 1.5).get_concrete_function(tf.constant(1.0)).graph
        >>> sorted(n.name for n in readable(g).node if n.op == "Const")
        ['add/const_1.5', 'pow/const_2']
    """
    graph_def = tf.compat.v1.GraphDef()
    source = graph if isinstance(graph, tf.compat.v1.GraphDef) else graph.as_graph_def()
    graph_def.CopyFrom(source)
    taken = {n.name for n in graph_def.node}
    inputs = {n.name: {r.lstrip("^").partition(":")[0] for r in n.input} for n in graph_def.node}
    renamed: dict[str, str] = {}
    for node in graph_def.node:
        match = _OPERAND.match(node.name)
        if node.op != "Const" or not match:
            continue
        if node.name not in inputs.get(match["scope"][:-1], ()):
            continue  # not the operand of the op it is named after: a name the user chose
        new = base = match["scope"] + _const_label(node)
        i = 1
        while new in taken:
            new, i = f"{base}_{i}", i + 1
        taken.add(new)
        renamed[node.name] = new
        node.name = new
    if renamed:
        for node in graph_def.node:
            for i, ref in enumerate(node.input):
                control, name = ("^", ref[1:]) if ref.startswith("^") else ("", ref)
                name, colon, port = name.partition(":")
                if name in renamed:
                    node.input[i] = f"{control}{renamed[name]}{colon}{port}"
    return graph_def
