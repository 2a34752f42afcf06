"""tapekit.curvature: top eigenvalues, trace and density against the dense Hessian (float64)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import curvature
from tapekit._compile import tracing_count

SIZES = [(4, 16), (16,), (16, 8), (8,), (8, 1), (1,)]  # a 4-16-8-1 tanh MLP: 225 parameters
N_PARAMS = sum(int(np.prod(s)) for s in SIZES)


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 4))
    y = np.sin(x @ rng.normal(size=(4, 1)))
    return tf.constant(x), tf.constant(y)


X, Y = _data()


def mlp_loss(params):
    w1, b1, w2, b2, w3, b3 = params
    h = tf.tanh(X @ w1 + b1)
    h = tf.tanh(h @ w2 + b2)
    return tf.reduce_mean((h @ w3 + b3 - Y) ** 2)


def flat_loss(theta):
    parts, start = [], 0
    for s in SIZES:
        n = int(np.prod(s))
        parts.append(tf.reshape(theta[start : start + n], s))
        start += n
    return mlp_loss(parts)


@pytest.fixture(scope="module")
def point():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=N_PARAMS) * 0.7
    params, start = [], 0
    for s in SIZES:
        n = int(np.prod(s))
        params.append(tf.constant(theta[start : start + n].reshape(s)))
        start += n
    dense = tapekit.hessian(flat_loss)(tf.constant(theta)).numpy()
    return tuple(params), np.linalg.eigvalsh(dense), dense, theta


def _flat(vectors):
    leaves = tf.nest.flatten(vectors)
    k = leaves[0].shape[0]
    return np.concatenate([np.reshape(v.numpy(), (k, -1)) for v in leaves], axis=1)


@pytest.mark.parametrize("which", ["algebraic", "magnitude"])
def test_top_eigenvalues_match_eigvalsh_of_the_dense_hessian(point, which):
    params, exact, dense, _ = point
    key = exact if which == "algebraic" else np.abs(exact)
    want = exact[np.argsort(-key)][:3]
    values, vectors = curvature.top_eigenvalues(mlp_loss, (params,), k=3, which=which, seed=0)
    assert values.dtype == tf.float64 and values.shape == (3,)
    np.testing.assert_allclose(values.numpy(), want, rtol=1e-3)
    y = _flat(vectors[0])  # (3, n): unit eigenvectors of the dense Hessian
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-9)
    residual = np.linalg.norm(y @ dense - values.numpy()[:, None] * y, axis=1)
    assert np.all(residual <= 1e-3 * np.abs(values.numpy()) * 2)
    assert [tuple(v.shape) for v in vectors[0]] == [(3, *s) for s in SIZES]


def test_magnitude_differs_from_algebraic_on_an_indefinite_hessian():
    h = np.diag([-9.0, 5.0, 5.0, 3.0, 1.0, -0.5]).astype(np.float64)  # 5 is a double eigenvalue
    q = np.linalg.qr(np.random.default_rng(2).normal(size=(6, 6)))[0]
    a = tf.constant(q @ h @ q.T)
    f = lambda x: 0.5 * tf.tensordot(x, tf.linalg.matvec(a, x), 1)  # noqa: E731
    x = (tf.zeros([6], tf.float64),)
    alg, _ = curvature.top_eigenvalues(f, x, k=3, seed=1)
    mag, _ = curvature.top_eigenvalues(f, x, k=3, which="magnitude", seed=1)
    np.testing.assert_allclose(alg.numpy(), [5.0, 5.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(mag.numpy(), [-9.0, 5.0, 5.0], rtol=1e-6)


def test_lanczos_iterations_do_not_retrace_and_keep_float32(point):
    params, exact, _, _ = point
    p32 = tuple(tf.cast(p, tf.float32) for p in params)

    def loss32(ps):
        w1, b1, w2, b2, w3, b3 = ps
        h = tf.tanh(tf.cast(X, tf.float32) @ w1 + b1)
        h = tf.tanh(h @ w2 + b2)
        return tf.reduce_mean((h @ w3 + b3 - tf.cast(Y, tf.float32)) ** 2)

    values, vectors = curvature.top_eigenvalues(loss32, (p32,), k=2, seed=0)
    assert values.dtype == tf.float32 and vectors[0][0].dtype == tf.float32
    np.testing.assert_allclose(values.numpy(), exact[::-1][:2], rtol=1e-3)
    assert tracing_count(loss32) == 1  # both runs, dozens of products: one compiled loop
    curvature.density(loss32, (p32,), steps=8, runs=2, seed=0)
    assert tracing_count(loss32) == 2  # the loop without deflation, run to `steps`
    curvature.trace(loss32, (p32,), samples=4, seed=0)
    assert tracing_count(loss32) == 3  # + one hvp
    for seed in (1, 2):  # other starts, sizes, tolerances and counts: no new trace
        curvature.top_eigenvalues(loss32, (p32,), k=1, seed=seed, max_iters=20, tol=1e-2)
        curvature.top_eigenvalues(loss32, (p32,), k=2, seed=seed, max_iters=40 + seed)
        curvature.density(loss32, (p32,), steps=5 + seed, runs=1, seed=seed)
        curvature.trace(loss32, (p32,), samples=3, seed=seed)
    assert tracing_count(loss32) == 3


def test_warm_start_from_the_previous_eigenvector_needs_few_products(point):
    params, exact, _, _ = point
    values, vectors = curvature.top_eigenvalues(mlp_loss, (params,), seed=0)
    np.testing.assert_allclose(values.numpy()[0], exact[-1], rtol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converges within 4 products, else a RuntimeWarning
        again, _ = curvature.top_eigenvalues(mlp_loss, (params,), init=vectors, seed=1, max_iters=4)
    np.testing.assert_allclose(again.numpy()[0], exact[-1], rtol=1e-3)


def test_trace_is_within_three_standard_errors_and_improves_with_samples(point):
    params, exact, _, _ = point
    true = exact.sum()
    est, err = curvature.trace(mlp_loss, (params,), samples=64, seed=0)
    assert est.dtype == tf.float64
    assert abs(float(est) - true) <= 3 * float(err)
    errors, ses = {}, {}
    for samples, seed0 in ((8, 0), (512, 100)):
        runs = [curvature.trace(mlp_loss, (params,), samples=samples, seed=seed0 + s)
                for s in range(6)]  # fmt: skip
        errors[samples] = np.mean([abs(float(e) - true) for e, _ in runs])
        ses[samples] = np.mean([float(se) for _, se in runs])
        assert all(abs(float(e) - true) <= 4 * float(se) for e, se in runs)
    assert errors[512] < errors[8] / 2.5  # 1/sqrt(64) = 1/8 expected
    assert ses[8] / 12 < ses[512] < ses[8] / 5


def test_density_integrates_to_one_and_sits_on_the_eigenvalues(point):
    params, exact, _, _ = point
    grid, dens = curvature.density(mlp_loss, (params,), steps=48, runs=8, seed=0)
    g, d = grid.numpy(), dens.numpy()
    assert grid.dtype == tf.float64 and g.shape == d.shape == (1024,)
    assert np.all(d >= 0)
    np.testing.assert_allclose(np.trapezoid(d, g), 1.0, atol=1e-6)
    # the extreme Lanczos nodes are the extreme eigenvalues: the grid spans the spectrum
    sigma = 0.01 * (exact[-1] - exact[0])
    np.testing.assert_allclose([g[0] + 5 * sigma, g[-1] - 5 * sigma], exact[[0, -1]], rtol=1e-3)
    # The density's mean is the average of v^T H v / |v|^2 over the runs' random sign vectors:
    # trace / n up to a sampling error whose standard error follows from H (for signs,
    # Var(v^T H v) = 2 * sum_{i != j} H_ij^2). 8 runs give 1.2 standard errors of slack at most,
    # so check it on 64 runs (2 products each suffice for the mean): within 3 standard errors,
    # and still within 10% of the mean |eigenvalue|.
    _, _, dense, _ = point
    n = dense.shape[0]
    runs = 64
    se = np.sqrt(2 * ((dense**2).sum() - (np.diag(dense) ** 2).sum()) / runs) / n
    grid64, dens64 = curvature.density(mlp_loss, (params,), steps=2, runs=runs, seed=0)
    mean = np.trapezoid(grid64.numpy() * dens64.numpy(), grid64.numpy())
    assert abs(mean - exact.mean()) <= min(3 * se, 0.1 * np.abs(exact).mean())
    # the distribution matches the exact eigenvalues': Wasserstein-1 distance of the CDFs
    cdf = np.concatenate([[0.0], np.cumsum((d[1:] + d[:-1]) / 2 * np.diff(g))])
    exact_cdf = np.searchsorted(np.sort(exact), g, side="right") / exact.size
    w1 = np.trapezoid(np.abs(cdf - exact_cdf), g)
    assert w1 <= 0.02 * (exact[-1] - exact[0]), w1
    # the mass between the top eigenvalue and the next one is about 1/n
    top_mass = np.trapezoid(d * (g > (exact[-1] + exact[-2]) / 2), g)
    assert top_mass < 5.0 / exact.size


def test_model_loss_of_a_keras_model_equals_the_flat_hessian():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"),
                              keras.layers.Dense(1)])  # fmt: skip
    x, y = X.numpy().astype("float32"), Y.numpy().astype("float32")

    def loss_fn(m, b, training=False):
        assert training is False  # inference mode
        return keras.ops.mean((m(b[0], training=training) - b[1]) ** 2), {"n": 1.0}

    fn, primals = curvature.model_loss(model, loss_fn, (x, y))
    values, _ = curvature.top_eigenvalues(fn, primals, k=2, seed=0)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    theta0 = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])

    def flat(theta):
        ws, start = [], 0
        for s in shapes:
            n = int(np.prod(s))
            ws.append(tf.reshape(theta[start : start + n], s))
            start += n
        h = tf.tanh(tf.constant(x, tf.float64) @ ws[0] + ws[1])
        return tf.reduce_mean((h @ ws[2] + ws[3] - tf.constant(y, tf.float64)) ** 2)

    exact = np.linalg.eigvalsh(tapekit.hessian(flat)(tf.constant(theta0, tf.float64)).numpy())
    np.testing.assert_allclose(values.numpy(), exact[::-1][:2], rtol=2e-3)


def test_errors_name_the_argument_and_the_fix(point):
    params = point[0]
    with pytest.raises(ValueError, match=r"k=300 exceeds the number of parameters \(225\)"):
        curvature.top_eigenvalues(mlp_loss, (params,), k=300)
    with pytest.raises(ValueError, match="`which` in .*received 'largest'"):
        curvature.top_eigenvalues(mlp_loss, (params,), which="largest")
    with pytest.raises(TypeError, match=r"`primals` as a tuple.*Wrap a single argument"):
        curvature.trace(mlp_loss, params[0])
    with pytest.raises(ValueError, match="`samples` to be an int >= 2"):
        curvature.trace(mlp_loss, (params,), samples=1)
    with pytest.raises(TypeError, match="leaf 0 of `primals` has dtype int32"):
        curvature.density(lambda x: tf.reduce_sum(x), (tf.constant([1, 2]),))
    with pytest.warns(RuntimeWarning, match="did not reach tol=1e-06 in max_iters=2"):
        curvature.top_eigenvalues(mlp_loss, (params,), max_iters=2, tol=1e-6, seed=0)
    with pytest.raises(ValueError, match=r"`init` shaped like `primals` \(6 arrays\).*received 5"):
        curvature.top_eigenvalues(mlp_loss, (params,), init=(list(params[:5]),))
    wrong = [tf.zeros((2, 3)), *params[1:]]
    with pytest.raises(
        ValueError, match=r"shaped like its primal \(4, 16\).*received shape \(2, 3\)"
    ):
        curvature.top_eigenvalues(mlp_loss, (params,), init=(wrong,))


def test_top_eigenvalues_match_an_independent_jax_hessian(point):
    """The same MLP loss differentiated twice by JAX (float64): an independent route."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    params, _, _, theta = point
    jax.config.update("jax_enable_x64", True)
    try:
        x, y = jnp.asarray(X.numpy()), jnp.asarray(Y.numpy())

        def loss(t):
            parts, start = [], 0
            for s in SIZES:
                n = int(np.prod(s))
                parts.append(t[start : start + n].reshape(s))
                start += n
            w1, b1, w2, b2, w3, b3 = parts
            h = jnp.tanh(jnp.tanh(x @ w1 + b1) @ w2 + b2)
            return jnp.mean((h @ w3 + b3 - y) ** 2)

        dense = np.asarray(jax.hessian(loss)(jnp.asarray(theta)))
    finally:
        jax.config.update("jax_enable_x64", False)
    exact = np.linalg.eigvalsh(dense)
    values, _ = curvature.top_eigenvalues(mlp_loss, (params,), k=2, seed=4)
    np.testing.assert_allclose(values.numpy(), exact[::-1][:2], rtol=1e-3)
    mag, _ = curvature.top_eigenvalues(mlp_loss, (params,), which="magnitude", seed=4)
    np.testing.assert_allclose(mag.numpy()[0], exact[np.argmax(np.abs(exact))], rtol=1e-3)


