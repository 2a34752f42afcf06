"""Edge cases of Tape, jacobian, batch_jacobian, hessian and hvp found by an independent check:
variables read through a closure, control flow in forward mode, IndexedSlices, mixed dtypes,
unknown batch sizes, per-target connectivity, retracing; and agreement with JAX."""

from __future__ import annotations

import collections
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import DisconnectedGradientError, Tape, _compile

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def cube_sum(x):
    return tf.reduce_sum(x**3)


def branchy(x):  # AutoGraph makes a tf.cond of this inside tf.function
    if tf.reduce_sum(x) > 0:
        return tf.reduce_sum(x**3)
    return tf.reduce_sum(x**2)


def looped(x):  # ... and a tf.while_loop with a counter of this
    y = tf.reduce_sum(x**2)
    for i in tf.range(3):
        y = y + tf.reduce_sum(x**3) * tf.cast(i, x.dtype)
    return y  # H = diag(2 + 18 x)


# ---------------------------------------------------------------- transforms: found bugs


@pytest.mark.parametrize("compile", [True, False])
def test_variables_read_through_a_closure_are_differentiated(compile):
    # A Keras model reads its own weights: passing them must give the real Hessian when compiled
    # too (it gave zeros: the compiled function received copies of their values).
    model = keras.Sequential([keras.layers.Dense(1, use_bias=False)])
    x = tf.constant([[1.0, 2.0]])
    model(x)
    weights = model.trainable_variables
    kernel = weights[0]
    h = tapekit.hessian(lambda ws: tf.reduce_sum(model(x) ** 2), compile=compile)(weights)
    np.testing.assert_allclose(np.reshape(h[0][0], (2, 2)), 2 * np.outer([1, 2], [1, 2]))
    v = tf.Variable([1.0, 2.0])
    f = lambda _: tf.reduce_sum(v**3)  # noqa: E731
    np.testing.assert_allclose(tapekit.hessian(f, compile=compile)(v), np.diag([6.0, 12.0]))
    np.testing.assert_allclose(tapekit.hvp(f, (v,), (tf.ones(2),), compile=compile)[0], [6, 12])
    jac = tapekit.jacobian(lambda _: kernel * 2.0, mode="fwd", compile=compile)(kernel)
    assert jac.shape == (2, 1, 2, 1) and float(tf.reduce_sum(jac)) == 4.0
    v.assign([2.0, 3.0])  # values are read at each call, not frozen in the trace
    np.testing.assert_allclose(tapekit.hessian(f, compile=compile)(v), np.diag([12.0, 18.0]))


@pytest.mark.parametrize("compile", [True, False])
def test_control_flow_in_forward_mode(compile):
    # TensorFlow cannot run forward-over-reverse through tf.cond/tf.while_loop in a graph:
    # hvp (always forward) and hessian(mode="fwd") failed; they now use reverse there.
    x = tf.constant([1.0, 2.0])
    np.testing.assert_allclose(
        tapekit.hessian(branchy, mode="fwd", compile=compile)(x), np.diag([6.0, 12.0])
    )
    np.testing.assert_allclose(tapekit.hvp(branchy, (x,), (x,), compile=compile)[0], [6, 24])
    np.testing.assert_allclose(tapekit.hvp(branchy, (-x,), (x,), compile=compile)[0], [2, 4])
    np.testing.assert_allclose(tapekit.hvp(looped, (x,), (x,), compile=compile)[0], [20, 76])
    # forward-mode jacobian through ops/control flow that TensorFlow cannot vectorize or run
    # forward (tf.cond, tf.gather_nd; also tf.map_fn, slow to vectorize): same as reverse mode
    fns = [
        lambda x: tf.cond(x[0] > 0, lambda: x**2, lambda: x**3),
        lambda x: tf.gather_nd(x, [[1], [0], [1]]) ** 2,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tapekit.VectorizationWarning)
        for f in fns:
            fwd = tapekit.jacobian(f, mode="fwd", compile=compile)(x)
            np.testing.assert_allclose(fwd, tapekit.jacobian(f, mode="rev")(x), rtol=1e-6)


