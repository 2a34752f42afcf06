"""checkpoint / remat: same derivatives of every order, fn recomputed, less memory held, variables,
Keras layers, tf.function, tapekit transforms and a Trainer step."""

from __future__ import annotations

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit


def _f(x, p, *, scale):
    return tf.reduce_sum(tf.sin(x * p["w"]) ** 2) * scale + tf.reduce_sum(p["b"] * x**3)


def _point(rng):
    x = tf.constant(rng.normal(size=3))
    p = {"w": tf.constant(rng.normal(size=3)), "b": tf.constant(rng.normal(size=3))}
    return x, p


def test_alias_and_values():
    assert tapekit.remat is tapekit.checkpoint
    g = tapekit.checkpoint(tf.sin)
    assert g.__name__ == "checkpoint_of_sin" and g.__wrapped__ is tf.sin
    np.testing.assert_allclose(g(tf.constant([0.5, 1.0])), np.sin([0.5, 1.0]), rtol=1e-6)


def test_gradients_of_nests_and_keywords_equal_the_plain_function_in_float64(rng):
    x, p = _point(rng)
    cf = tapekit.checkpoint(_f)
    got = tapekit.grad(cf, argnums=(0, 1))(x, p, scale=2.0)
    want = tapekit.grad(_f, argnums=(0, 1))(x, p, scale=2.0)
    assert got[0].dtype == tf.float64
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for k in ("w", "b"):
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-12)
    xn, w, b = x.numpy(), p["w"].numpy(), p["b"].numpy()
    closed_x = 2 * np.sin(xn * w) * np.cos(xn * w) * w * 2.0 + 3 * b * xn**2
    np.testing.assert_allclose(got[0], closed_x, rtol=1e-12)


def test_fn_runs_again_in_the_backward_pass():
    calls = []

    def block(x):
        calls.append(1)
        return tf.tanh(x) ** 2

    cb = tapekit.checkpoint(block)
    x = tf.constant([0.3, -0.7])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(cb(x))
    assert len(calls) == 1
    g = tape.gradient(y, x)
    assert len(calls) == 2  # recomputed, not read back from the tape
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(g, 2 * t * (1 - t**2), rtol=1e-6)


def test_higher_orders_hessian_jvp_and_jacobian_match_the_plain_function(rng):
    x, p = _point(rng)
    f = lambda x: _f(x, p, scale=1.5)  # noqa: E731
    cf = tapekit.checkpoint(f)
    np.testing.assert_allclose(tapekit.hessian(cf)(x), tapekit.hessian(f)(x), rtol=1e-10)
    np.testing.assert_allclose(
        tapekit.hessian(cf, mode="fwd")(x), tapekit.hessian(f)(x), rtol=1e-10
    )
    third = tapekit.derivative(tapekit.checkpoint(tf.sin), order=3)(tf.constant(0.4, tf.float64))
    np.testing.assert_allclose(third, -np.cos(0.4), rtol=1e-12)
    t = tf.constant(rng.normal(size=3))
    _, jt = tapekit.jvp(tapekit.checkpoint(tf.sin), (x,), (t,))
    np.testing.assert_allclose(jt, np.cos(x.numpy()) * t.numpy(), rtol=1e-12)
    for mode in ("rev", "fwd"):  # "fwd": forward mode through the checkpoint, in a tf.function
        J = tapekit.jacobian(tapekit.checkpoint(lambda v: v**2), mode=mode)(x)
        np.testing.assert_allclose(J, np.diag(2 * x.numpy()), rtol=1e-12)


def test_per_example_gradients_through_a_checkpoint(rng):
    w = rng.normal(size=(3,)).astype(np.float32)
    xs = rng.normal(size=(4, 3)).astype(np.float32)
    f = lambda w, x: tf.reduce_sum(tf.tanh(w * x))  # noqa: E731
    got = tapekit.vmap(tapekit.grad(tapekit.checkpoint(f)), (None, 0))(w, xs)
    want = (1 - np.tanh(w * xs) ** 2) * xs
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_variables_read_inside_get_gradients_eagerly_and_in_tf_function():
    v = tf.Variable([1.0, 2.0], dtype=tf.float64)
    block = tapekit.checkpoint(lambda x: tf.reduce_sum(tf.sin(v * x)))
    x = tf.constant([0.5, -1.0], tf.float64)
    want = np.cos(v.numpy() * x.numpy()) * x.numpy()

    def grads():
        with tf.GradientTape() as tape:
            y = block(x)
        return tape.gradient(y, v)

    np.testing.assert_allclose(grads(), want, rtol=1e-12)
    np.testing.assert_allclose(tf.function(grads)(), want, rtol=1e-12)


def test_keras_layers_built_or_not_in_tf_function(rng):
    keras.utils.set_random_seed(0)
    plain = keras.Sequential([keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    ck = tapekit.checkpoint(plain)
    x = tf.constant(rng.normal(size=(5, 3)).astype(np.float32))
    with tf.GradientTape() as tape:  # first call builds the layers inside the checkpoint
        y = tf.reduce_sum(ck(x) ** 2)
    got = tape.gradient(y, plain.trainable_variables)
    assert all(g is not None for g in got)

    @tf.function
    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            a = tf.reduce_sum(ck(x) ** 2)
            b = tf.reduce_sum(plain(x) ** 2)
        return tape.gradient(a, plain.trainable_variables), tape.gradient(
            b, plain.trainable_variables
        )

    for a, b in zip(*both(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(got, both(x)[1]):  # eager vs graph: float32 rounding differs slightly
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_inside_a_trainer_loss_fn_the_training_matches(rng):
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)

    def run(wrap):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
        )
        body = wrap(lambda xb: model(xb, training=True))

        def loss_fn(model, batch):
            xb, yb = batch
            return tf.reduce_mean((body(xb) - yb) ** 2)

        trainer = tapekit.Trainer(
            model, loss_fn, optimizer=keras.optimizers.SGD(0.05), logdir=False, seed=0
        )
        history = trainer.fit((x, y), epochs=3, batch_size=16, shuffle=False, verbose=0)
        return history["loss"], [v.numpy() for v in model.trainable_variables]

    loss_c, weights_c = run(tapekit.checkpoint)
    loss_p, weights_p = run(lambda f: f)
    np.testing.assert_allclose(loss_c, loss_p, rtol=1e-5)
    for a, b in zip(weights_c, weights_p):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_tape_holds_only_the_inputs_of_a_checkpointed_block():
    """Memory TensorFlow's allocator holds after an eager forward pass on a tape."""
    x = tf.random.normal([256, 256])
    weights = [tf.random.normal([256, 256]) * 0.05 for _ in range(8)]

    def deep(h):
        for w in weights:
            h = tf.tanh(h @ w)
        return h

    def held(f):
        gc.collect()
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(f(x))
        during = tf.config.experimental.get_memory_info("CPU:0")["current"]
        g = tape.gradient(y, x)
        return during - before, g

    plain_bytes, g_plain = held(deep)
    ck_bytes, g_ck = held(tapekit.checkpoint(deep))
    np.testing.assert_allclose(g_ck, g_plain, rtol=1e-5, atol=1e-7)
    block = 256 * 256 * 4
    assert plain_bytes >= 8 * block  # every layer's activations are kept
    assert ck_bytes <= 2 * block  # only the output (and the block's input, already counted)


def test_not_callable():
    with pytest.raises(TypeError, match=r"checkpoint needs a callable"):
        tapekit.checkpoint(3)
