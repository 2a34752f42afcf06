"""linearize: fn runs once, jvp_fn equals jvp, closed forms, JAX as the oracle, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tapekit


def _counted():
    calls = []

    def fn(x, p):
        calls.append(1)
        return {"a": tf.sin(x) * p["w"], "b": tf.reduce_sum(x**2) + p["c"]}

    return fn, calls


def _point(dtype=tf.float64):
    x = tf.constant([1.0, 2.0], dtype)
    p = {"w": tf.constant([3.0, 4.0], dtype), "c": tf.constant(1.0, dtype)}
    return x, p


def test_fn_runs_once_and_every_jvp_equals_jvp(rng):
    fn, calls = _counted()
    x, p = _point()
    out, jvp_fn = tapekit.linearize(fn, x, p)
    assert len(calls) == 1
    np.testing.assert_allclose(out["a"], np.sin(x.numpy()) * p["w"].numpy())
    tangents = []
    for _ in range(3):
        t = (
            tf.constant(rng.normal(size=2)),
            {"w": tf.constant(rng.normal(size=2)), "c": tf.constant(np.float64(rng.normal()))},
        )
        tangents.append(t)
        got = jvp_fn(*t)
        assert got["a"].dtype == tf.float64 and got["b"].dtype == tf.float64
        tangents.append(got)
    assert len(calls) == 1  # jvp_fn never ran fn again
    for t, got in zip(tangents[::2], tangents[1::2]):
        _, want = tapekit.jvp(fn, (x, p), t)
        np.testing.assert_allclose(got["a"], want["a"], rtol=1e-12)
        np.testing.assert_allclose(got["b"], want["b"], rtol=1e-12)
        dx, dp = t[0].numpy(), {k: v.numpy() for k, v in t[1].items()}
        closed_a = np.cos(x.numpy()) * p["w"].numpy() * dx + np.sin(x.numpy()) * dp["w"]
        closed_b = np.sum(2 * x.numpy() * dx) + dp["c"]
        np.testing.assert_allclose(got["a"], closed_a, rtol=1e-12)
        np.testing.assert_allclose(got["b"], closed_b, rtol=1e-12)


def test_matches_jax_linearize(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    A = rng.normal(size=(3, 4)).astype(np.float32)
    x = rng.normal(size=(4,)).astype(np.float32)
    t = rng.normal(size=(4,)).astype(np.float32)
    out, jvp_fn = tapekit.linearize(lambda x: tf.tanh(tf.linalg.matvec(A, x)) ** 2, x)
    j_out, j_jvp = jax.linearize(lambda x: jnp.tanh(A @ x) ** 2, x)
    np.testing.assert_allclose(out, j_out, rtol=1e-5)
    np.testing.assert_allclose(jvp_fn(t), j_jvp(t), rtol=1e-5, atol=1e-6)


def test_has_aux_returns_aux_untouched_and_unconnected_outputs_get_zeros():
    def fn(x):
        return (x**3, tf.constant(7.0)), {"seen": x + 1}

    (cube, const), jvp_fn, aux = tapekit.linearize(fn, tf.constant(2.0), has_aux=True)
    assert float(cube) == 8.0 and float(aux["seen"]) == 3.0
    d_cube, d_const = jvp_fn(tf.constant(1.0))
    assert float(d_cube) == 12.0 and float(d_const) == 0.0


def test_variables_as_primals_and_inside_tf_function():
    v = tf.Variable([1.0, 2.0])

    @tf.function
    def step(t):
        _, jvp_fn = tapekit.linearize(lambda w: tf.reduce_sum(w**2), v)
        return jvp_fn(t)

    assert float(step(tf.constant([1.0, 1.0]))) == 6.0  # 2 w · t


def test_errors_name_the_tangent_and_the_fix():
    _, jvp_fn = tapekit.linearize(lambda x, y: x * y, tf.constant(1.0), tf.constant(2.0))
    with pytest.raises(ValueError, match=r"one tangent per primal \(2\).*received 1"):
        jvp_fn(tf.constant(1.0))
    with pytest.raises(TypeError, match=r"tangent 1 has dtype float64.*tf.cast"):
        jvp_fn(tf.constant(1.0), tf.constant(1.0, tf.float64))
    with pytest.raises(ValueError, match=r"has_aux=True.*pair"):
        tapekit.linearize(lambda x: x, tf.constant(1.0), has_aux=True)
    with pytest.raises(TypeError, match=r"linearize needs a callable"):
        tapekit.linearize(3, 1.0)