def test_gather_gives_dense_results_in_every_transform():
    emb = tf.constant(np.arange(6.0).reshape(3, 2))
    f = lambda e: tf.reduce_sum(tf.gather(e, [0, 2, 2]) ** 3)  # noqa: E731
    h_diag = np.array([[0.0, 6.0], [0.0, 0.0], [48.0, 60.0]])  # 6 e · (times gathered)
    for compile in (True, False):
        (hv,) = tapekit.hvp(f, (emb,), (np.ones((3, 2)),), compile=compile)
        assert isinstance(hv, tf.Tensor) and hv.dtype == tf.float64
        np.testing.assert_allclose(hv, h_diag)
        h = tapekit.hessian(f, mode="fwd", compile=compile)(emb)
        np.testing.assert_allclose(tf.reshape(h, (6, 6)), np.diag(h_diag.ravel()))


@pytest.mark.parametrize("mode", ["rev", "fwd", "auto"])
def test_result_dtype_is_the_input_dtype_in_every_mode(mode):
    # fn computes in float32 from a float64 input: the Jacobian had float32 in forward mode
    # and float64 in reverse mode, so mode="auto" changed the dtype with the shapes.
    x = tf.constant([1.0, 2.0], tf.float64)
    jac = tapekit.jacobian(lambda x: tf.cast(x, tf.float32) ** 2, mode=mode)(x)
    assert jac.dtype == tf.float64
    np.testing.assert_allclose(jac, np.diag([2.0, 4.0]))
    h = tapekit.hessian(
        lambda a, b: tf.reduce_sum(a**2) * tf.cast(b, tf.float32) ** 2, argnums=(0, 1), mode=mode
    )(tf.ones(2), tf.constant(2.0, tf.float64))
    assert [[b.dtype for b in row] for row in h] == [[tf.float32, tf.float64]] * 2
    np.testing.assert_allclose(h[0][1], [8.0, 8.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_dtypes_are_kept(dtype):
    x = tf.constant([1.0, 2.0], dtype)
    results = [
        tapekit.hessian(cube_sum)(x),
        tapekit.hessian(cube_sum, mode="fwd", compile=False)(x),
        tapekit.hvp(cube_sum, (x,), (tf.ones(2, dtype),))[0],
        tapekit.jacobian(lambda x: x**3, mode="fwd")(x),
        tapekit.batch_jacobian(lambda x: x**3)(tf.reshape(x, (2, 1)))[:, 0, 0],
    ]
    expected = [np.diag([6.0, 12.0])] * 2 + [[6.0, 12.0], np.diag([3.0, 12.0]), [3.0, 12.0]]
    for got, want in zip(results, expected):
        assert got.dtype == dtype
        np.testing.assert_allclose(tf.cast(got, tf.float64), want)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_functions_that_ignore_their_input_give_zeros(mode):
    x = tf.constant([1.0, 2.0, 3.0], tf.float64)
    h = tapekit.hessian(lambda x: tf.constant(2.0, tf.float64), mode=mode)(x)
    jac = tapekit.jacobian(lambda x: tf.ones((2, 2)), mode=mode)(x)  # float32 out, float64 in
    bj = tapekit.batch_jacobian(lambda x: tf.zeros((2, 4)), mode=mode)(tf.ones((2, 3)))
    for got, shape, dtype in ((h, (3, 3), tf.float64), (jac, (2, 2, 3), tf.float64)):
        assert got.shape == shape and got.dtype == dtype and not np.any(got)
    assert bj.shape == (2, 4, 3) and not np.any(bj)
    assert not np.any(tapekit.hvp(lambda x: 1.0, (x,), (x,))[0])


def test_int_and_bool_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"hvp needs floating-point .* argument 0 \(`x`\).*int32"):
        tapekit.hvp(cube_sum, (tf.constant([1, 2]),), (tf.constant([1, 2]),))
    with pytest.raises(TypeError, match=r"argument 0 \(`x`\) has dtype bool"):
        tapekit.batch_jacobian(lambda x: x)(np.array([[True]]))
    with pytest.raises(TypeError, match=r"argument 1 \(`y`\)\.b has dtype int64"):
        pair = collections.namedtuple("pair", "a b")
        tapekit.hessian(lambda x, y: x, argnums=(0, 1))(1.0, pair(1.0, np.array([1])))


def test_unknown_batch_size_inside_tf_function():
    spec = [tf.TensorSpec([None, 2], tf.float32)]

    @tf.function(input_signature=spec)
    def transforms(x):
        return (
            tapekit.batch_jacobian(lambda x: x**2)(x),
            tapekit.batch_jacobian(lambda x: x**2, mode="fwd")(x),
        )

    @tf.function(input_signature=spec)
    def tape(x):
        with Tape(watch=x, persistent=True) as t:
            y = x**2
        out = t.batch_jacobian(y, x), t.jacobian(y, [x, tf.ones(3)], unconnected="zero")[1]
        t.release()
        return out

    x = tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    expected = np.stack([np.diag(2 * row) for row in x.numpy()])
    for got in [*transforms(x), tape(x)[0]]:
        np.testing.assert_allclose(got, expected)
    zeros = tape(x)[1]  # a zero block whose shape is known only at run time
    assert zeros.shape == (3, 2, 3) and not np.any(zeros)


def test_numpy_float64_constants_work_compiled_as_eagerly():
    f = lambda x, t: tf.reduce_sum(x**3) * t  # noqa: E731
    for compile in (True, False):
        h = tapekit.hessian(f, compile=compile)(tf.ones(2), np.float64(2.0))
        np.testing.assert_allclose(h, np.diag([12.0, 12.0]))


def test_retracing_is_reported_once():
    def f(x, t):
        return tf.reduce_sum(x**3) * t

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(_compile.RETRACE_WARNING + 3):  # a new Python constant each call
            tapekit.hessian(f)(tf.ones(2), float(t))
    messages = [w for w in caught if issubclass(w.category, _compile.RetracingWarning)]
    assert len(messages) == 1 and "tf.constant(t)" in str(messages[0].message)
    assert messages[0].filename == __file__  # points at the user's call


def test_a_new_lambda_per_call_is_reported_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(_compile.RETRACE_WARNING + 2):
            tapekit.jacobian(lambda x: x * 2.0)(1.0)  # a new function object each time
    messages = [str(w.message) for w in caught if w.category is _compile.RetracingWarning]
    assert len(messages) == 1 and "Define the function" in messages[0]


def test_cache_of_functions_without_weak_references_is_bounded():
    class Slotted:  # instances cannot be weakly referenced
        __slots__ = ()

        def __call__(self, x):
            return x

    for _ in range(_compile._STRONG_MAX + 10):
        _compile._store(Slotted())
    assert len(_compile._STRONG) <= _compile._STRONG_MAX


# ---------------------------------------------------------------- Tape: found bugs


def test_tape_higher_orders_through_gather_are_not_zero():
    emb = tf.Variable(np.arange(6.0).reshape(3, 2))
    with Tape(order=3, persistent=True) as tape:
        y = tf.reduce_sum(tf.gather(emb, [0, 2]) ** 3)
    e = emb.numpy()
    mask = np.array([[1.0], [0.0], [1.0]])
    assert isinstance(tape.gradient(y, emb), tf.IndexedSlices)  # as TensorFlow gives it
    np.testing.assert_allclose(tape.gradient(y, emb, order=2), 6 * e * mask)
    np.testing.assert_allclose(tape.gradient(y, emb, order=3), 6 * np.ones_like(e) * mask)
    tape.release()


def test_tape_jacobian_checks_each_target_on_its_own():
    x = tf.constant([1.0, 2.0])
    with Tape(persistent=True, watch=x) as tape:
        y = x**2
    outside = x * 3.0  # not recorded
    with pytest.raises(DisconnectedGradientError, match=r"Tape.jacobian of target\['b'\]"):
        tape.jacobian({"a": y, "b": outside}, x)
    jac = tape.jacobian({"a": y, "b": outside}, x, unconnected="none")
    np.testing.assert_allclose(jac["a"], np.diag([2.0, 4.0]))
    assert jac["b"] is None
    zero = tape.jacobian([y, outside], x, unconnected="zero")[1]
    assert zero.shape == (2, 2) and not np.any(zero)
    tape.release()


def test_non_trainable_variable_is_diagnosed():
    counter = tf.Variable(2.0, trainable=False, name="scale")
    with Tape() as tape:
        y = counter * 3.0
    pattern = r"variable 'scale:0'\): the variable is not trainable.*tape\.watch\(v\)"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, counter)
    assert info.value.sources == [("the source", "variable_not_trainable")]
    with Tape(watch=counter) as tape:
        y = counter * 3.0
    assert float(tape.gradient(y, counter)) == 3.0


