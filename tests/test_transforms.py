"""grad, value_and_grad, partials, partial, derivative: closed forms, finite differences,
independent routes (forward mode, nested transforms), dtypes, nests, tf.function, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from _finite import central_diff
from hypothesis import given, settings
from hypothesis import strategies as st

import tapekit as tk

# --- the classic lesson ---------------------------------------------------------------------


def test_classic_lesson_variable_square():
    x = tf.Variable(3.0)
    dy_dx = tk.grad(lambda x: x**2)(x)
    assert float(dy_dx) == 6.0
    # the same with the tape's three steps
    with tf.GradientTape() as tape:
        y = x**2
    assert float(tape.gradient(y, x)) == float(dy_dx)


def test_two_variable_partials_closed_form():
    def f(x, y):
        return x**2 * y + y + 2

    d = tk.partials(f)(3.0, 4.0)
    assert set(d) == {"x", "y"}
    assert float(d["x"]) == pytest.approx(2 * 3 * 4)  # 2xy
    assert float(d["y"]) == pytest.approx(3**2 + 1)  # x² + 1
    dx, dy = tk.grad(f, argnums=(0, 1))(3.0, 4.0)
    assert (float(dx), float(dy)) == (24.0, 10.0)


# --- grad / value_and_grad ------------------------------------------------------------------


def test_grad_matches_closed_form_and_finite_differences(rng):
    a = tf.constant(rng.normal(size=(4, 3)))
    x = rng.normal(size=3)

    def f(x):
        return tf.reduce_sum(tf.tanh(tf.linalg.matvec(a, x)) ** 2) + tf.reduce_sum(x**4)

    g = tk.grad(f)(x)
    assert g.dtype == tf.float64 and g.shape == (3,)
    t = np.tanh(a.numpy() @ x)
    closed = a.numpy().T @ (2 * t * (1 - t**2)) + 4 * x**3
    np.testing.assert_allclose(g.numpy(), closed, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), central_diff(f, x), rtol=1e-7, atol=1e-8)


def test_grad_equals_forward_mode_route(rng):
    x = tf.constant(rng.normal(size=5))

    def f(x):
        return tf.reduce_sum(tf.sin(x) * tf.exp(x / 3))

    g = tk.grad(f)(x).numpy()
    fwd = [float(tk.jvp(f, (x,), (tf.one_hot(i, 5, dtype=tf.float64),))[1]) for i in range(5)]
    np.testing.assert_allclose(g, fwd, rtol=1e-12)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (3.0, tf.float32),
        (3, tf.float32),
        (np.float64(3.0), tf.float64),
        (np.array(3.0, np.float16), tf.float16),
        (tf.constant(3.0, tf.bfloat16), tf.bfloat16),
        (tf.Variable(3.0, dtype=tf.float64), tf.float64),
    ],
)
def test_dtype_is_kept(value, dtype):
    g = tk.grad(lambda x: x * x)(value)
    assert g.dtype == dtype
    assert float(g) == pytest.approx(6.0)


def test_keras_variable_argument():
    import keras

    v = keras.Variable(np.array([1.0, 2.0], np.float32))
    g = tk.grad(lambda v: tf.reduce_sum(v * v))(v)
    np.testing.assert_allclose(g.numpy(), [2.0, 4.0])


def test_nested_dict_and_list_gradients_keep_structure():
    params = {"w": np.array([1.0, 2.0]), "b": [np.float64(0.5), np.array([3.0])]}

    def loss(p):
        return tf.reduce_sum(p["w"] ** 2) * p["b"][0] + tf.reduce_sum(p["b"][1])

    g = tk.grad(loss)(params)
    assert set(g) == {"w", "b"} and isinstance(g["b"], list) and len(g["b"]) == 2
    np.testing.assert_allclose(g["w"].numpy(), [1.0, 2.0])  # 2 w * b0
    assert float(g["b"][0]) == pytest.approx(5.0)
    np.testing.assert_allclose(g["b"][1].numpy(), [1.0])
    assert g["w"].dtype == tf.float64


def test_argnums_tuple_and_negative():
    def f(a, b, c):
        return a * b**2 + c

    ga, gc = tk.grad(f, argnums=(0, -1))(2.0, 3.0, 4.0)
    assert (float(ga), float(gc)) == (9.0, 1.0)


def test_unused_argument_gets_zero_not_none():
    g = tk.grad(lambda x, y: x * 2.0, argnums=1)(1.0, np.ones(3, np.float32))
    assert g is not None and g.shape == (3,)
    np.testing.assert_array_equal(g.numpy(), np.zeros(3))
    const = tk.grad(lambda x: tf.constant(5.0))(1.0)
    assert float(const) == 0.0


def test_non_differentiated_arguments_may_be_anything():
    def f(x, n, label):
        assert label == "hello"
        return x**n

    assert float(tk.grad(f)(2.0, 3, "hello")) == 12.0


def test_value_and_grad_and_has_aux():
    def f(x):
        return x**3, {"half": x / 2}

    (value, aux), g = tk.value_and_grad(f, has_aux=True)(2.0)
    assert float(value) == 8.0 and float(aux["half"]) == 1.0 and float(g) == 12.0
    g2, aux2 = tk.grad(f, has_aux=True)(2.0)
    assert float(g2) == 12.0 and float(aux2["half"]) == 1.0
    value, g = tk.value_and_grad(lambda x: x**3)(2.0)
    assert (float(value), float(g)) == (8.0, 12.0)


def test_second_and_third_order_by_nesting():
    f = lambda x: x**4  # noqa: E731
    assert float(tk.grad(tk.grad(f))(2.0)) == pytest.approx(12 * 4)
    assert float(tk.grad(tk.grad(tk.grad(f)))(2.0)) == pytest.approx(24 * 2)


def test_grad_of_variable_captured_by_closure_is_not_watched():
    w = tf.Variable(2.0)
    g = tk.grad(lambda x: w * x**2)(3.0)
    assert float(g) == 12.0


def test_works_inside_tf_function_without_retracing():
    def f(x):
        return tf.reduce_sum(tf.sin(x) ** 2)

    traces = []

    @tf.function
    def step(x):
        traces.append(1)
        return tk.value_and_grad(f)(x)

    for i in range(4):
        x = tf.constant([0.1 * i, 0.2, 0.3])
        value, g = step(x)
        np.testing.assert_allclose(g.numpy(), np.sin(2 * x.numpy()), rtol=1e-5)
    assert len(traces) == 1


def test_variable_argument_inside_tf_function():
    v = tf.Variable([1.0, 2.0])
    step = tf.function(tk.grad(lambda v: tf.reduce_sum(v**3)))
    np.testing.assert_allclose(step(v).numpy(), [3.0, 12.0])


def test_transform_names_and_docs():
    def loss(x):
        return x

    assert tk.grad(loss).__name__ == "grad_of_loss_wrt_0"
    assert tk.grad(loss, argnums=(0,)).__name__ == "grad_of_loss_wrt_0"
    assert tk.value_and_grad(loss).__name__ == "value_and_grad_of_loss_wrt_0"
    assert "loss" in tk.grad(loss).__doc__
    assert tk.partial(lambda x, y: x, "x", "y").__name__ == "partial_of_lambda_wrt_x_y"


# --- partials / partial ---------------------------------------------------------------------


def test_partials_keyword_defaults_and_wrt():
    def f(x, y=2.0, *, z=1.0):
        return x * y * z

    d = tk.partials(f)(3.0, z=4.0)
    assert {k: float(v) for k, v in d.items()} == {"x": 8.0, "y": 12.0, "z": 6.0}
    d = tk.partials(f, wrt="y")(x=3.0)
    assert list(d) == ["y"] and float(d["y"]) == 3.0


def test_partial_mixed_higher_order_closed_forms():
    def f(x, y):
        return x**3 * y**2 + tf.sin(x * y)

    x, y = 0.7, 1.3
    xy = x * y
    assert float(tk.partial(f, "x")(x, y)) == pytest.approx(
        3 * x**2 * y**2 + y * np.cos(xy), rel=1e-5
    )
    dxy = 6 * x**2 * y + np.cos(xy) - xy * np.sin(xy)
    assert float(tk.partial(f, "x", "y")(x, y)) == pytest.approx(dxy, rel=1e-5)
    assert float(tk.partial(f, 0, 1)(x, y)) == pytest.approx(dxy, rel=1e-5)
    # f_xx = 6xy² - y² sin(xy), so ∂³f/∂x²∂y = 12xy - 2y sin(xy) - xy² cos(xy)
    d3 = 12 * x * y - 2 * y * np.sin(xy) - x * y**2 * np.cos(xy)
    assert float(tk.partial(f, "x", "x", "y")(x, y)) == pytest.approx(d3, rel=1e-5)
    # symmetry of mixed partials
    assert float(tk.partial(f, "y", "x", "x")(x, y)) == pytest.approx(d3, rel=1e-5)


def test_partial_of_tensor_parameters_has_concatenated_shape(rng):
    x = tf.constant(rng.normal(size=3))
    y = tf.constant(rng.normal(size=2))
    a = tf.constant(rng.normal(size=(3, 2)))

    def f(x, y):
        return tf.reduce_sum(x[:, None] * a * y[None, :]) + tf.reduce_sum(x**3)

    dxy = tk.partial(f, "x", "y")(x, y)
    assert dxy.shape == (3, 2) and dxy.dtype == tf.float64
    np.testing.assert_allclose(dxy.numpy(), a.numpy(), rtol=1e-12)
    dxx = tk.partial(f, "x", "x")(x, y)
    np.testing.assert_allclose(dxx.numpy(), np.diag(6 * x.numpy()), atol=1e-12)


# --- derivative -----------------------------------------------------------------------------


def test_derivative_of_tanh_up_to_third_order():
    xs = tf.constant(np.linspace(-2, 2, 9))
    t = np.tanh(xs.numpy())
    np.testing.assert_allclose(tk.derivative(tf.tanh, 0)(xs).numpy(), t)
    np.testing.assert_allclose(tk.derivative(tf.tanh)(xs).numpy(), 1 - t**2, rtol=1e-12)
    np.testing.assert_allclose(
        tk.derivative(tf.tanh, 2)(xs).numpy(), -2 * t * (1 - t**2), atol=1e-12
    )
    third = -2 * (1 - t**2) ** 2 + 4 * t**2 * (1 - t**2)
    d3 = tk.derivative(tf.tanh, 3)(xs)
    assert d3.dtype == tf.float64 and d3.shape == (9,)
    np.testing.assert_allclose(d3.numpy(), third, atol=1e-12)


def test_derivative_accepts_numbers_and_lists():
    assert float(tk.derivative(lambda x: x**3, 2)(2.0)) == 12.0
    np.testing.assert_allclose(tk.derivative(tf.exp)([0.0, 1.0]).numpy(), [1.0, np.e], rtol=1e-6)


# --- property-based: random smooth compositions --------------------------------------------

_UNARY = {
    "sin": (tf.sin, np.cos),
    "tanh": (tf.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "exp": (lambda x: tf.exp(x / 4), lambda x: np.exp(x / 4) / 4),
    "sq": (lambda x: x * x, lambda x: 2 * x),
    "softplus": (tf.math.softplus, lambda x: 1 / (1 + np.exp(-x))),
}


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(st.sampled_from(sorted(_UNARY)), min_size=1, max_size=4),
    x=st.lists(st.floats(-2, 2), min_size=1, max_size=4),
)
def test_random_compositions_match_chain_rule_and_fd(names, x):
    def elementwise(v):
        for n in names:
            v = _UNARY[n][0](v)
        return v

    def f(v):
        return tf.reduce_sum(elementwise(v))

    def chain(v):
        d = np.ones_like(v)
        for n in names:
            fn, df = _UNARY[n]
            d = d * df(v)
            v = fn(tf.constant(v)).numpy()
        return d

    x = np.asarray(x, np.float64)
    g = tk.grad(f)(x).numpy()
    np.testing.assert_allclose(g, chain(x), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g, central_diff(f, x), rtol=1e-5, atol=1e-6)
    # independent routes: elementwise derivative, and forward mode with a ones tangent
    np.testing.assert_allclose(tk.derivative(elementwise)(x).numpy(), g, rtol=1e-12, atol=1e-14)
    _, tangent = tk.jvp(elementwise, (x,), (np.ones_like(x),))
    np.testing.assert_allclose(tangent.numpy(), g, rtol=1e-12, atol=1e-14)


# --- errors ---------------------------------------------------------------------------------


def test_integer_input_raises_type_error_naming_argument():
    with pytest.raises(TypeError, match=r"argument 0 \(`x`\).*int32.*tf.cast"):
        tk.grad(lambda x: x * 2)(tf.constant(3))
    with pytest.raises(TypeError, match=r"argument 1 \(`n`\).*int64"):
        tk.grad(lambda x, n: x * 2, argnums=1)(1.0, np.array([1, 2]))
    with pytest.raises(TypeError, match=r"\['b'\].*bool"):
        tk.grad(lambda p: p["a"])({"a": 1.0, "b": True})
    with pytest.raises(TypeError, match=r"parameter `y`.*int32"):
        tk.partials(lambda x, y: x * 2)(1.0, tf.constant(2))


def test_non_scalar_output_raises_value_error_with_fix():
    for transform in (tk.grad, tk.value_and_grad):
        with pytest.raises(ValueError, match=r"scalar output.*shape \(3,\).*reduce_sum.*jacobian"):
            transform(lambda x: x * 2)(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"scalar output.*\(2,\)"):
        tk.partials(lambda x: x * 2)(np.ones(2))
    with pytest.raises(ValueError, match=r"scalar output"):
        tk.partial(lambda x: x * 2, "x")(np.ones(2))


def test_argnums_out_of_range_and_bad_names():
    with pytest.raises(ValueError, match=r"argnums=2 is out of range.*2 positional.*0\.\.1"):
        tk.grad(lambda x, y: x * y, argnums=2)(1.0, 2.0)
    with pytest.raises(ValueError, match=r"no parameter named 'z'.*\['x', 'y'\]"):
        tk.partials(lambda x, y: x * y, wrt=["z"])
    with pytest.raises(ValueError, match=r"no parameter named 'q'"):
        tk.partial(lambda x, y: x * y, "x", "q")
    with pytest.raises(ValueError, match=r"position 5 is out of range"):
        tk.partial(lambda x, y: x * y, 5)
    with pytest.raises(ValueError, match=r"at least one parameter"):
        tk.partial(lambda x: x)


def test_build_time_errors():
    with pytest.raises(TypeError, match=r"grad needs a callable `fn`.*float"):
        tk.grad(3.0)
    with pytest.raises(TypeError, match=r"argnums.*int or a non-empty tuple"):
        tk.grad(lambda x: x, argnums="x")
    with pytest.raises(TypeError, match=r"argnums"):
        tk.value_and_grad(lambda x: x, argnums=())
    with pytest.raises(ValueError, match=r"order >= 0"):
        tk.derivative(tf.sin, -1)
    with pytest.raises(TypeError, match=r"callable"):
        tk.partials(None)


def test_has_aux_needs_a_pair_and_output_must_be_float():
    with pytest.raises(ValueError, match=r"has_aux=True.*pair"):
        tk.grad(lambda x: x, has_aux=True)(1.0)
    with pytest.raises(TypeError, match=r"dtype int32"):
        tk.grad(lambda x: tf.cast(x, tf.int32))(1.0)
