"""Text for ``tapekit.explain``: expressions, local-derivative formulas, tables, Markdown, dot.

Formulas are written in terms of node names (``∂mul/∂pow = y``); numbers always come from
TensorFlow, the formulas only say where they come from. Ops without a known formula are shown
with their numeric local derivative only.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .explain import Explanation

_SIMPLE = re.compile(r"-?[\w.:/]+")  # a node name (scopes included) or a number
_MAX_PATHS = 12  # paths listed per input in the printed table

_BINARY = {
    "AddV2": "+",
    "Add": "+",
    "Sub": "-",
    "Mul": "*",
    "RealDiv": "/",
    "Div": "/",
    "DivNoNan": "/",
    "Pow": "**",
    "Greater": ">",
    "GreaterEqual": ">=",
    "Less": "<",
    "LessEqual": "<=",
    "Equal": "==",
    "NotEqual": "!=",
}
_UNARY = {
    "Sin": "sin",
    "Cos": "cos",
    "Tan": "tan",
    "Exp": "exp",
    "Log": "log",
    "Log1p": "log1p",
    "Expm1": "expm1",
    "Sqrt": "sqrt",
    "Rsqrt": "rsqrt",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "Abs": "abs",
    "Reciprocal": "1/",
    "Inv": "1/",
    "Softplus": "softplus",
    "Sinh": "sinh",
    "Cosh": "cosh",
    "Atan": "atan",
    "Asin": "asin",
    "Acos": "acos",
    "Erf": "erf",
    "Sign": "sign",
    "Square": "square",
    "Neg": "-",
    "Identity": "",
    "StopGradient": "stop_gradient",
}

_FUNCTIONS = {
    "Maximum": "max",
    "Minimum": "min",
    "SquaredDifference": "squared_difference",
    "Sum": "sum",
    "Mean": "mean",
    "Prod": "prod",
    "Max": "max",
    "Min": "min",
    "Cast": "cast",
    "Atan2": "atan2",
}

# Local derivative of each op w.r.t. input slot 0, 1, ...: a, b, c stand for the inputs.
_FORMULAS: dict[str, tuple[str, ...]] = {
    "AddV2": ("1", "1"),
    "Add": ("1", "1"),
    "AddN": ("1",) * 16,
    "Sub": ("1", "-1"),
    "Mul": ("{b}", "{a}"),
    "RealDiv": ("1/{b}", "-{a}/{b}²"),
    "Div": ("1/{b}", "-{a}/{b}²"),
    "DivNoNan": ("1/{b}", "-{a}/{b}²"),
    "Pow": ("{b}·{a}^({b}-1)", "{a}^{b}·ln({a})"),
    "Neg": ("-1",),
    "Square": ("2·{a}",),
    "Sqrt": ("1/(2·sqrt({a}))",),
    "Rsqrt": ("-1/(2·{a}^1.5)",),
    "Exp": ("exp({a})",),
    "Expm1": ("exp({a})",),
    "Log": ("1/{a}",),
    "Log1p": ("1/(1+{a})",),
    "Sin": ("cos({a})",),
    "Cos": ("-sin({a})",),
    "Tan": ("1 + tan²({a})",),
    "Tanh": ("1 - tanh²({a})",),
    "Sigmoid": ("sigmoid({a})·(1 - sigmoid({a}))",),
    "Softplus": ("sigmoid({a})",),
    "Relu": ("1 if {a} > 0 else 0",),
    "Abs": ("sign({a})",),
    "Reciprocal": ("-1/{a}²",),
    "Inv": ("-1/{a}²",),
    "Sinh": ("cosh({a})",),
    "Cosh": ("sinh({a})",),
    "Atan": ("1/(1 + {a}²)",),
    "Asin": ("1/sqrt(1 - {a}²)",),
    "Acos": ("-1/sqrt(1 - {a}²)",),
    "Erf": ("2/sqrt(π)·exp(-{a}²)",),
    "Identity": ("1",),
    "Cast": ("1",),
    "StopGradient": ("0",),
    "Sign": ("0",),
    "Maximum": ("1 if {a} ≥ {b} else 0", "1 if {a} < {b} else 0"),
    "Minimum": ("1 if {a} ≤ {b} else 0", "1 if {a} > {b} else 0"),
    "SquaredDifference": ("2·({a} - {b})", "-2·({a} - {b})"),
    "SelectV2": ("", "1 if {a} else 0", "0 if {a} else 1"),
    "Select": ("", "1 if {a} else 0", "0 if {a} else 1"),
    "Sum": ("1",),
    "Mean": ("1",),
    "Prod": ("1",),
    "Reshape": ("1",),
    "Squeeze": ("1",),
    "ExpandDims": ("1",),
    "StridedSlice": ("1",),
    "MatMul": ("{b}", "{a}"),
    "Max": ("1",),
    "Min": ("1",),
}


def fmt(x: float | None) -> str:
    """A number, short: 6 significant digits, no trailing zeros."""
    if x is None:
        return "—"
    return f"{x + 0.0:.6g}"  # + 0.0 turns -0.0 into 0.0


def fmt_value(v: Any) -> str:
    """A constant as it appears in an expression (``2``, ``0.5``, ``[1 2]``)."""
    a = np.asarray(v)
    if a.size == 1 and a.dtype.kind in "fciub":
        item = a.reshape(()).item()
        return fmt(item) if isinstance(item, float) else str(item)
    return np.array2string(a, threshold=6)


def _wrap(label: str) -> str:
    """Parenthesise a label that is not a single name or number."""
    return label if _SIMPLE.fullmatch(label) else f"({label})"


def expression(op_type: str, labels: list[str]) -> str:
    """What a node computes from its inputs, e.g. ``pow * y`` or ``sin(x)``."""
    if op_type in _BINARY and len(labels) == 2:
        return f"{_wrap(labels[0])} {_BINARY[op_type]} {_wrap(labels[1])}"
    if op_type in _UNARY and labels:
        name = _UNARY[op_type]
        if name in ("-", "1/"):
            return f"{name}{_wrap(labels[0])}"
        if name == "square":
            return f"{_wrap(labels[0])}²"
        return f"{name}({labels[0]})" if name else labels[0]
    if op_type in ("SelectV2", "Select") and len(labels) == 3:
        return f"{labels[1]} if {labels[0]} else {labels[2]}"
    if op_type == "AddN":
        return " + ".join(labels)
    if op_type in _FUNCTIONS:
        return f"{_FUNCTIONS[op_type]}({', '.join(labels)})"
    return f"{op_type}({', '.join(labels)})"


def formula(op_type: str, slot: int, labels: list[str], consts: list[float | None]) -> str:
    """The local derivative of an ``op_type`` node w.r.t. input ``slot`` as text, or ``""``."""
    if op_type == "AddN":
        return "1"
    if op_type == "Pow" and slot == 0 and len(consts) == 2 and consts[1] is not None:
        c = consts[1]  # x ** c with a constant exponent: c·x^(c-1)
        if c == 2:
            return f"2·{_wrap(labels[0])}"
        if c == 1:
            return "1"
        return f"{fmt(c)}·{_wrap(labels[0])}^{fmt(c - 1)}"
    templates = _FORMULAS.get(op_type)
    if templates is None or slot >= len(templates):
        return ""
    names = dict(zip("abc", (_wrap(x) for x in labels)))
    try:
        return templates[slot].format(**names)
    except KeyError:
        return ""


def _rows(e: Explanation) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    d = f"∂{_out_symbol(e)}"
    nodes = [["node", "op", "computes", "value", f"{d}/∂node"]]
    for n in e.nodes:
        if n.kind == "constant" and n.name != e.output:
            continue
        op = n.op if n.kind in ("op", "discrete") else n.kind
        name = f"{n.name} (output)" if n.name == e.output else n.name
        value = fmt(n.value) if isinstance(n.value, float) else fmt_value(n.value)
        nodes.append([name, op, n.expression, value, fmt(n.grad)])
    grads = {n.name: n.grad for n in e.nodes}
    edges = [["edge", "local derivative", "value", f"contribution {d}/∂target × local"]]
    for ed in e.edges:
        local = f"∂{ed.target}/∂{ed.source}" + (f" = {ed.formula}" if ed.formula else "")
        contrib = f"{fmt(grads[ed.target])} × {fmt(ed.local)} = {fmt(grads[ed.target] * ed.local)}"
        edges.append([f"{ed.source} → {ed.target}", local, fmt(ed.local), contrib])
    paths = [["input", "path", "product of local derivatives"]]
    for n in e.nodes:
        if n.kind not in ("input", "variable"):
            continue
        found = e.edge_paths(n.name)
        for path in found[:_MAX_PATHS]:
            factors = " × ".join(fmt(ed.local) for ed in path) or "1"
            route = " → ".join([n.name] + [ed.target for ed in path])
            paths.append([n.name, route, f"{factors} = {fmt(math.prod(ed.local for ed in path))}"])
        if len(found) > _MAX_PATHS:
            paths.append([n.name, f"... {len(found) - _MAX_PATHS} more paths", ""])
        products = [math.prod(ed.local for ed in path) for path in found[:_MAX_PATHS]]
        total = " + ".join(fmt(p) for p in products) or "0"
        more = " + ..." if len(found) > _MAX_PATHS else ""
        paths.append([n.name, f"sum = {d}/∂{n.name}", f"{total}{more} = {fmt(n.grad)}"])
    return nodes, edges, paths


def _out_symbol(e: Explanation) -> str:
    return e.fn_name if e.fn_name.isidentifier() and e.fn_name != "lambda" else "f"


def _columns(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _title(e: Explanation) -> str:
    args = ", ".join(f"{n.name}={fmt(n.value)}" for n in e.nodes if n.kind == "input")
    grads = ", ".join(f"∂{_out_symbol(e)}/∂{k} = {fmt(v)}" for k, v in e.gradients.items())
    return f"{_out_symbol(e)}({args}) = {fmt(e.value)};  {grads}"


def table(e: Explanation) -> str:
    """The plain-text tables that ``print(explanation)`` shows."""
    nodes, edges, paths = _rows(e)
    parts = [
        _title(e),
        "",
        "Forward pass: nodes in evaluation order",
        _columns(nodes),
        "",
        "Backward pass: edges in the order reverse mode visits them",
        _columns(edges) if len(edges) > 1 else "  (no differentiable edges)",
        "",
        "Chain rule: sum over paths of the product of local derivatives",
        _columns(paths) if len(paths) > 1 else "  (no inputs)",
    ]
    return "\n".join(parts)


def _md_table(rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        return c.replace("|", "\\|").replace("*", "\\*") or " "

    lines = ["| " + " | ".join(cell(c) for c in rows[0]) + " |"]
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def markdown(e: Explanation) -> str:
    """The tables as Markdown (for TensorBoard's Text dashboard)."""
    nodes, edges, paths = _rows(e)
    return "\n\n".join(
        [
            f"**{_title(e).replace('*', chr(92) + '*')}**",
            "### Forward pass: nodes in evaluation order",
            _md_table(nodes),
            "### Backward pass: edges in the order reverse mode visits them",
            _md_table(edges),
            "### Chain rule: sum over paths of the product of local derivatives",
            _md_table(paths),
        ]
    )


def _q(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def dot(e: Explanation) -> str:
    """Graphviz text: nodes with value and ∂out/∂node, edges labelled with local derivatives."""
    d = f"∂{_out_symbol(e)}"
    lines = [
        f"digraph {_q(e.fn_name)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for n in e.nodes:
        if n.kind == "constant":
            lines.append(f"  {_q(n.name)} [shape=plaintext, label={_q(fmt_value(n.value))}];")
            continue
        value = fmt(n.value) if isinstance(n.value, float) else fmt_value(n.value)
        head = n.name if n.kind in ("input", "variable") else f"{n.name} = {n.expression}"
        label = f"{head}\nvalue {value}"
        if n.grad is not None:
            label += f"\n{d}/∂{n.name} = {fmt(n.grad)}"
        shape = "ellipse" if n.kind in ("input", "variable") else "box"
        extra = ", peripheries=2" if n.name == e.output else ""
        lines.append(f"  {_q(n.name)} [shape={shape}, label={_q(label)}{extra}];")
    diff = {(ed.source, ed.target, ed.slot): ed for ed in e.edges}
    for n in e.nodes:
        for slot, src in enumerate(n.inputs):
            ed = diff.get((src, n.name, slot))
            if ed is None:
                lines.append(f"  {_q(src)} -> {_q(n.name)} [style=dashed, color=gray];")
            else:
                value = fmt(ed.local)
                text = f"{ed.formula} = {value}" if ed.formula not in ("", value) else value
                lines.append(f"  {_q(src)} -> {_q(n.name)} [label={_q(text)}];")
    lines.append("}")
    return "\n".join(lines)
