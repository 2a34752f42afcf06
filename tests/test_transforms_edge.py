"""Edge cases of the derivative transforms, checked like a demanding JAX user would.

grad, value_and_grad, partials, partial, derivative, jvp, vjp and check_grads on every float
dtype, Python/NumPy scalars, variables (tf and Keras), nests (dict, list, tuple, namedtuple,
OrderedDict, defaultdict, empty, deep, mixed leaves), argnums, has_aux, kwargs/defaults/*args,
higher-order nesting, tf.function and XLA, and error messages. Ground truth: closed forms,
float64 central differences and, when it is installed, JAX.
"""

from __future__ import annotations

import collections
import contextlib
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from _finite import central_diff

import tapekit as tk

FLOATS = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def _np(x) -> np.ndarray:
    return np.asarray(tf.cast(x, tf.float64).numpy())


@contextlib.contextmanager
def _jax64():
    """JAX (skipped when not installed) with float64 enabled only inside the block."""
    jax = pytest.importorskip("jax")
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older JAX
        from jax.experimental import enable_x64 as ctx
    with ctx(True):
        yield jax, jax.numpy


# --- dtypes: every float dtype, every kind of leaf ------------------------------------------


def _leaf(kind: str, dtype: tf.DType):
    values = [1.0, 2.0]
    if kind == "numpy":
        return np.array(values, dtype.as_numpy_dtype)
    if kind == "tensor":
        return tf.constant(values, dtype)
    if kind == "tf.Variable":
        return tf.Variable(values, dtype=dtype)
    return keras.Variable(values, dtype=dtype.name)


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("kind", ["numpy", "tensor", "tf.Variable", "keras.Variable"])
def test_grad_keeps_every_float_dtype_of_every_kind_of_leaf(kind, dtype):
    g = tk.grad(lambda v: tf.reduce_sum(v**3))(_leaf(kind, dtype))
    assert g.dtype == dtype and g.shape == (2,)
    np.testing.assert_array_equal(_np(g), [3.0, 12.0])  # 3 v², exact in every dtype
    # the same leaf inside a dict (a ResourceVariable inside a dict of parameters)
    gd = tk.grad(lambda p: tf.reduce_sum(p["w"] ** 2) * p["s"])(
        {"w": _leaf(kind, dtype), "s": tf.constant(3.0, dtype)}
    )
    assert gd["w"].dtype == dtype and gd["s"].dtype == dtype
    np.testing.assert_array_equal(_np(gd["w"]), [6.0, 12.0])
    assert float(gd["s"]) == 5.0


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (lambda: 3, tf.float32),
        (lambda: 3.0, tf.float32),
        (lambda: np.float16(3.0), tf.float16),
        (lambda: np.float32(3.0), tf.float32),
        (lambda: np.float64(3.0), tf.float64),
        (lambda: np.array(3.0), tf.float64),  # 0-d array
        (lambda: np.array(3.0, np.float32), tf.float32),
        (lambda: tf.Variable(3.0, trainable=False), tf.float32),  # passed, so differentiated
        (lambda: keras.Variable(3.0, trainable=False), tf.float32),
    ],
    ids=[
        "int",
        "float",
        "np.float16",
        "np.float32",
        "np.float64",
        "0-d float64",
        "0-d float32",
        "non-trainable tf.Variable",
        "non-trainable keras.Variable",
    ],
)
def test_scalars_of_every_kind_keep_or_get_their_dtype(make, dtype):
    (val, g) = tk.value_and_grad(lambda x: x**3)(make())
    assert g.dtype == dtype and val.dtype == dtype and g.shape == ()
    assert float(val) == 27.0 and float(g) == 27.0


def test_numpy_bfloat16_array_is_differentiated_in_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    g = tk.grad(lambda x: tf.reduce_sum(x * x))(np.array([1.5, 2.0], ml_dtypes.bfloat16))
    assert g.dtype == tf.bfloat16
    np.testing.assert_array_equal(_np(g), [3.0, 4.0])


