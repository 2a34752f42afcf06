"""tapekit.gradient_noise_scale against the exact B_simple of a linear regression (float64)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import VectorizationWarning

N, D = 48, 3


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.7 * rng.normal(size=N)
    w0 = np.array([0.3, 0.1, -0.4])
    # per-example gradient of 0.5 (x·w - y)^2 is (x·w - y) x: the exact population values
    g = (x @ w0 - y)[:, None] * x
    big_g = g.mean(0)
    cov_trace = ((g - big_g) ** 2).sum(1).mean()  # tr Σ of the empirical distribution
    return x, y, w0, g, cov_trace, float(big_g @ big_g)


def _noise(w0, method, chunks=2):
    w = tf.Variable(w0, dtype=tf.float64)

    def per_example_loss(x, y):
        return 0.5 * (tf.linalg.matvec(x, w) - y) ** 2

    return tapekit.gradient_noise_scale(per_example_loss, [w], method=method, chunks=chunks)


def test_per_example_estimates_are_mccandlish_formulas_on_the_batch(regression):
    x, y, w0, g, _, _ = regression
    out = _noise(w0, "per_example")(x, y)
    mean = g.mean(0)
    trace = ((g - mean) ** 2).sum() / (N - 1)
    norm2 = mean @ mean - trace / N
    assert out["b_simple"].dtype == tf.float64
    np.testing.assert_allclose(float(out["trace_covariance"]), trace, rtol=1e-10)
    np.testing.assert_allclose(float(out["gradient_norm_squared"]), norm2, rtol=1e-10)
    np.testing.assert_allclose(float(out["b_simple"]), trace / norm2, rtol=1e-10)


def test_two_batch_with_one_example_per_chunk_equals_per_example(regression):
    x, y, w0, _, _, _ = regression
    a = _noise(w0, "per_example")(x, y)
    b = _noise(w0, "two_batch", chunks=N)(x, y)
    for key in a:
        np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-9)


@pytest.mark.parametrize(("method", "chunks"), [("per_example", 2), ("two_batch", 4)])
def test_both_estimators_are_unbiased_for_the_exact_b_simple(regression, method, chunks):
    """Batches drawn with replacement from the data: averaged, the estimates hit the exact
    tr Σ and |G|² of the whole data set (computed from all its per-example gradients)."""
    x, y, w0, _, cov_trace, norm2 = regression
    noise = _noise(w0, method, chunks)
    rng = np.random.default_rng(1)
    outs = []
    for _ in range(300):
        idx = rng.integers(0, N, size=16)
        outs.append({k: float(v) for k, v in noise(x[idx], y[idx]).items()})
    trace_hat = np.mean([o["trace_covariance"] for o in outs])
    norm_hat = np.mean([o["gradient_norm_squared"] for o in outs])
    se_trace = np.std([o["trace_covariance"] for o in outs]) / np.sqrt(len(outs))
    se_norm = np.std([o["gradient_norm_squared"] for o in outs]) / np.sqrt(len(outs))
    assert abs(trace_hat - cov_trace) <= 3.5 * se_trace
    assert abs(norm_hat - norm2) <= 3.5 * se_norm
    np.testing.assert_allclose(trace_hat / norm_hat, cov_trace / norm2, rtol=0.1)


def test_keras_model_and_no_retracing_across_batches():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])

    def per_example_loss(x, y):
        return (model(x, training=False)[:, 0] - y) ** 2

    noise = tapekit.gradient_noise_scale(per_example_loss, model)
    rng = np.random.default_rng(0)
    for _ in range(3):
        out = noise(rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=8).astype("float32"))
        assert out["b_simple"].dtype == tf.float32 and np.isfinite(float(out["b_simple"]))
    assert len(tf.nest.flatten(model.trainable_variables)) == 4


def test_errors_name_the_argument_and_the_fix(regression):
    x, y, w0, _, _, _ = regression
    w = tf.Variable(w0)
    with pytest.raises(ValueError, match=r"`method` in .*received 'exact'"):
        tapekit.gradient_noise_scale(lambda x: x, [w], method="exact")
    with pytest.raises(ValueError, match="`chunks` to be an int >= 2"):
        tapekit.gradient_noise_scale(lambda x: x, [w], method="two_batch", chunks=1)
    with pytest.raises(TypeError, match="callable `per_example_loss"):
        tapekit.gradient_noise_scale(3, [w])
    reduced = tapekit.gradient_noise_scale(lambda x, y: tf.reduce_mean(x @ w[:, None] - y), [w])
    with pytest.raises(ValueError, match=r"one loss per example \(shape \[48\]\).*Do not reduce"):
        reduced(x, y)
    odd = _noise(w0, "two_batch", chunks=5)
    with pytest.raises(ValueError, match="multiple of chunks=5, but received a batch of 48"):
        odd(x, y)


@pytest.mark.parametrize("method", ["per_example", "two_batch"])
def test_a_python_if_in_the_loss_is_converted_and_gives_the_same_estimates(regression, method):
    x, y, w0 = regression[:3]
    w = tf.Variable(w0, dtype=tf.float64)

    def half_square(r):
        if tf.reduce_sum(r) > -1e300:  # always true, but a Python `if` on a tensor
            return 0.5 * r**2
        return r

    def with_if(x, y):
        return half_square(tf.linalg.matvec(x, w) - y)

    with warnings.catch_warnings():  # per_example: the loop fallback says it is slower
        warnings.simplefilter("ignore", VectorizationWarning)
        got = tapekit.gradient_noise_scale(with_if, [w], method=method, chunks=4)(x, y)
    want = _noise(w0, method, chunks=4)(x, y)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, err_msg=key)
