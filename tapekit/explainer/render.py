"""Presentation of an :class:`~tapekit.explainer.Explanation`: text tables, Markdown and dot.

The tables list the nodes (forward order), the edges (the order the backward pass visits them)
and, per input, the paths whose products of local derivatives sum to the gradient.
"""

from __future__ import annotations

import math
from typing import Protocol

from .formulas import fmt, fmt_value
from .graph import Edge, Node


class Explained(Protocol):
    """What the renderers read of an :class:`~tapekit.explainer.Explanation`."""

    fn_name: str
    nodes: list[Node]
    edges: list[Edge]
    output: str
    value: float

    @property
    def gradients(self) -> dict[str, float]: ...

    def edge_paths(self, source: str) -> list[list[Edge]]: ...


_MAX_PATHS = 12  # paths listed per input in the printed table


def _rows(e: Explained) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
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


def _out_symbol(e: Explained) -> str:
    return e.fn_name if e.fn_name.isidentifier() and e.fn_name != "lambda" else "f"


def _columns(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _title(e: Explained) -> str:
    args = ", ".join(f"{n.name}={fmt(n.value)}" for n in e.nodes if n.kind == "input")
    grads = ", ".join(f"∂{_out_symbol(e)}/∂{k} = {fmt(v)}" for k, v in e.gradients.items())
    return f"{_out_symbol(e)}({args}) = {fmt(e.value)};  {grads}"


def table(e: Explained) -> str:
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


def markdown(e: Explained) -> str:
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


def dot(e: Explained) -> str:
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