def test_float64_in_float64_out_for_every_transform():
    x = np.array([0.3, 0.7])
    f = lambda x: tf.reduce_sum(tf.sin(x) ** 2)  # noqa: E731
    assert tk.grad(f)(x).dtype == tf.float64
    value, g = tk.value_and_grad(f)(x)
    assert value.dtype == tf.float64 and g.dtype == tf.float64
    assert tk.partials(lambda x, y: f(x) * y)(x, np.float64(2.0))["y"].dtype == tf.float64
    assert tk.partial(f, "x", "x")(x).dtype == tf.float64
    assert tk.derivative(tf.sin, 3)(x).dtype == tf.float64
    out, t = tk.jvp(tf.sin, (x,), (1.0 * np.ones(2),))
    assert out.dtype == t.dtype == tf.float64
    out, vjp_fn = tk.vjp(tf.sin, x)
    assert vjp_fn(np.ones(2))[0].dtype == tf.float64


# --- nests ----------------------------------------------------------------------------------

Params = collections.namedtuple("Params", ["w", "b"])


def test_namedtuple_ordereddict_and_deep_mixed_nests_keep_types_and_values():
    v = tf.Variable([1.0, -1.0], dtype=tf.float64)
    params = collections.OrderedDict(
        [
            ("z", Params(w=v, b=np.float64(0.5))),
            ("a", [np.array([2.0]), (tf.constant(3.0, tf.float64), [np.float64(4.0)])]),
        ]
    )

    def f(p):
        w, b = p["z"]
        a0, (a1, (a2,)) = p["a"][0], p["a"][1]
        return tf.reduce_sum(w**2) * b + tf.reduce_sum(a0) * a1 * a2

    g = tk.grad(f)(params)
    assert type(g) is collections.OrderedDict and list(g) == ["z", "a"]
    assert type(g["z"]) is Params and type(g["a"]) is list and type(g["a"][1]) is tuple
    assert type(g["a"][1][1]) is list
    np.testing.assert_allclose(g["z"].w.numpy(), [1.0, -1.0])  # 2 w b
    assert float(g["z"].b) == 2.0  # Σ w²
    np.testing.assert_allclose(g["a"][0].numpy(), [12.0])  # a1 a2
    assert float(g["a"][1][0]) == 8.0 and float(g["a"][1][1][0]) == 6.0
    assert all(t.dtype == tf.float64 for t in tf.nest.flatten(g))


def test_gradient_of_a_nest_matches_float64_central_differences(rng):
    params = {"w": rng.normal(size=3), "b": [rng.normal(size=2), np.float64(0.3)]}

    def loss(p):
        h = tf.tanh(p["w"][:2] * p["b"][0] + p["b"][1])
        return tf.reduce_sum(h**2) + tf.reduce_sum(tf.sin(p["w"])) * p["b"][1]

    g = tk.grad(loss)(params)
    for path in (("w",), ("b", 0), ("b", 1)):

        def along(leaf, path=path):
            moved = {"w": params["w"], "b": list(params["b"])}
            if path == ("w",):
                moved["w"] = leaf
            else:
                moved["b"][path[1]] = leaf
            return loss(moved)

        got = g[path[0]] if len(path) == 1 else g[path[0]][path[1]]
        leaf = params[path[0]] if len(path) == 1 else params[path[0]][path[1]]
        np.testing.assert_allclose(got.numpy(), central_diff(along, leaf), rtol=1e-7, atol=1e-9)


def test_empty_containers_get_empty_gradients():
    f = lambda p, x: x * 2.0  # noqa: E731
    for empty in ({}, [], ()):
        gp, gx = tk.grad(f, argnums=(0, 1))(empty, 1.0)
        assert gp == empty and type(gp) is type(empty) and float(gx) == 2.0


def test_defaultdict_parameters_are_a_dict_like_any_other():
    params = collections.defaultdict(float, {"w": 2.0, "b": 3.0})
    g = tk.grad(lambda p: p["w"] * p["b"])(params)
    assert set(g) == {"w", "b"}
    assert (float(g["w"]), float(g["b"])) == (3.0, 2.0)


# --- the same tensor at two differentiated places ------------------------------------------
# JAX differentiates each position (each leaf) separately: d(a*b)/da at a = b = x is b = x.


