"""jvp (forward mode) and vjp (reverse mode): closed forms, mutual agreement, nests, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tapekit as tk


def _f(x, y):
    return {"p": x * tf.sin(y), "q": tf.reduce_sum(x**2) * y}


def test_jvp_closed_form_and_dtype():
    x = np.array([1.0, 2.0])
    out, t = tk.jvp(lambda x: x**3, (x,), (np.array([1.0, 0.5]),))
    assert out.dtype == tf.float64 and t.dtype == tf.float64
    np.testing.assert_allclose(t.numpy(), 3 * x**2 * [1.0, 0.5])


def test_jvp_and_vjp_agree_via_inner_products(rng):
    """<J t, c> computed forward must equal <t, Jᵀ c> computed in reverse."""
    x = tf.constant(rng.normal(size=3))
    y = tf.constant(rng.normal(size=3))
    tx, ty = rng.normal(size=3), rng.normal(size=3)
    out, tangent_out = tk.jvp(_f, (x, y), (tx, ty))
    cot = {"p": tf.constant(rng.normal(size=3)), "q": tf.constant(rng.normal(size=3))}
    out2, vjp_fn = tk.vjp(_f, x, y)
    gx, gy = vjp_fn(cot)
    lhs = sum(float(tf.reduce_sum(tangent_out[k] * cot[k])) for k in cot)
    rhs = float(np.dot(gx.numpy(), tx) + np.dot(gy.numpy(), ty))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    np.testing.assert_allclose(out["p"].numpy(), out2["p"].numpy())


def test_vjp_can_be_called_many_times_and_matches_closed_form():
    out, vjp_fn = tk.vjp(lambda x, y: x * y, 3.0, 4.0)
    assert float(out) == 12.0
    for c in (1.0, 2.0):
        gx, gy = vjp_fn(c)
        assert (float(gx), float(gy)) == (4.0 * c, 3.0 * c)


def test_vjp_nested_primals_and_unused_inputs():
    params = {"a": np.array([1.0, 2.0], np.float32), "b": np.float32(3.0)}
    out, vjp_fn = tk.vjp(lambda p, z: p["a"] * p["b"], params, np.float32(1.0))
    (gp, gz) = vjp_fn(np.ones(2, np.float32))
    np.testing.assert_allclose(gp["a"].numpy(), [3.0, 3.0])
    assert float(gp["b"]) == 3.0 and float(gz) == 0.0


def test_jvp_of_unconnected_output_is_zero():
    _, t = tk.jvp(lambda x: tf.constant([1.0, 2.0]), (1.0,), (1.0,))
    np.testing.assert_array_equal(t.numpy(), [0.0, 0.0])


def test_jvp_vjp_inside_tf_function():
    @tf.function
    def both(x):
        _, t = tk.jvp(tf.sin, (x,), (tf.ones_like(x),))
        _, vjp_fn = tk.vjp(tf.sin, x)
        return t, vjp_fn(tf.ones_like(x))[0]

    x = tf.constant([0.1, 0.2])
    t, g = both(x)
    np.testing.assert_allclose(t.numpy(), np.cos(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(g.numpy(), np.cos(x.numpy()), rtol=1e-6)


def test_errors_name_what_is_wrong():
    with pytest.raises(TypeError, match=r"`primals` as a tuple.*\(primal,\)"):
        tk.jvp(tf.sin, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"one tangent per primal.*2 primals and 1 tangents"):
        tk.jvp(lambda x, y: x, (1.0, 2.0), (1.0,))
    with pytest.raises(ValueError, match=r"tangent 0 has shape \(3,\).*\(2,\)"):
        tk.jvp(tf.sin, (np.ones(2),), (np.ones(3),))
    with pytest.raises(TypeError, match=r"tangent 0 has dtype float32.*float64"):
        tk.jvp(tf.sin, (np.ones(2),), (tf.ones(2),))
    with pytest.raises(TypeError, match=r"primal 0.*int32"):
        tk.vjp(tf.sin, tf.constant(1))
    _, vjp_fn = tk.vjp(lambda x: x * 2.0, np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"the cotangent has shape \(3,\)"):
        vjp_fn(np.ones(3))
