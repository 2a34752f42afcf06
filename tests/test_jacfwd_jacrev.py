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