def test_same_tensor_at_two_argnums_gets_the_partial_derivative_of_each_position():
    x = tf.constant(2.0)
    ga, gb = tk.grad(lambda a, b: a * b**2, argnums=(0, 1))(x, x)
    assert (float(ga), float(gb)) == (4.0, 8.0)  # b², 2ab
    (value, (ga, gb)) = tk.value_and_grad(lambda a, b: a * b, argnums=(0, 1))(x, x)
    assert (float(value), float(ga), float(gb)) == (4.0, 2.0, 2.0)
    step = tf.function(lambda x: tk.grad(lambda a, b: a * b**2, argnums=(0, 1))(x, x))
    assert [float(g) for g in step(x)] == [4.0, 8.0]


def test_same_tensor_twice_in_one_nest_gets_per_leaf_gradients():
    x = tf.constant(2.0)
    g = tk.grad(lambda p: p[0] * p[1] ** 2)([x, x])
    assert [float(t) for t in g] == [4.0, 8.0]


def test_same_tensor_for_two_parameters_of_partials_and_partial():
    x = tf.constant(2.0)
    d = tk.partials(lambda x, y: x * y**2)(x, x)
    assert (float(d["x"]), float(d["y"])) == (4.0, 8.0)
    assert float(tk.partial(lambda x, y: x * y**2, "x", "y")(x, x)) == 4.0  # 2y


def test_same_tensor_as_two_primals_of_jvp_and_vjp():
    x = tf.constant(2.0)
    out, t = tk.jvp(lambda a, b: a * b**2, (x, x), (1.0, 0.0))
    assert (float(out), float(t)) == (8.0, 4.0)
    _, vjp_fn = tk.vjp(lambda a, b: a * b**2, x, x)
    assert [float(g) for g in vjp_fn(1.0)] == [4.0, 8.0]


def test_repeated_argnums_give_the_same_gradient_twice():
    g0, g0_again = tk.grad(lambda a, b: a * b * b, argnums=(0, 0))(3.0, 2.0)
    assert float(g0) == float(g0_again) == 4.0


# --- argnums, kwargs, defaults, *args ------------------------------------------------------


def test_argnums_forms_and_out_of_range_messages():
    f = lambda a, b, c: a * b**2 + c**3  # noqa: E731
    gb, gc = tk.grad(f, argnums=[1, -1])(1.0, 2.0, 3.0)  # a list works like a tuple
    assert (float(gb), float(gc)) == (4.0, 27.0)
    assert float(tk.grad(f, argnums=-2)(1.0, 2.0, 3.0)) == 4.0
    with pytest.raises(ValueError, match=r"argnums=-4 is out of range.*3 positional.*0\.\.2"):
        tk.grad(f, argnums=-4)(1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match=r"argnums=0 .*0 positional.*positionally"):
        tk.grad(f)(a=1.0, b=2.0, c=3.0)
    with pytest.raises(TypeError, match=r"argnums.*True"):
        tk.grad(f, argnums=True)
    with pytest.raises(TypeError, match=r"argnums.*\(0, 'b'\)"):
        tk.grad(f, argnums=(0, "b"))


def test_kwargs_defaults_keyword_only_and_varargs_are_passed_through():
    def f(x, scale=2.0, *rest, shift, power=2):
        return scale * x**power + shift + sum(rest)

    g = tk.grad(f)(3.0, 1.0, shift=tf.constant(5.0), power=3)
    assert float(g) == 27.0  # 3 scale x²
    gx, gr = tk.grad(f, argnums=(0, 3))(3.0, 1.0, 7.0, 8.0, shift=0.0)
    assert (float(gx), float(gr)) == (6.0, 1.0)
    d = tk.partials(f)(3.0, shift=1.0)  # default scale=2.0, power=2 are used
    assert {k: float(v) for k, v in d.items()} == {
        "x": 12.0,
        "scale": 9.0,
        "shift": 1.0,
        "power": pytest.approx(2.0 * 9.0 * np.log(3.0), rel=1e-6),
    }
    assert float(tk.partial(f, "shift")(3.0, shift=1.0)) == 1.0
    assert float(tk.partial(f, "scale", "x")(3.0, shift=1.0)) == 6.0  # 2x
    assert list(inspect.signature(tk.grad(f)).parameters) == list(inspect.signature(f).parameters)


