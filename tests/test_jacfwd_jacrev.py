"""has_aux on jacobian / hessian / jvp / vjp and the thin jacfwd / jacrev, against JAX."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tapekit as tk

jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.fixture(autouse=True)
def _x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


X = np.array([0.3, -1.2, 2.0])
Y = np.array([0.7, 0.1])


def tf_f(x, y):
    return tf.stack([tf.sin(x[0]) * y[1], tf.reduce_sum(x**2) * y[0], x[2] * x[1] * y[0]])


def jax_f(x, y):
    return jnp.stack([jnp.sin(x[0]) * y[1], jnp.sum(x**2) * y[0], x[2] * x[1] * y[0]])


@pytest.mark.parametrize("ours, theirs", [(tk.jacfwd, jax.jacfwd), (tk.jacrev, jax.jacrev)])
@pytest.mark.parametrize("argnums", [0, 1, (0, 1)])
def test_jacfwd_and_jacrev_match_jax(ours, theirs, argnums):
    got = ours(tf_f, argnums=argnums)(tf.constant(X), tf.constant(Y))
    want = theirs(jax_f, argnums=argnums)(X, Y)
    for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
        assert g.dtype == tf.float64
        np.testing.assert_allclose(g, w, rtol=1e-12)
    assert isinstance(got, tuple) == isinstance(argnums, tuple)


@pytest.mark.parametrize("ours, theirs", [(tk.jacfwd, jax.jacfwd), (tk.jacrev, jax.jacrev)])
def test_jacfwd_and_jacrev_has_aux(ours, theirs):
    got, aux = ours(lambda x: (tf_f(x, tf.constant(Y)), {"n": x * 2}), has_aux=True)(tf.constant(X))
    want, jaux = theirs(lambda x: (jax_f(x, Y), {"n": x * 2}), has_aux=True)(X)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(aux["n"], jaux["n"])


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("compile", [True, False])
def test_hessian_and_jacobian_has_aux_match_jax(mode, compile):
    f = lambda x: (tf.reduce_sum(tf.sin(x) * x**2), tf.reduce_max(x))  # noqa: E731
    jf = lambda x: (jnp.sum(jnp.sin(x) * x**2), jnp.max(x))  # noqa: E731
    H, aux = tk.hessian(f, mode=mode, compile=compile, has_aux=True)(tf.constant(X))
    jH, jaux = jax.hessian(jf, has_aux=True)(X)
    np.testing.assert_allclose(H, jH, rtol=1e-10)
    assert float(aux) == float(jaux) == 2.0
    J, aux = tk.jacobian(
        lambda x: (tf.sin(x) * x, tf.reduce_max(x)), mode=mode, compile=compile, has_aux=True
    )(tf.constant(X))
    jJ, _ = jax.jacobian(lambda x: (jnp.sin(x) * x, jnp.max(x)), has_aux=True)(X)
    np.testing.assert_allclose(J, jJ, rtol=1e-12)
    assert float(aux) == 2.0


def test_batch_jacobian_has_aux():
    x = tf.constant(np.stack([X, X + 1]))
    blocks, aux = tk.batch_jacobian(lambda x: (x**2, tf.shape(x)[0]), has_aux=True)(x)
    np.testing.assert_allclose(blocks[1], np.diag(2 * (X + 1)))
    assert int(aux) == 2


def test_jvp_and_vjp_has_aux_match_jax():
    f = lambda x: (tf.sin(x) * x, {"m": tf.reduce_mean(x)})  # noqa: E731
    jf = lambda x: (jnp.sin(x) * x, {"m": jnp.mean(x)})  # noqa: E731
    t = np.array([1.0, 0.5, -2.0])
    out, tan, aux = tk.jvp(f, (tf.constant(X),), (tf.constant(t),), has_aux=True)
    jout, jtan, jaux = jax.jvp(jf, (X,), (t,), has_aux=True)
    np.testing.assert_allclose(out, jout)
    np.testing.assert_allclose(tan, jtan, rtol=1e-12)
    np.testing.assert_allclose(aux["m"], jaux["m"])
    out, vjp_fn, aux = tk.vjp(f, tf.constant(X), has_aux=True)
    jout, jvjp, jaux = jax.vjp(jf, X, has_aux=True)
    np.testing.assert_allclose(vjp_fn(tf.constant(t))[0], jvjp(t)[0], rtol=1e-12)
    np.testing.assert_allclose(aux["m"], jaux["m"])


def test_has_aux_needs_a_pair():
    with pytest.raises(ValueError, match=r"has_aux=True needs `lambda` to return a pair"):
        tk.hessian(lambda x: tf.reduce_sum(x), has_aux=True)(tf.constant(X))
    with pytest.raises(ValueError, match=r"has_aux=True.*pair"):
        tk.jvp(lambda x: x, (1.0,), (1.0,), has_aux=True)


@tf.custom_gradient
def _sin_with_affine_gradient(z):
    """sin, with a deliberately wrong gradient that only reverse mode sees: it is affine in
    the upstream gradient (``up * cos(z) + 1``), and forward mode transposes the linear part
    of the gradient function (the double-vjp trick), so the ``+ 1`` drops out there."""

    def grad(up):
        return up * tf.cos(z) + 1.0

    return tf.sin(z), grad


def test_jacobian_auto_mode_takes_forward_mode_for_a_small_input_and_reverse_for_a_large():
    a = np.arange(1.0, 11.0).reshape(5, 2) / 10

    def tall(x):  # R^2 -> R^5: forward mode (2 pushes) is the cheaper one
        return _sin_with_affine_gradient(tf.linalg.matvec(tf.constant(a), x))

    def wide(x):  # R^5 -> R^2: reverse mode (2 pulls)
        return _sin_with_affine_gradient(tf.linalg.matvec(tf.constant(a), x, transpose_a=True))

    x2 = tf.constant([0.3, -0.2], tf.float64)
    x5 = tf.constant(np.linspace(-1.0, 1.0, 5))
    exact_tall = np.cos(a @ x2.numpy())[:, None] * a  # the true Jacobian, closed form
    exact_wide = np.cos(a.T @ x5.numpy())[:, None] * a.T
    # Reverse mode adds the wrong "+ 1" to every cotangent: J + ones @ A (one column sum).
    wrong_tall = exact_tall + np.ones((5, 5)) @ a
    wrong_wide = exact_wide + np.ones((2, 2)) @ a.T
    np.testing.assert_allclose(tk.jacobian(tall, mode="fwd")(x2), exact_tall, atol=1e-12)
    np.testing.assert_allclose(tk.jacobian(tall, mode="rev")(x2), wrong_tall, atol=1e-12)
    np.testing.assert_allclose(tk.jacobian(tall)(x2), exact_tall, atol=1e-12)  # auto: fwd
    np.testing.assert_allclose(tk.jacobian(wide, mode="fwd")(x5), exact_wide, atol=1e-12)
    np.testing.assert_allclose(tk.jacobian(wide)(x5), wrong_wide, atol=1e-12)  # auto: rev