def test_one_model_loss_per_batch_is_not_reported_as_retracing():
    # Each batch needs its own model_loss (and trace): the "same code, many function objects"
    # warning is for user lambdas made in a loop, not for the functions tapekit makes.
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    mse = lambda m, b: tf.reduce_mean((m(b[0]) - b[1]) ** 2)  # noqa: E731
    from tapekit._compile import RETRACE_WARNING, RetracingWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", RetracingWarning)
        for i in range(RETRACE_WARNING + 2):
            x = np.full((4, 2), float(i + 1), "float32")
            fn, primals = curvature.model_loss(model, mse, (x, np.zeros((4, 1), "float32")))
            (hv,) = tapekit.hvp(fn, primals, ([tf.ones_like(v) for v in primals[0]],))
            kernel = 2.0 * (i + 1) ** 2 * 2.0  # d2/dk2 of mean((x k + b)^2): 2 x^T x / 4 rows
            np.testing.assert_allclose(hv[0].numpy(), np.full((2, 1), kernel + 2.0 * (i + 1)))


def test_a_start_orthogonal_to_the_top_eigenvector_is_not_drawn():
    # H = 2 * ones * ones^T (n = 4): its one nonzero eigenvalue, 8, has eigenvector (1, 1, 1, 1);
    # 6 of the 16 sign vectors are orthogonal to it, so random-sign starts would return 0.
    f = lambda x: tf.reduce_sum(x) ** 2  # noqa: E731
    x = (tf.zeros([4], tf.float64),)
    for seed in range(20):
        values, (vector,) = curvature.top_eigenvalues(f, x, seed=seed)
        np.testing.assert_allclose(values.numpy(), [8.0], rtol=1e-9)
        np.testing.assert_allclose(np.abs(vector.numpy()[0]), np.full(4, 0.5), rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_a_lanczos_run_over_the_whole_space_finds_every_eigenvalue(dtype):
    # 45 parameters in leaves of 5, 1, 3x13 (none a multiple of the 64-byte row alignment):
    # the basis buffer grows 8 -> 16 -> 32 -> 45 rows and stays orthogonal to the end, so
    # the tridiagonal T of the full run has exactly H's eigenvalues, each once.
    from tapekit import _lanczos

    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.normal(size=(45, 45)))[0]
    h = q @ np.diag(np.linspace(-3.0, 7.0, 45)) @ q.T
    a = tf.constant(h, dtype)

    def f(x, bias, w):
        v = tf.concat([x, bias, tf.reshape(w, [-1])], 0)
        return 0.5 * tf.tensordot(v, tf.linalg.matvec(a, v), 1)

    primals = (tf.ones([5], dtype), tf.ones([1], dtype), tf.ones([3, 13], dtype))
    op = _lanczos.HessianOperator(f, primals, "test")
    run = _lanczos.lanczos(op, 45, seed=np.random.default_rng(0))
    vector = np.concatenate([leaf.numpy().reshape(-1) for leaf in run.leaves])
    assert len(run.alpha) == 45 and vector.dtype == dtype.as_numpy_dtype
    theta, _ = _lanczos.tridiagonal_eigh(run.alpha, run.beta)
    rtol = 1e-4 if dtype == tf.float32 else 1e-10
    np.testing.assert_allclose(theta, np.linspace(-3.0, 7.0, 45), rtol=rtol, atol=rtol * 7)
    np.testing.assert_allclose(run.value, 7.0, rtol=rtol)
    np.testing.assert_allclose(np.abs(vector @ q[:, -1]), 1.0, rtol=rtol)


def test_init_with_more_fewer_or_no_leading_rows_still_finds_the_top_eigenvalues(point):
    params, exact, _, _ = point
    want = exact[::-1][:3]
    values, vectors = curvature.top_eigenvalues(mlp_loss, (params,), k=3, seed=0)
    two, _ = curvature.top_eigenvalues(mlp_loss, (params,), k=2, init=vectors, seed=1)
    np.testing.assert_allclose(two.numpy(), want[:2], rtol=1e-3)  # extra rows are dropped
    first = tf.nest.map_structure(lambda v: v[0], vectors)  # no leading axis
    three, again = curvature.top_eigenvalues(mlp_loss, (params,), k=3, init=first, seed=2)
    np.testing.assert_allclose(three.numpy(), want, rtol=1e-3)  # missing rows: random starts
    assert [tuple(v.shape) for v in again[0]] == [(3, *s) for s in SIZES]
    np.testing.assert_allclose(_flat(again[0]) @ _flat(again[0]).T, np.eye(3), atol=1e-6)