def test_has_aux_passes_nested_aux_through_untouched():
    marker = object()

    def f(x, y):
        return x * y, {"parts": [x, (y, "label")], "obj": marker, "none": None}

    (value, aux), (gx, gy) = tk.value_and_grad(f, argnums=(0, 1), has_aux=True)(2.0, 3.0)
    assert float(value) == 6.0 and (float(gx), float(gy)) == (3.0, 2.0)
    assert aux["obj"] is marker and aux["none"] is None and aux["parts"][1][1] == "label"
    assert float(aux["parts"][0]) == 2.0
    g, aux = tk.grad(lambda x: [x**2, 7], has_aux=True)(3.0)  # a list pair works too
    assert float(g) == 6.0 and aux == 7


# --- higher order, tf.function, XLA ---------------------------------------------------------


def _f(x):
    return tf.sin(x) * x**2


def _d(k: int, x: float) -> float:
    s, c = np.sin(x), np.cos(x)
    return [
        s * x**2,
        2 * x * s + x**2 * c,
        2 * s + 4 * x * c - x**2 * s,
        6 * c - 6 * x * s - x**2 * c,
        -12 * s - 8 * x * c + x**2 * s,
    ][k]


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x,
        lambda x: tf.Variable(x),
        lambda x: keras.Variable(x, dtype="float64"),
    ],
    ids=["tensor", "tf.Variable", "keras.Variable"],
)
def test_nested_transforms_match_closed_forms(make):
    x0 = 0.7
    x = make(tf.constant(x0, tf.float64))
    ggg = tk.grad(tk.grad(tk.grad(_f)))(x)
    assert ggg.dtype == tf.float64
    assert float(ggg) == pytest.approx(_d(3, x0), rel=1e-12)
    assert float(tk.grad(lambda x: tk.value_and_grad(_f)(x)[1])(x)) == pytest.approx(
        _d(2, x0), rel=1e-12
    )
    _, hvp = tk.jvp(tk.grad(tk.grad(_f)), (x,), (1.0,))  # forward over reverse
    assert float(hvp) == pytest.approx(_d(3, x0), rel=1e-12)
    _, fourth = tk.jvp(tk.grad(tk.grad(tk.grad(_f))), (x,), (1.0,))
    assert float(fourth) == pytest.approx(_d(4, x0), rel=1e-12)
    rev_over_fwd = tk.grad(lambda x: tk.jvp(_f, (x,), (1.0,))[1])(x)
    assert float(rev_over_fwd) == pytest.approx(_d(2, x0), rel=1e-12)
    rev_over_vjp = tk.grad(lambda x: tk.vjp(_f, x)[1](1.0)[0])(x)
    assert float(rev_over_vjp) == pytest.approx(_d(2, x0), rel=1e-12)


def test_transforms_inside_and_around_tf_function_and_xla():
    x0 = 0.7
    x = tf.constant(x0, tf.float64)
    expected = pytest.approx(_d(2, x0), rel=1e-12)
    assert float(tf.function(tk.grad(tk.grad(_f)))(x)) == expected
    assert float(tf.function(tk.grad(tk.grad(_f)), jit_compile=True)(x)) == expected
    assert float(tk.grad(tk.grad(tf.function(_f)))(x)) == expected
    assert float(tk.grad(tk.grad(tk.grad(tf.function(_f))))(x)) == pytest.approx(
        _d(3, x0), rel=1e-12
    )
    (v, aux), g = tf.function(
        tk.value_and_grad(lambda x: (_f(x), {"x": [x]}), has_aux=True), jit_compile=True
    )(x)
    assert float(v) == pytest.approx(_d(0, x0)) and float(aux["x"][0]) == x0
    assert float(g) == pytest.approx(_d(1, x0), rel=1e-12)


