"""check_grads: passes on correct derivatives, and names the worst element on wrong ones."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tapekit as tk


def test_passes_on_smooth_functions_up_to_third_order(rng):
    x = tf.constant(rng.normal(size=3))
    tk.check_grads(lambda x: tf.reduce_sum(tf.sin(x) * tf.exp(x / 2)), (x,), order=3)
    tk.check_grads(lambda x, y: {"a": x * y, "b": tf.tanh(x)}, (x, np.float64(0.5)), order=2)


def test_float32_inputs_use_float64_differences():
    x = np.array([0.3, -1.2], np.float32)
    tk.check_grads(lambda x: tf.math.softplus(x) ** 2, (x,), order=2)


def test_float32_custom_gradient_off_by_1e3_is_caught():
    @tf.custom_gradient
    def sine(x):
        return tf.sin(x), lambda dy: dy * (tf.cos(x) + 1e-3)  # wrong by 1e-3

    @tf.custom_gradient
    def right(x):
        return tf.sin(x), lambda dy: dy * tf.cos(x)

    x = np.array([0.3, -1.2, 2.0], np.float32)
    tk.check_grads(right, (x,), modes=("rev",))  # the right one passes in float32
    with pytest.raises(AssertionError, match=r"order-1 derivative of `sine` in rev mode.*x\[\d\]"):
        tk.check_grads(sine, (x,), modes=("rev",))


def test_nested_arguments():
    params = {"w": np.array([0.5, -0.4]), "b": np.float64(0.1)}
    tk.check_grads(lambda p, x: tf.tanh(p["w"] * x + p["b"]), (params, np.array([1.0, 2.0])))


def _wrong_square():
    @tf.custom_gradient
    def square(x):
        return x * x, lambda dy: dy * 3.0 * x  # wrong: should be 2x

    return square


def test_wrong_custom_gradient_is_reported_with_worst_element():
    square = _wrong_square()
    x = tf.constant([1.0, 2.0, -0.5])
    with pytest.raises(AssertionError) as info:
        tk.check_grads(lambda x: square(x), (x,), modes=("rev",))
    msg = str(info.value)
    assert "order-1 derivative" in msg and "rev mode" in msg
    # the worst element is d out[1] / d x[1]: analytic 3*2 = 6, numerical 2*2 = 4
    assert "∂out[1] / ∂x[1]" in msg and "analytic 6" in msg and "numerical 4" in msg
    assert "3 of 9 elements" in msg


def test_wrong_second_derivative_is_caught_at_order_two():
    @tf.custom_gradient
    def cube(x):
        def grad(dy):
            return dy * 3.0 * tf.stop_gradient(x) ** 2  # first derivative right, second lost

        return x**3, grad

    x = tf.constant([1.5], tf.float64)
    tk.check_grads(cube, (x,), order=1, modes=("rev",))
    with pytest.raises(AssertionError, match=r"order-2 derivative.*∂²out\[0\] / ∂x\[0\] ∂x\[0\]"):
        tk.check_grads(cube, (x,), order=2, modes=("rev",))


def test_stable_custom_gradient_passes():
    @tf.custom_gradient
    def log1pexp(x):
        e = tf.exp(-tf.abs(x))
        value = tf.maximum(x, 0.0) + tf.math.log1p(e)
        return value, lambda dy: dy * tf.sigmoid(x)

    tk.check_grads(log1pexp, (tf.constant([-3.0, 0.0, 5.0], tf.float64),), modes=("rev",))


def test_argument_errors():
    with pytest.raises(TypeError, match=r"`args` as a tuple.*\(x,\)"):
        tk.check_grads(tf.sin, 1.0)
    with pytest.raises(ValueError, match=r"order >= 1"):
        tk.check_grads(tf.sin, (1.0,), order=0)
    with pytest.raises(ValueError, match=r"modes"):
        tk.check_grads(tf.sin, (1.0,), modes=("backward",))
    with pytest.raises(TypeError, match=r"argument 0.*int32"):
        tk.check_grads(tf.sin, (tf.constant([1, 2]),))
    with pytest.raises(ValueError, match=r"smaller inputs"):
        tk.check_grads(tf.sin, (np.zeros(1000),), order=2)