def test_tape_rejects_targets_that_are_not_tensors():
    x = tf.constant(1.0)
    with Tape(watch=x, persistent=True) as tape:
        y = x * 2.0
    with pytest.raises(TypeError, match=r"but target\[1\] is NoneType None"):
        tape.gradient([y, None], x)
    with pytest.raises(TypeError, match=r"but the target is float 3.0"):
        tape.jacobian(3.0, x)
    tape.release()
    tape.release()  # idempotent
    assert "released" in repr(tape)


def test_tape_orders_on_closed_forms_with_nests_and_output_gradients():
    x = tf.constant([0.5, 1.5], tf.float64)
    w = tf.Variable(0.3, dtype=tf.float64)
    with Tape(order=3, persistent=True, watch={"x": x}) as tape:
        y = tf.exp(2.0 * x) * w
    e = np.exp(2 * x.numpy())
    for k in (1, 2, 3):
        g = tape.gradient(y, {"x": x, "w": [w]}, order=k)
        np.testing.assert_allclose(g["x"], 2.0**k * e * 0.3, rtol=1e-12)
        want_w = e.sum() if k == 1 else 0.0  # y is linear in w
        np.testing.assert_allclose(g["w"][0], want_w, rtol=1e-12)
    weights = tf.constant([1.0, -2.0], tf.float64)
    g2 = tape.gradient(y, x, order=2, output_gradients=weights)
    np.testing.assert_allclose(g2, 4 * e * 0.3 * weights.numpy(), rtol=1e-12)
    tape.release()