@pytest.mark.parametrize("fn", [tf.tanh, tf.sin, lambda x: x**3], ids=["tanh", "sin", "cube"])
def test_derivative_wrapped_directly_in_tf_function(fn):
    xs = tf.constant([0.3, -1.1], tf.float64)
    eager = tk.derivative(fn, 2)(xs)
    compiled = tf.function(tk.derivative(fn, 2))(xs)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-12)
    xla = tf.function(lambda x: tk.derivative(fn, 3)(x), jit_compile=True)(xs)
    np.testing.assert_allclose(xla.numpy(), tk.derivative(fn, 3)(xs).numpy(), rtol=1e-12)


# --- partial --------------------------------------------------------------------------------


def test_partial_repeated_names_and_positions_mixed():
    def f(x, y):
        return x**3 * y**4

    x, y = 2.0, 1.5
    # ∂⁴f/∂x²∂y² = 6x * 12y²
    for wrt in [("x", "x", "y", "y"), (0, 0, 1, 1), ("y", 0, "y", "x"), (1, "x", 1, 0)]:
        assert float(tk.partial(f, *wrt)(x, y)) == pytest.approx(6 * x * 12 * y**2, rel=1e-6)
    assert float(tk.partial(f, "x", "x", "x", "x")(x, y)) == 0.0  # d⁴/dx⁴ x³, x ≠ 0


def test_partial_of_vector_parameters_third_order_closed_form(rng):
    x = rng.normal(size=3)
    y = rng.normal(size=2)
    a = rng.normal(size=(3, 2))

    def f(x, y):
        return tf.reduce_sum(x[:, None] ** 2 * a * y[None, :] ** 2)

    # f = Σ_ij a_ij x_i² y_j²  →  ∂³f/∂x_i ∂y_j ∂x_k = 4 a_ij y_j δ_ik
    d = tk.partial(f, "x", "y", "x")(x, y)
    assert d.shape == (3, 2, 3) and d.dtype == tf.float64
    expected = np.einsum("ij,j,ik->ijk", 4 * a, y, np.eye(3))
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-12)
    d2 = tk.partial(f, "y", "y")(x, y)
    np.testing.assert_allclose(d2.numpy(), np.diag(2 * (x**2) @ a), atol=1e-12)


def test_partial_and_grad_against_jax(rng):
    with _jax64() as (jax, jnp):
        x, y = rng.normal(size=3), rng.normal(size=3)

        def f_tf(x, y):
            return tf.reduce_sum(tf.sin(x) * tf.exp(y[0]) + tf.tanh(x * y[1]) ** 2) + y[2] ** 2

        def f_j(x, y):
            return jnp.sum(jnp.sin(x) * jnp.exp(y[0]) + jnp.tanh(x * y[1]) ** 2) + y[2] ** 2

        gx, gy = tk.grad(f_tf, argnums=(0, 1))(x, y)
        jx, jy = jax.grad(f_j, argnums=(0, 1))(x, y)
        np.testing.assert_allclose(gx.numpy(), jx, rtol=1e-12)
        np.testing.assert_allclose(gy.numpy(), jy, rtol=1e-12)
        expected = jax.jacfwd(jax.grad(f_j, 0), 1)(x, y)
        np.testing.assert_allclose(
            tk.partial(f_tf, "x", "y")(x, y).numpy(), expected, rtol=1e-10, atol=1e-12
        )


# --- derivative -----------------------------------------------------------------------------

# A 2-D grid without an exact 0: TensorFlow's Pow gradient computes d/dx x**0 as 0 * x**-1, which
# is NaN at x = 0, so d^k/dx^k x**n at 0 is NaN for k > n (a TensorFlow limitation, not tapekit's).
_XS = np.linspace(-2.05, 2.1, 12).reshape(3, 4)


def _tanh_derivatives(x):
    t = np.tanh(x)
    s = 1 - t**2
    return [t, s, -2 * t * s, -2 * s**2 + 4 * t**2 * s, 16 * t * s**2 - 8 * t**3 * s]


def _sin_derivatives(x):
    return [np.sin(x), np.cos(x), -np.sin(x), -np.cos(x), np.sin(x)]


