"""tapekit.explain: nodes, edges and local derivatives checked on closed forms; the chain rule
(sum over paths of products of local derivatives) against tapekit.grad, central differences and
the nodes' own ∂f/∂node; output formats and TensorBoard logging read back."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

import tapekit as tk

F64 = tf.float64


def classic(x, y):
    return x**2 * y + y + 2


def central_diff(f, args: list[float], eps: float = 1e-6) -> list[float]:
    out = []
    for i in range(len(args)):
        up = [tf.constant(a + (eps if j == i else 0.0), F64) for j, a in enumerate(args)]
        dn = [tf.constant(a - (eps if j == i else 0.0), F64) for j, a in enumerate(args)]
        out.append((float(f(*up)) - float(f(*dn))) / (2 * eps))
    return out


def by_name(e: tk.board.Explanation) -> dict:
    return {n.name: n for n in e.nodes}


def local(e, source, target) -> float:
    (edge,) = [d for d in e.edges if d.source == source and d.target == target]
    return edge.local


# --- the lesson's example, every number by hand ------------------------------------------------


def test_classic_example_every_node_and_edge():
    e = tk.explain(classic, 3.0, 4.0)
    nodes = by_name(e)
    assert [n.name for n in e.nodes if n.kind != "constant"] == [
        "x",
        "y",
        "pow",
        "mul",
        "add",
        "add_1",
    ]
    assert [n.name for n in e.nodes if n.kind == "constant"]  # the 2s are constant nodes
    assert {k: nodes[k].value for k in ("pow", "mul", "add", "add_1")} == {
        "pow": 9.0,
        "mul": 36.0,
        "add": 40.0,
        "add_1": 42.0,
    }
    assert (nodes["pow"].op, nodes["mul"].op, nodes["add_1"].op) == ("Pow", "Mul", "AddV2")
    assert nodes["mul"].expression == "pow * y" and nodes["pow"].expression == "x ** 2"
    # ∂f/∂node: f = mul + y + 2, mul = pow * y, pow = x²
    assert {k: nodes[k].grad for k in nodes if nodes[k].grad is not None} == {
        "x": 24.0,
        "y": 10.0,
        "pow": 4.0,
        "mul": 1.0,
        "add": 1.0,
        "add_1": 1.0,
    }
    # local derivatives: ∂pow/∂x = 2x, ∂mul/∂pow = y, ∂mul/∂y = x², additions 1
    assert local(e, "x", "pow") == 6.0 and local(e, "pow", "mul") == 4.0
    assert local(e, "y", "mul") == 9.0 and local(e, "y", "add") == 1.0
    assert [(d.source, d.target) for d in e.edges] == [
        ("add", "add_1"),
        ("mul", "add"),
        ("y", "add"),
        ("pow", "mul"),
        ("y", "mul"),
        ("x", "pow"),
    ]
    assert {d.target: d.formula for d in e.edges if d.source in ("x", "pow")} == {
        "pow": "2·x",
        "mul": "y",
    }
    assert e.output == "add_1" and e.value == 42.0
    assert e.gradients == {"x": 24.0, "y": 10.0}
    dx, dy = tk.grad(classic, argnums=(0, 1))(3.0, 4.0)
    assert (float(dx), float(dy)) == (24.0, 10.0)
    assert e.paths("x") == [(("x", "pow", "mul", "add", "add_1"), 24.0)]
    assert e.paths("y") == [(("y", "mul", "add", "add_1"), 9.0), (("y", "add", "add_1"), 1.0)]


# --- closed forms, several functions -----------------------------------------------------------


CASES = {
    "sin_exp_log": (
        lambda x, y: tf.sin(x) * tf.exp(y) + tf.math.log(x / y),
        (1.2, 0.7),
        lambda x, y: [math.cos(x) * math.exp(y) + 1 / x, math.sin(x) * math.exp(y) - 1 / y],
    ),
    "used_twice": (
        lambda x: x * x + x**x,
        (1.3,),
        lambda x: [2 * x + x**x * (math.log(x) + 1)],
    ),
    "division": (
        lambda a, b: a / b - b / (a + 1.0),
        (2.0, 3.0),
        lambda a, b: [1 / b + b / (a + 1) ** 2, -a / b**2 - 1 / (a + 1)],
    ),
    "gaussian_wave": (
        lambda x: tf.exp(-(x**2) / 2.0) * tf.cos(3.0 * x),
        (0.4,),
        lambda x: [math.exp(-x * x / 2) * (-x * math.cos(3 * x) - 3 * math.sin(3 * x))],
    ),
    "sigmoid_sqrt_tanh": (
        lambda x, y: tf.sigmoid(x * y) + tf.sqrt(x) - tf.tanh(y),
        (0.8, -0.5),
        lambda x, y: [
            _dsig(x * y) * y + 0.5 / math.sqrt(x),
            _dsig(x * y) * x - (1 - math.tanh(y) ** 2),
        ],
    ),
}


def _dsig(z: float) -> float:
    s = 1 / (1 + math.exp(-z))
    return s * (1 - s)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_gradients_match_closed_form_grad_and_finite_differences(case):
    fn, point, closed = CASES[case]
    args = [tf.constant(a, F64) for a in point]
    e = tk.explain(fn, *args)
    names = [n.name for n in e.nodes if n.kind == "input"]
    got = [e.gradients[n] for n in names]
    np.testing.assert_allclose(got, closed(*point), rtol=1e-12)
    via_grad = tk.grad(fn, argnums=tuple(range(len(args))))(*args)
    np.testing.assert_allclose(got, [float(g) for g in via_grad], rtol=1e-12)
    np.testing.assert_allclose(got, central_diff(fn, list(point)), rtol=1e-7)
    # the chain rule: sum over paths of the product of local derivatives
    for n in names:
        assert sum(p for _, p in e.paths(n)) == pytest.approx(e.gradients[n], rel=1e-12)
    assert e.value == float(fn(*args))  # float64 throughout: the same number exactly


def _expected_local(op: str, slot: int, ins: list[float]) -> float | None:
    a = ins[0]
    b = ins[1] if len(ins) > 1 else None
    table = {
        "Sin": lambda: math.cos(a),
        "Cos": lambda: -math.sin(a),
        "Exp": lambda: math.exp(a),
        "Log": lambda: 1 / a,
        "Sqrt": lambda: 0.5 / math.sqrt(a),
        "Neg": lambda: -1.0,
        "Tanh": lambda: 1 - math.tanh(a) ** 2,
        "Sigmoid": lambda: _dsig(a),
        "Mul": lambda: (b, a)[slot],
        "AddV2": lambda: 1.0,
        "Sub": lambda: (1.0, -1.0)[slot],
        "RealDiv": lambda: (1 / b, -a / b**2)[slot],
        "Pow": lambda: (b * a ** (b - 1), a**b * math.log(a))[slot],
    }
    return table[op]() if op in table else None


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_local_derivative_matches_its_closed_form(case):
    fn, point, _ = CASES[case]
    e = tk.explain(fn, *[tf.constant(a, F64) for a in point])
    nodes = by_name(e)
    checked = 0
    for d in e.edges:
        target = nodes[d.target]
        ins = [float(np.asarray(nodes[i].value)) for i in target.inputs]
        want = _expected_local(target.op, d.slot, ins)
        assert want is not None, f"no closed form for {target.op} in this test"
        assert d.local == pytest.approx(want, rel=1e-12), (d, target)
        checked += 1
    assert checked == len(e.edges) > 0


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_backward_order_and_node_gradients(case):
    fn, point, _ = CASES[case]
    e = tk.explain(fn, *[tf.constant(a, F64) for a in point])
    order = {n.name: i for i, n in enumerate(e.nodes)}
    # reverse mode: every edge out of a node is visited before any edge into it
    for i, d in enumerate(e.edges):
        assert all(later.source != d.target for later in e.edges[i + 1 :]), d
        assert order[d.source] < order[d.target]
    # ∂f/∂node of every differentiable node is the sum over its paths to the output
    for n in e.nodes:
        if n.kind in ("input", "variable", "op"):
            total = sum(p for _, p in e.paths(n.name))
            assert total == pytest.approx(n.grad, rel=1e-12, abs=1e-15), n.name


@pytest.mark.parametrize("seed", range(4))
def test_random_expressions_chain_rule_equals_grad(seed):
    rng = np.random.default_rng(seed)
    unary = [tf.sin, tf.cos, tf.tanh, lambda t: tf.exp(tf.tanh(t)), lambda t: tf.math.log1p(t * t)]

    def build(depth: int):
        if depth == 0:
            k = int(rng.integers(3))
            return lambda x, y, z: (x, y, z)[k]
        left, right = build(depth - 1), build(depth - 1)
        kind = int(rng.integers(4))
        u = unary[int(rng.integers(len(unary)))]
        if kind == 0:
            return lambda x, y, z: left(x, y, z) * right(x, y, z)
        if kind == 1:
            return lambda x, y, z: left(x, y, z) + u(right(x, y, z))
        if kind == 2:
            return lambda x, y, z: left(x, y, z) / (2.0 + tf.sin(right(x, y, z)))
        return lambda x, y, z: u(left(x, y, z)) - right(x, y, z)

    fn = build(3)
    point = [tf.constant(v, F64) for v in rng.uniform(-1, 1, size=3)]
    e = tk.explain(fn, *point)
    want = tk.grad(fn, argnums=(0, 1, 2))(*point)
    for name, g in zip(("x", "y", "z"), want):
        assert e.gradients[name] == pytest.approx(float(g), rel=1e-10, abs=1e-12)
        assert sum(p for _, p in e.paths(name)) == pytest.approx(float(g), rel=1e-10, abs=1e-12)


# --- inputs, variables, dtypes -----------------------------------------------------------------


def test_variable_is_one_node_with_its_gradient():
    w = tf.Variable(1.5, dtype=F64, name="w")

    def f(x):
        return w * x**3 + tf.tanh(w)

    e = tk.explain(f, np.float64(0.3))
    variables = [n for n in e.nodes if n.kind == "variable"]
    assert [v.name for v in variables] == ["w"]
    with tf.GradientTape() as tape:
        y = f(tf.constant(0.3, F64))
    assert e.gradients["w"] == pytest.approx(float(tape.gradient(y, w)), rel=1e-12)
    assert e.gradients["w"] == pytest.approx(0.3**3 + 1 - math.tanh(1.5) ** 2, rel=1e-12)
    assert e.gradients["x"] == pytest.approx(3 * 1.5 * 0.09, rel=1e-12)


def test_float32_values_kwargs_constants_and_unused_inputs():
    e = tk.explain(lambda x, y, n=2: x**n + 0.0 * y, 3.0, 4.0, n=3)
    assert e.gradients == {"x": 27.0, "y": 0.0}
    e = tk.explain(lambda x, y: tf.sin(x), 0.5, 1.0)  # y unused: still listed, gradient 0
    assert e.value == float(tf.sin(tf.constant(0.5)))  # computed in float32, like fn
    assert e.gradients["y"] == 0.0
    assert e.gradients["x"] == pytest.approx(math.cos(0.5), rel=1e-6)


def test_tf_where_maximum_and_reductions():
    def f(x, y):
        return tf.where(x > 0, x, -x) * y + tf.maximum(x, y) + tf.reduce_sum(x)

    e = tk.explain(f, -0.5, 2.0)
    dx, dy = tk.grad(f, argnums=(0, 1))(-0.5, 2.0)
    assert e.gradients == {"x": pytest.approx(float(dx)), "y": pytest.approx(float(dy))}
    assert by_name(e)["Greater"].kind == "discrete" and by_name(e)["Greater"].grad is None


def test_gradient_inside_fn_second_order():
    def f(x):
        return tk.grad(lambda z: z**3 * tf.sin(z))(x) * x

    e = tk.explain(f, tf.constant(0.7, F64))
    x = 0.7
    # f = x * (3x² sin x + x³ cos x)  =>  f' = 9x² sin x + 6x³ cos x - x⁴ sin x ... by hand:
    want = 9 * x**2 * math.sin(x) + 3 * x**3 * math.cos(x) + 4 * x**3 * math.cos(x)
    want -= x**4 * math.sin(x)
    assert e.gradients["x"] == pytest.approx(want, rel=1e-12)


# --- output formats ----------------------------------------------------------------------------


def test_print_table_dot_and_markdown():
    assert str(tk.explain(classic, 3.0, 4.0)).startswith("classic(x=3, y=4) = 42;  ∂classic/∂x")
    e = tk.explain(lambda x, y: x**2 * y + y + 2, 3.0, 4.0)  # a lambda is called f
    text = str(e)
    assert text.splitlines()[0] == "f(x=3, y=4) = 42;  ∂f/∂x = 24, ∂f/∂y = 10"
    assert "pow             Pow    x ** 2    9      4" in text
    assert "∂mul/∂pow = y" in text and "x → pow → mul → add → add_1  6 × 4 × 1 × 1 = 24" in text
    assert "9 + 1 = 10" in text
    dot = e.to_dot()
    assert dot.startswith('digraph "lambda" {') and dot.rstrip().endswith("}")
    assert '"x" -> "pow" [label="2·x = 6"];' in dot
    assert '"pow" [shape=box, label="pow = x ** 2\\nvalue 9\\n∂f/∂pow = 4"];' in dot
    assert "peripheries=2" in dot and "style=dashed" in dot  # output; constant inputs
    md = e.to_markdown()
    assert "| x → pow | ∂pow/∂x = 2·x | 6 | 4 × 6 = 24 |" in md
    assert sum(line.startswith("|---|") for line in md.splitlines()) == 3  # three tables


def test_log_writes_graph_and_table(tmp_path):
    e = tk.explain(classic, 3.0, 4.0)
    run = e.log(tmp_path)
    assert run == os.path.join(tmp_path, "explain_classic")
    acc = ea.EventAccumulator(run, size_guidance={ea.TENSORS: 0, ea.GRAPH: 0})
    acc.Reload()
    graph = {n.name: n.op for n in acc.Graph().node}
    # the table's node names are the op names shown in the Graphs dashboard
    for n in e.nodes:
        if n.kind == "op":
            assert graph[n.name] == n.op
    assert graph["x"] == "Placeholder"
    assert not [n for n, op in graph.items() if op == "Const" and n.split("/")[-1] in ("x", "y")]
    (event,) = acc.Tensors("explain")
    text = tf.make_ndarray(event.tensor_proto).item().decode()
    assert "| pow → mul | ∂mul/∂pow = y | 4 | 1 × 4 = 4 |" in text


# --- errors ------------------------------------------------------------------------------------


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"node `stack` \(Pack\) has shape \(2,\)"):
        tk.explain(lambda x: tf.reduce_sum(tf.stack([x, x**2])), 1.0)
    with pytest.raises(ValueError, match=r"straight-line.*StatelessIf.*tf.where"):
        tk.explain(lambda x: tf.cond(x > 0, lambda: x, lambda: -x), 1.0)
    with pytest.raises(ValueError, match=r"Python if/while on a tensor"):
        tk.explain(lambda x: x if x > 0 else -x, 1.0)
    with pytest.raises(TypeError, match=r"argument 0 \(`x`\) is a list"):
        tk.explain(lambda x: x, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"argument 0 \(`x`\) has shape \(3,\)"):
        tk.explain(lambda x: x, np.ones(3))
    with pytest.raises(TypeError, match=r"integer and bool values have no gradient"):
        tk.explain(lambda x: x, tf.constant(1))
    with pytest.raises(TypeError, match=r"return one float tensor.*tuple"):
        tk.explain(lambda x: (x, x), 1.0)
    with pytest.raises(TypeError, match="needs a callable"):
        tk.explain(3.0)
    with pytest.raises(KeyError, match="no node named 'q'"):
        tk.explain(classic, 1.0, 2.0).paths("q")