# ---------------------------------------------------------------- against JAX


@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", False)


def assert_tree_close(got, want):
    import jax

    flat_got = tf.nest.flatten(got)
    flat_want = jax.tree_util.tree_leaves(want)
    assert len(flat_got) == len(flat_want)
    for g, w in zip(flat_got, flat_want):
        assert tuple(g.shape) == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_nested_hessian_blocks_match_jax(jax_x64, rng):
    jnp = jax_x64.numpy
    pair = collections.namedtuple("pair", "w b")

    def f_tf(p, x):
        return tf.reduce_sum(tf.tanh(tf.linalg.matvec(p.w, x) + p.b[0]) ** 2) + tf.reduce_sum(x**4)

    def f_jax(p, x):
        return jnp.sum(jnp.tanh(p.w @ x + p.b[0]) ** 2) + jnp.sum(x**4)

    p = pair(rng.normal(size=(2, 3)), [rng.normal(size=2)])
    x = rng.normal(size=3)
    want = jax_x64.hessian(f_jax, argnums=(0, 1))(p, x)
    p_tf = pair(tf.constant(p.w), [tf.constant(p.b[0])])
    for mode, chunk in (("rev", None), ("fwd", 4), ("rev", 100)):
        got = tapekit.hessian(f_tf, argnums=(0, 1), mode=mode, chunk_size=chunk)(p_tf, x)
        assert_tree_close(got, want)
    got = tapekit.hessian(f_tf, argnums=(0, 1), jit_compile=True)(p_tf, x)
    assert_tree_close(got, want)
    v = (pair(rng.normal(size=(2, 3)), [rng.normal(size=2)]), rng.normal(size=3))
    _, hv = jax_x64.jvp(jax_x64.grad(f_jax, argnums=(0, 1)), (p, x), v)
    assert_tree_close(tapekit.hvp(f_tf, (p_tf, x), v), hv)


def test_nested_jacobian_and_3d_batch_jacobian_match_jax(jax_x64, rng):
    jnp = jax_x64.numpy
    w = rng.normal(size=(6, 4))

    def f_tf(x):  # (B, 2, 3) -> {"h": (B, 2, 2), "s": (B,)}
        h = tf.reshape(tf.tanh(tf.reshape(x, (-1, 6)) @ w), (-1, 2, 2))
        return {"h": h, "s": tf.reduce_sum(h**2, axis=[1, 2])}

    def f_jax(x):
        h = jnp.tanh(x.reshape(-1, 6) @ w).reshape(-1, 2, 2)
        return {"h": h, "s": jnp.sum(h**2, axis=(1, 2))}

    x = rng.normal(size=(3, 2, 3))
    per_example = jax_x64.vmap(
        jax_x64.jacrev(lambda xi: jax_x64.tree_util.tree_map(lambda t: t[0], f_jax(xi[None])))
    )(x)
    for mode in ("rev", "fwd", "auto"):
        assert_tree_close(tapekit.batch_jacobian(f_tf, mode=mode, chunk_size=5)(x), per_example)
        assert_tree_close(tapekit.jacobian(f_tf, mode=mode)(x), jax_x64.jacrev(f_jax)(x))
