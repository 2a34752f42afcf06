"""jacobian, batch_jacobian, hessian and hvp: closed forms, finite differences, independent routes,
dtype/nest/error rules, compilation and caching (no retracing), use inside tf.function."""

from __future__ import annotations

import gc
import warnings
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import _compile

MODES = ["rev", "fwd"]


def fd_jacobian(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences in float64: shape f(x).shape + x.shape."""
    x = np.asarray(x, np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        hi = np.asarray(f(tf.constant(x + e)), np.float64)
        lo = np.asarray(f(tf.constant(x - e)), np.float64)
        cols.append((hi - lo) / (2 * eps))
    out = np.stack(cols, axis=-1)
    return out.reshape(np.shape(cols[0]) + x.shape)


def smooth(x: tf.Tensor) -> tf.Tensor:
    """R^3 -> R^2, not elementwise."""
    return tf.stack([tf.sin(x[0]) * x[1] ** 2, tf.exp(x[2] * x[0]) + tf.tanh(x[1])])


def scalar_fn(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.tanh(x) ** 2) * x[0] + tf.reduce_sum(x**4) / 4


# ---------------------------------------------------------------- jacobian


@pytest.mark.parametrize("mode", MODES + ["auto"])
@pytest.mark.parametrize("compile", [True, False])
def test_jacobian_closed_form(mode, compile, rng):
    a = rng.normal(size=(4, 3))
    x = tf.constant(rng.normal(size=3))
    jac = tapekit.jacobian(
        lambda x: tf.linalg.matvec(a, x) + tf.sin(x[0]), mode=mode, compile=compile
    )(x)
    expected = a.copy()
    expected[:, 0] += np.cos(x.numpy()[0])
    assert jac.dtype == tf.float64 and jac.shape == (4, 3)
    np.testing.assert_allclose(jac.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_jacobian_matches_float64_finite_differences(mode, rng):
    x = rng.normal(size=3)
    jac = tapekit.jacobian(smooth, mode=mode)(tf.constant(x))
    np.testing.assert_allclose(jac.numpy(), fd_jacobian(smooth, x), rtol=1e-6, atol=1e-8)


def test_forward_and_reverse_agree_on_nests(rng):
    def f(p, s):
        h = tf.tanh(tf.linalg.matvec(p["w"], s) + p["b"])
        return {"h": h, "norm": tf.reduce_sum(h**2)}

    p = {"w": tf.constant(rng.normal(size=(2, 3))), "b": tf.constant(rng.normal(size=2))}
    s = tf.constant(rng.normal(size=3))
    rev = tapekit.jacobian(f, argnums=(0, 1), mode="rev")(p, s)
    fwd = tapekit.jacobian(f, argnums=(0, 1), mode="fwd")(p, s)
    assert rev["h"][0]["w"].shape == (2, 2, 3) and rev["norm"][1].shape == (3,)
    assert rev["h"][0]["b"].shape == (2, 2)
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), rev, fwd)
    # an independent route: TensorFlow's own tape jacobian
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([p, s])
        out = f(p, s)
    np.testing.assert_allclose(rev["h"][0]["w"], tape.jacobian(out["h"], p["w"]), rtol=1e-10)


def test_jacobian_inputs_numbers_numpy_variables_and_dtypes():
    f = lambda x: x**3  # noqa: E731
    assert float(tapekit.jacobian(f)(2.0)) == 12.0
    assert tapekit.jacobian(f)(2.0).dtype == tf.float32
    jac64 = tapekit.jacobian(f)(np.array([1.0, 2.0]))
    assert jac64.dtype == tf.float64
    np.testing.assert_allclose(jac64, np.diag([3.0, 12.0]))
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    np.testing.assert_allclose(tapekit.jacobian(f)(v), np.diag([3.0, 12.0]))
    np.testing.assert_allclose(tapekit.jacobian(f, compile=False)(v), np.diag([3.0, 12.0]))
    kv = keras.Variable(np.array([1.0, 2.0], np.float32))
    np.testing.assert_allclose(tapekit.jacobian(lambda x: x * x)(kv), np.diag([2.0, 4.0]))


def test_jacobian_unconnected_and_dynamic_shapes():
    jac = tapekit.jacobian(lambda x, y: x * 2.0, argnums=(0, 1))(1.0, 5.0)
    assert float(jac[0]) == 2.0 and float(jac[1]) == 0.0
    seg = lambda x: tf.math.segment_sum(x * x, [0, 0, 1])  # noqa: E731  (output size is dynamic)
    x = tf.constant([1.0, 2.0, 3.0])
    for mode in MODES:
        np.testing.assert_allclose(tapekit.jacobian(seg, mode=mode)(x), [[2, 4, 0], [0, 0, 6]])


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
@pytest.mark.parametrize("mode", MODES)
def test_chunk_size_gives_the_same_jacobian(chunk_size, mode, rng):
    x = tf.constant(rng.normal(size=(2, 3)))
    f = lambda x: tf.tanh(tf.reshape(x, [-1])) * tf.reduce_sum(x)  # noqa: E731
    full = tapekit.jacobian(f, mode=mode)(x)
    chunked = tapekit.jacobian(f, mode=mode, chunk_size=chunk_size)(x)
    np.testing.assert_allclose(chunked, full, rtol=1e-12)


def test_transform_errors_name_the_problem():
    with pytest.raises(TypeError, match="argument 0 \\(`x`\\) has dtype int32"):
        tapekit.jacobian(lambda x: x * 2)(tf.constant([1, 2]))
    with pytest.raises(TypeError, match=r"argument 1 \(`y`\)\['k'\] has dtype int"):
        tapekit.hessian(lambda x, y: x, argnums=1)(1.0, {"k": np.array([3])})
    with pytest.raises(ValueError, match="argnums=2 is out of range"):
        tapekit.jacobian(lambda x, y: x, argnums=2)(1.0, 2.0)
    with pytest.raises(ValueError, match="mode to be one of"):
        tapekit.jacobian(lambda x: x, mode="forward")
    with pytest.raises(ValueError, match="chunk_size to be None or an int >= 1"):
        tapekit.hessian(lambda x: x, chunk_size=0)
    with pytest.raises(ValueError, match="needs compile=True"):
        tapekit.jacobian(lambda x: x, compile=False, jit_compile=True)
    with pytest.raises(TypeError, match="needs a callable"):
        tapekit.hessian(3.0)
    with pytest.raises(ValueError, match="names the same argument twice"):
        tapekit.jacobian(lambda x: x, argnums=(0, 0))(1.0)
    with pytest.raises(ValueError, match="hessian needs a scalar output"):
        tapekit.hessian(lambda x: x * 2)(tf.ones(2))


@pytest.mark.parametrize("mode", MODES)
def test_batch_jacobian_is_the_diagonal_blocks(mode, rng):
    w = tf.constant(rng.normal(size=(3, 2)))
    f = lambda x: tf.tanh(x @ w) ** 2  # noqa: E731
    x = tf.constant(rng.normal(size=(4, 3)))
    bj = tapekit.batch_jacobian(f, mode=mode)(x)
    full = tapekit.jacobian(f)(x).numpy()
    assert bj.shape == (4, 2, 3)
    np.testing.assert_allclose(bj, np.stack([full[i, :, i, :] for i in range(4)]), rtol=1e-12)
    with pytest.raises(ValueError, match="share one leading \\(batch\\) dimension"):
        tapekit.batch_jacobian(lambda x: tf.reduce_sum(x, 0), mode=mode)(x)


# ---------------------------------------------------------------- hessian and hvp


@pytest.mark.parametrize("mode", MODES)
def test_hessian_closed_form_and_symmetry(mode, rng):
    a = rng.normal(size=(3, 3))
    x = tf.constant(rng.normal(size=3))
    f = lambda x: 0.5 * tf.tensordot(x, tf.linalg.matvec(a, x), 1) + tf.reduce_sum(x**4)  # noqa
    h = tapekit.hessian(f, mode=mode)(x).numpy()
    np.testing.assert_allclose(h, (a + a.T) / 2 + np.diag(12 * x.numpy() ** 2), rtol=1e-12)
    np.testing.assert_allclose(h, h.T, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_hessian_matches_finite_differences_and_nested_tapes(mode, rng):
    x = rng.normal(size=4)
    h = tapekit.hessian(scalar_fn, mode=mode)(tf.constant(x)).numpy()
    grad = tapekit.grad(scalar_fn)
    np.testing.assert_allclose(h, fd_jacobian(grad, x), rtol=1e-6, atol=1e-8)
    xt = tf.constant(x)
    with tf.GradientTape() as outer:
        outer.watch(xt)
        with tf.GradientTape() as inner:
            inner.watch(xt)
            y = scalar_fn(xt)
        g = inner.gradient(y, xt)
    np.testing.assert_allclose(h, outer.jacobian(g, xt), rtol=1e-12)


def test_hessian_of_nests_gives_blocks():
    f = lambda d: tf.reduce_sum(d["a"] ** 2 * d["b"]) + tf.reduce_sum(d["a"]) ** 3  # noqa: E731
    d = {"a": np.array([1.0, 2.0]), "b": np.float64(3.0)}
    for mode in MODES:
        h = tapekit.hessian(f, mode=mode)(d)
        np.testing.assert_allclose(h["a"]["a"], [[24.0, 18.0], [18.0, 24.0]])
        np.testing.assert_allclose(h["a"]["b"], [2.0, 4.0])
        np.testing.assert_allclose(h["b"]["a"], [2.0, 4.0])
        assert h["b"]["b"].shape == () and float(h["b"]["b"]) == 0.0
        assert h["a"]["a"].dtype == tf.float64
    g = lambda x, y: x**2 * y**3  # noqa: E731
    (hxx, hxy), (hyx, hyy) = tapekit.hessian(g, argnums=(0, 1))(2.0, 3.0)
    assert [float(v) for v in (hxx, hxy, hyx, hyy)] == [54.0, 108.0, 108.0, 72.0]


@pytest.mark.parametrize("compile", [True, False])
def test_hvp_equals_hessian_times_v(compile, rng):
    x, v = rng.normal(size=4), rng.normal(size=4)
    (hv,) = tapekit.hvp(scalar_fn, (x,), (v,), compile=compile)
    h = tapekit.hessian(scalar_fn)(x).numpy()
    assert hv.dtype == tf.float64 and hv.shape == (4,)
    np.testing.assert_allclose(hv, h @ v, rtol=1e-12)
    f = lambda p, s: tf.reduce_sum(p["w"] ** 3) * s  # noqa: E731
    p = {"w": tf.constant([1.0, 2.0])}
    hp, hs = tapekit.hvp(
        f, (p, 2.0), ({"w": np.array([1.0, 0.0], np.float32)}, 1.0), compile=compile
    )
    np.testing.assert_allclose(hp["w"], [15.0, 12.0])  # 6 w s v_w + 3 w² v_s
    assert float(hs) == pytest.approx(3.0)  # 3 w² · v_w


def test_hvp_checks_tangents():
    with pytest.raises(ValueError, match="shape"):
        tapekit.hvp(scalar_fn, (tf.ones(3),), (tf.ones(2),))
    with pytest.raises(TypeError, match="dtype float64 but must match"):
        tapekit.hvp(scalar_fn, (tf.ones(3),), (tf.ones(3, tf.float64),))
    with pytest.raises(ValueError, match="one tangent per primal"):
        tapekit.hvp(scalar_fn, (tf.ones(3),), ())
    with pytest.raises(TypeError, match="as a tuple"):
        tapekit.hvp(scalar_fn, tf.ones(3), (tf.ones(3),))


# ---------------------------------------------------------------- compilation and caching


def test_one_trace_per_signature_and_no_retracing():
    def f(x):
        return tf.reduce_sum(tf.sin(x) ** 2)

    for i in range(4):  # a new transform object each time, new values, same signature
        tapekit.hessian(f)(tf.constant([1.0, 2.0, float(i)]))
        tapekit.hessian(f)(float(i))  # Python numbers become float32 scalars, not constants
    assert _compile.tracing_count(f) == 2
    tapekit.hessian(f)(tf.ones(4))  # new shape
    tapekit.hessian(f)(tf.ones(3, tf.float64))  # new dtype
    assert _compile.tracing_count(f) == 4
    for _ in range(3):
        tapekit.hvp(f, (tf.ones(3),), (tf.ones(3),))
        tapekit.jacobian(f, mode="fwd")(tf.ones(3))
    assert _compile.tracing_count(f) == 6

    class Model:
        def loss(self, x):
            return tf.reduce_sum(x**2)

    model = Model()
    for _ in range(3):  # a new bound method object at each attribute access
        tapekit.hessian(model.loss)(tf.ones(2))
    assert _compile.tracing_count(model.loss) == 1


def test_cache_does_not_keep_the_function_alive():
    def f(x):
        return tf.reduce_sum(x**3)

    tapekit.hessian(f)(tf.ones(2))
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


def test_transforms_inside_tf_function_and_with_xla(rng):
    x = tf.constant(rng.normal(size=3))

    def branchy(x):  # Python control flow on tensors: AutoGraph converts it, as tf.function does
        if tf.reduce_sum(x) > 0:
            return tf.reduce_sum(x**3)
        return tf.reduce_sum(x**2)

    @tf.function
    def inside(x):
        return (
            tapekit.hessian(scalar_fn)(x),
            tapekit.jacobian(smooth, mode="fwd", jit_compile=True)(x),
            tapekit.hvp(scalar_fn, (x,), (tf.ones_like(x),))[0],
        )

    h, j, hv = inside(x)
    h_eager = tapekit.hessian(scalar_fn, compile=False)(x)
    np.testing.assert_allclose(h, h_eager, rtol=1e-12)
    np.testing.assert_allclose(j, tapekit.jacobian(smooth, compile=False)(x), rtol=1e-10)
    np.testing.assert_allclose(hv, h_eager.numpy().sum(axis=1), rtol=1e-12)
    pos = tf.constant([1.0, 2.0])
    np.testing.assert_allclose(tapekit.hessian(branchy)(pos), np.diag([6.0, 12.0]))
    np.testing.assert_allclose(tapekit.hessian(branchy)(-pos), np.diag([2.0, 2.0]))


def test_vectorization_fallback_warns_once():
    f = lambda x: tf.math.cumulative_logsumexp(x)  # noqa: E731  (its gradient has no pfor rule)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        j1 = tapekit.jacobian(f, mode="rev")(tf.constant([0.1, 0.5, 0.3]))
        tapekit.jacobian(f, mode="rev")(tf.constant([0.1, 0.5]))  # a new trace: no new warning
    messages = [str(w.message) for w in caught if "cannot vectorize" in str(w.message)]
    assert len(messages) == 1 and "CumulativeLogsumexp" in messages[0]
    np.testing.assert_allclose(
        j1, tapekit.jacobian(f, mode="fwd")(tf.constant([0.1, 0.5, 0.3])), rtol=1e-6
    )


# ---------------------------------------------------------------- README promises (issue 16)


def test_tape_route_and_hessian_route_agree_with_the_closed_form():
    x = tf.constant([0.3, -0.7], tf.float64)
    f = lambda x: tf.reduce_sum(x**3) * x[0]  # noqa: E731
    a, b = x.numpy()
    closed = np.array([[12 * a**2, 3 * b**2], [3 * b**2, 6 * a * b]])  # ∂² (a³ + b³) a
    with tapekit.Tape(persistent=True, watch=x) as outer:
        with tapekit.Tape(watch=x) as inner:
            y = f(x)
        g = inner.gradient(y, x)
    np.testing.assert_allclose(outer.jacobian(g, x), closed, rtol=1e-12)
    outer.release()
    for mode in ("rev", "fwd"):
        np.testing.assert_allclose(tapekit.hessian(f, mode=mode)(x), closed, rtol=1e-12)


def test_hvp_with_jit_compile_matches_the_closed_form():
    f = lambda x: tf.reduce_sum(tf.sin(x) * x)  # noqa: E731 - H = diag(2 cos x - x sin x)
    x, v = tf.constant([0.2, 1.1, -0.4]), tf.constant([1.0, -2.0, 0.5])
    (hv,) = tapekit.hvp(f, (x,), (v,), jit_compile=True)
    xn = x.numpy()
    np.testing.assert_allclose(hv, (2 * np.cos(xn) - xn * np.sin(xn)) * v.numpy(), rtol=1e-5)


def test_partials_and_partial_inside_tf_function():
    f = lambda x, y: x**2 * y + tf.sin(y)  # noqa: E731

    @tf.function
    def both(x, y):
        d = tapekit.partials(f)(x, y)
        return d["x"], d["y"], tapekit.partial(f, "x", "y")(x, y)

    dx, dy, dxy = both(tf.constant(3.0), tf.constant(0.5))
    assert float(dx) == pytest.approx(3.0)  # 2 x y
    assert float(dy) == pytest.approx(9.0 + np.cos(0.5))  # x² + cos y
    assert float(dxy) == pytest.approx(6.0)  # 2 x


def test_forward_mode_through_map_fn_and_cond_matches_closed_forms(mirrored_strategy):
    x = tf.constant([0.5, -1.0, 2.0])
    xn = x.numpy()
    mapped = lambda x: tf.map_fn(lambda r: r**3, x)  # noqa: E731
    cond = lambda x: tf.cond(x[0] > 0, lambda: tf.sin(x) * x, lambda: x**2)  # noqa: E731
    for compile in (True, False):
        np.testing.assert_allclose(
            tapekit.jacobian(mapped, mode="fwd", compile=compile)(x), np.diag(3 * xn**2), rtol=1e-6
        )
        np.testing.assert_allclose(
            tapekit.jacobian(cond, mode="fwd", compile=compile)(x),
            np.diag(np.cos(xn) * xn + np.sin(xn)),
            rtol=1e-6,
        )
    # The failed forward attempt through map_fn must leave no TensorFlow state behind (it once
    # left the variable scope's caching device set, and Keras could no longer create variables).
    assert tf.compat.v1.get_variable_scope().caching_device is None
    with mirrored_strategy.scope():
        layer = keras.layers.Dense(1)
        layer.build((None, 2))
    assert len(layer.weights) == 2