def _poly_derivatives(x):
    return [
        3 * x**4 - 2 * x**3 + x - 5,
        12 * x**3 - 6 * x**2 + 1,
        36 * x**2 - 12 * x,
        72 * x - 12,
        72 * np.ones_like(x),
    ]


@pytest.mark.parametrize(
    ("fn", "closed"),
    [
        (tf.tanh, _tanh_derivatives),
        (tf.sin, _sin_derivatives),
        (lambda x: 3 * x**4 - 2 * x**3 + x - 5, _poly_derivatives),
    ],
    ids=["tanh", "sin", "poly"],
)
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
def test_derivative_orders_0_to_4_on_a_float64_grid(fn, closed, order):
    d = tk.derivative(fn, order)(_XS)
    assert d.dtype == tf.float64 and d.shape == _XS.shape
    np.testing.assert_allclose(d.numpy(), closed(_XS)[order], rtol=1e-11, atol=1e-11)


def test_derivative_of_float32_points_and_against_jax():
    xs32 = _XS.astype(np.float32)
    d = tk.derivative(tf.tanh, 2)(xs32)
    assert d.dtype == tf.float32
    np.testing.assert_allclose(d.numpy(), _tanh_derivatives(_XS)[2], atol=1e-5)
    with _jax64() as (jax, jnp):
        f4 = jax.grad(jax.grad(jax.grad(jax.grad(lambda x: jnp.exp(jnp.sin(x)) * x))))
        expected = jax.vmap(f4)(_XS.reshape(-1)).reshape(_XS.shape)
        got = tk.derivative(lambda x: tf.exp(tf.sin(x)) * x, 4)(_XS)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-11, atol=1e-11)


def test_derivative_keeps_the_dtype_of_a_list_of_float64_points():
    d = tk.derivative(tf.sin)([np.float64(0.1), np.float64(0.2)])
    assert d.dtype == tf.float64
    d = tk.derivative(tf.sin)([tf.constant(0.1, tf.float64), tf.constant(0.2, tf.float64)])
    assert d.dtype == tf.float64
    np.testing.assert_allclose(d.numpy(), np.cos([0.1, 0.2]), rtol=1e-12)
    d = tk.derivative(tf.sin)([0, 1])  # Python ints are float32 points
    assert d.dtype == tf.float32


# --- jvp / vjp ------------------------------------------------------------------------------


def _fn(p, z):
    return {"a": tf.sin(p.w) * z, "b": (tf.reduce_sum(p.b[0] * p.w) ** 2, [tf.tanh(z)])}


def _fn_closed(p, z, tp, tz):
    s = float(np.sum(p.b[0] * p.w))
    return {
        "a": np.cos(p.w) * tp.w * z + np.sin(p.w) * tz,
        "b": (2 * s * float(np.sum(tp.b[0] * p.w + p.b[0] * tp.w)), [(1 - np.tanh(z) ** 2) * tz]),
    }


