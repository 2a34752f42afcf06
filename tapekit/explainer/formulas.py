"""The op vocabulary of ``tapekit.explain``: what each op computes and its local derivatives.

``expression`` writes what a node computes in terms of its inputs' names (``pow * y``,
``sin(x)``); ``formula`` writes an op's local derivative with respect to one input slot
(``∂mul/∂pow = y``). Numbers always come from TensorFlow; these formulas only say where they come
from. Ops without a known formula are shown with their numeric local derivative only.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_SIMPLE = re.compile(r"-?[\w.:/]+")  # a node name (scopes included) or a number

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