def test_jvp_nested_primals_python_float_tangents_and_nested_outputs(rng):
    p = Params(w=rng.normal(size=3), b=[rng.normal(size=3)])
    tp = Params(w=rng.normal(size=3), b=[rng.normal(size=3)])
    z = np.float64(0.4)
    out, tangent = tk.jvp(_fn, (p, z), (tp, 0.3))  # a Python float tangent for a float64 primal
    assert tf.nest.map_structure(lambda _: 0, out) == {"a": 0, "b": (0, [0])}
    assert all(t.dtype == tf.float64 for t in tf.nest.flatten(tangent))
    closed = _fn_closed(p, z, tp, 0.3)
    for got, want in zip(tf.nest.flatten(tangent), tf.nest.flatten(closed)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_vjp_nested_agrees_with_jvp_and_jax(rng):
    p = Params(w=rng.normal(size=3), b=[rng.normal(size=3)])
    z = np.float64(-0.8)
    cot = {"a": rng.normal(size=3), "b": (1.5, [-0.5])}  # numbers as cotangents
    out, vjp_fn = tk.vjp(_fn, p, z)
    gp, gz = vjp_fn(cot)
    assert type(gp) is Params and type(gp.b) is list and gz.dtype == tf.float64
    # <J t, c> = <t, Jᵀ c> for random t
    tp = Params(w=rng.normal(size=3), b=[rng.normal(size=3)])
    tz = 0.7
    _, jt = tk.jvp(_fn, (p, z), (tp, tz))
    lhs = sum(
        float(np.sum(a.numpy() * np.asarray(b)))
        for a, b in zip(tf.nest.flatten(jt), tf.nest.flatten(cot))
    )
    rhs = sum(
        float(np.sum(a.numpy() * np.asarray(b)))
        for a, b in zip(tf.nest.flatten((gp, gz)), tf.nest.flatten((tp, tz)))
    )
    assert lhs == pytest.approx(rhs, rel=1e-12)
    with _jax64() as (jax, jnp):

        def fn_j(p, z):
            return {"a": jnp.sin(p[0]) * z, "b": (jnp.sum(p[1][0] * p[0]) ** 2, [jnp.tanh(z)])}

        _, vj = jax.vjp(fn_j, (p.w, [p.b[0]]), z)
        jcot = {"a": cot["a"], "b": (np.float64(1.5), [np.float64(-0.5)])}
        (jw, [jb]), jz = vj(jcot)
        np.testing.assert_allclose(gp.w.numpy(), jw, rtol=1e-12)
        np.testing.assert_allclose(gp.b[0].numpy(), jb, rtol=1e-12)
        assert float(gz) == pytest.approx(float(jz), rel=1e-12)


def test_jvp_vjp_identity_swapped_repeated_and_unconnected_outputs():
    def f(p):
        y = p[0] * p[1]
        return (p[1], p[0], y, y, tf.ones(2))  # identity, swap, same tensor twice, constant

    out, t = tk.jvp(f, ((2.0, 3.0),), ((1.0, 10.0),))
    assert [float(v) for v in t[:4]] == [10.0, 1.0, 23.0, 23.0]
    np.testing.assert_array_equal(t[4].numpy(), [0.0, 0.0])
    _, vjp_fn = tk.vjp(f, (2.0, 3.0))
    ((g0, g1),) = vjp_fn((5.0, 7.0, 1.0, 2.0, np.ones(2, np.float32)))
    assert (float(g0), float(g1)) == (7.0 + 3.0 * 3, 5.0 + 2.0 * 3)


def test_vjp_densifies_gathered_variables_and_keeps_working():
    v = tf.Variable([1.0, 2.0, 3.0])
    _, vjp_fn = tk.vjp(lambda v: tf.gather(v, [0, 0, 2]), v)
    for c in (1.0, 2.0):
        (g,) = vjp_fn(np.full(3, c, np.float32))
        assert isinstance(g, tf.Tensor)
        np.testing.assert_array_equal(g.numpy(), [2 * c, 0.0, c])


def test_jvp_tangent_and_vjp_cotangent_dicts_must_have_the_same_keys():
    with pytest.raises(ValueError, match=r"tangent 0.*'b'.*'c'|tangent 0.*'c'.*'b'"):
        tk.jvp(lambda p: p["a"] * p["b"], ({"a": 2.0, "b": 3.0},), ({"a": 0.0, "c": 1.0},))
    _, vjp_fn = tk.vjp(lambda x: {"a": x, "b": 2.0 * x}, 1.0)
    with pytest.raises(ValueError, match=r"cotangent.*'b'.*'c'|cotangent.*'c'.*'b'"):
        vjp_fn({"a": 0.0, "c": 1.0})


def test_jvp_tangent_errors_name_the_leaf():
    with pytest.raises(TypeError, match=r"tangent 0.*float32.*float64.*tf.cast"):
        tk.jvp(lambda p: p["w"], ({"w": np.ones(2)},), ({"w": tf.ones(2)},))
    with pytest.raises(ValueError, match=r"tangent 1.*shape \(3,\).*\(2,\)"):
        tk.jvp(lambda a, b: a * b, (1.0, np.ones(2)), (1.0, np.ones(3)))


# --- check_grads ----------------------------------------------------------------------------


def _square_with_gradient(factor: float):
    @tf.custom_gradient
    def square(x):
        return x * x, lambda dy: dy * factor * x

    return square


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_grads_catches_a_wrong_custom_gradient_in_nested_args(dtype):
    wrong = _square_with_gradient(3.0)  # d(x²)/dx claimed 3x
    params = {"w": np.array([0.5, -0.3], dtype), "b": [dtype(0.1)]}

    def f(p, x):
        return wrong(p["w"] * x + p["b"][0])

    with pytest.raises(AssertionError, match=r"order-1.*rev mode.*∂out\[1\] / ∂p\['w'\]\[1\]"):
        tk.check_grads(f, (params, np.array([1.0, 2.0], dtype)))  # default modes include rev
    right = _square_with_gradient(2.0)
    args = (params, dtype(1.5))
    tk.check_grads(lambda p, x: right(p["w"] * x + p["b"][0]), args)
    tk.check_grads(lambda p, x: right(p["w"] * x + p["b"][0]), args, order=2, modes="rev")


def test_check_grads_finds_the_first_wrong_order():
    @tf.custom_gradient
    def quartic(x):
        def grad(dy):
            @tf.custom_gradient
            def first(x):  # 4x³, whose own derivative 12x² is right but loses the 3rd order
                return 4.0 * x**3, lambda dz: dz * 12.0 * tf.stop_gradient(x) ** 2

            return dy * first(x)

        return x**4, grad

    x = tf.constant([1.5, 0.7], tf.float64)
    tk.check_grads(quartic, (x,), order=2)
    for mode in ("rev", "fwd"):
        with pytest.raises(
            AssertionError, match=rf"order-3.*{mode} mode.*analytic 0, numerical 36"
        ):
            tk.check_grads(quartic, (x,), order=3, modes=(mode,))


def test_check_grads_of_functions_that_compute_in_float32():
    # Correct derivatives must pass even when fn casts to float32 internally (as Keras layers do).
    layer = keras.layers.Dense(3, activation="tanh")
    layer.build((None, 3))
    x = np.array([[0.3, 1.3, -0.7]], np.float32)
    tk.check_grads(lambda x: tf.reduce_sum(layer(x) ** 2), (x,), modes=("rev",))
    tk.check_grads(lambda x: tf.tanh(tf.cast(x, tf.float32) * 1.7) * 3.0, (x[0],), order=2)


def test_check_grads_with_float32_and_float64_arguments():
    tk.check_grads(
        lambda x, y: tf.cast(x, tf.float64) * tf.sin(y),
        (np.float32(0.5), np.array([0.3, 1.1])),
    )


# --- error messages -------------------------------------------------------------------------


def test_integer_leaf_deep_in_a_nest_is_named_with_its_path():
    params = {"layer": [{"w": tf.Variable([1, 2])}]}
    with pytest.raises(TypeError, match=r"argument 0 \(`p`\)\['layer'\]\[0\]\['w'\].*int32.*cast"):
        tk.grad(lambda p: 1.0)(params)
    with pytest.raises(TypeError, match=r"argument 1 \(`flag`\).*bool"):
        tk.grad(lambda x, flag: x, argnums=(0, 1))(1.0, np.bool_(True))
    with pytest.raises(TypeError, match=r"primal 0\.b.*int64"):
        tk.jvp(lambda p: p.w, (Params(1.0, np.array([1])),), (Params(1.0, np.array([1])),))


def test_returning_a_tuple_without_has_aux_says_so():
    with pytest.raises((TypeError, ValueError), match=r"tuple.*has_aux=True"):
        tk.grad(lambda x: (x * x, x))(1.0)


def test_has_aux_output_must_be_a_pair_and_value_a_scalar():
    with pytest.raises(ValueError, match=r"has_aux=True.*pair.*tuple"):
        tk.value_and_grad(lambda x: (x, 1.0, 2.0), has_aux=True)(1.0)
    with pytest.raises(ValueError, match=r"scalar output.*\(2,\)"):
        tk.grad(lambda x: (x, "aux"), has_aux=True)(np.ones(2))
