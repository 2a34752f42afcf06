"""vmap and per-example gradients: closed forms, the loop over examples, and JAX as the oracle."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import VectorizationWarning, _compile


def _f(w, x):
    """A smooth per-example function of a weight vector and an input vector."""
    return tf.reduce_sum(tf.sin(w * x) + w**2 * x)


# --------------------------------------------------------------------------------------------
# Closed forms and in_axes / out_axes


def test_in_axes_none_broadcasts_and_negative_axes_map(rng):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    dot = lambda a, c: tf.reduce_sum(a * c)  # noqa: E731
    np.testing.assert_allclose(tapekit.vmap(dot, (0, None))(x, b), x @ b, rtol=1e-6)
    np.testing.assert_allclose(tapekit.vmap(dot, (-1, None))(x.T, b), x @ b, rtol=1e-6)
    np.testing.assert_allclose(tapekit.vmap(dot, (1, 0))(x.T, x), np.sum(x * x, 1), rtol=1e-6)


def test_out_axes_place_the_mapped_axis(rng):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    double = tapekit.vmap(lambda a: tf.stack([a, 2 * a]), out_axes=1)  # per example (2, 4)
    out = double(x)
    assert out.shape == (2, 3, 4)
    np.testing.assert_allclose(out[1], 2 * x)
    last = tapekit.vmap(lambda a: tf.stack([a, 2 * a]), out_axes=-1)(x)
    assert last.shape == (2, 4, 3)
    np.testing.assert_allclose(last[1], 2 * x.T)


def test_nests_of_arguments_and_outputs_with_prefix_axes(rng):
    p = {"w": rng.normal(size=(4,)).astype(np.float32), "b": np.float32(0.5)}
    xs = (rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32))

    def fn(params, pair):
        a, s = pair
        y = tf.reduce_sum(params["w"] * a) + params["b"] * s
        return {"y": y, "pair": (a * 2.0, s)}

    out = tapekit.vmap(fn, in_axes=(None, (1, 0)), out_axes={"y": 0, "pair": (1, 0)})(p, xs)
    a, s = xs
    np.testing.assert_allclose(out["y"], p["w"] @ a + 0.5 * s, rtol=1e-5)
    np.testing.assert_allclose(out["pair"][0], 2 * a)  # mapped axis back at position 1
    np.testing.assert_allclose(out["pair"][1], s)


def test_keyword_arguments_are_mapped_over_axis_0():
    f = tapekit.vmap(lambda x, *, scale: x * scale, in_axes=(None,))
    out = f(tf.constant(2.0), scale=tf.constant([1.0, 3.0]))
    np.testing.assert_allclose(out, [2.0, 6.0])


def test_out_axes_none_returns_an_unmapped_output_once():
    f = tapekit.vmap(lambda x, c: (x * c, c + 1.0), in_axes=(0, None), out_axes=(0, None))
    mapped, const = f(tf.constant([1.0, 2.0]), tf.constant(3.0))
    np.testing.assert_allclose(mapped, [3.0, 6.0])
    assert const.shape == () and float(const) == 4.0


# --------------------------------------------------------------------------------------------
# Against the loop over examples, dtypes, chunks, tf.function, the cache


def test_vmap_grad_equals_the_loop_of_grads_in_float64(rng):
    w = tf.constant(rng.normal(size=(6, 3)))  # float64
    x = tf.constant(rng.normal(size=(6, 3)))
    g = tapekit.grad(_f)
    out = tapekit.vmap(g)(w, x)
    assert out.dtype == tf.float64
    loop = np.stack([g(w[i], x[i]).numpy() for i in range(6)])
    np.testing.assert_allclose(out, loop, rtol=1e-12)
    closed = np.cos(w.numpy() * x.numpy()) * x.numpy() + 2 * w.numpy() * x.numpy()
    np.testing.assert_allclose(out, closed, rtol=1e-12)


def test_chunk_size_gives_the_same_result(rng):
    w = tf.constant(rng.normal(size=(7, 3)).astype(np.float32))
    full = tapekit.vmap(tapekit.grad(_f), in_axes=(0, None))(w, w[0])
    for chunk in (1, 3, 100):
        part = tapekit.vmap(tapekit.grad(_f), in_axes=(0, None), chunk_size=chunk)(w, w[0])
        np.testing.assert_allclose(part, full, rtol=1e-6)


def test_inside_tf_function_with_an_unknown_batch_size(rng):
    f = tapekit.vmap(tapekit.grad(_f), in_axes=(0, None))

    @tf.function(input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([3])])
    def step(w, x):
        return f(w, x)

    w = rng.normal(size=(5, 3)).astype(np.float32)
    x = rng.normal(size=(3,)).astype(np.float32)
    expected = np.cos(w * x) * x + 2 * w * x
    np.testing.assert_allclose(step(w, x), expected, rtol=1e-5)
    np.testing.assert_allclose(step(w[:2], x), expected[:2], rtol=1e-5)


def test_eager_calls_are_compiled_once_per_signature():
    def cube(x):
        return x**3

    f = tapekit.vmap(cube)
    for _ in range(3):
        f(tf.ones([4, 2]))
    assert _compile.tracing_count(cube) == 1
    f(tf.ones([5, 2]))
    assert _compile.tracing_count(cube) == 2


def test_variables_read_from_the_closure_are_read_at_each_call():
    v = tf.Variable(2.0)
    f = tapekit.vmap(lambda x: x * v)
    np.testing.assert_allclose(f(tf.constant([1.0, 2.0])), [2.0, 4.0])
    v.assign(3.0)
    np.testing.assert_allclose(f(tf.constant([1.0, 2.0])), [3.0, 6.0])


# --------------------------------------------------------------------------------------------
# Composition with jacobian / hessian, and JAX as the oracle


def test_jacobian_of_vmap_is_block_diagonal(rng):
    x = tf.constant(rng.normal(size=(3, 2)))
    f = tapekit.vmap(lambda r: tf.reduce_sum(r**3))
    J = tapekit.jacobian(f)(x)  # (3,) + (3, 2)
    expected = np.zeros((3, 3, 2))
    for i in range(3):
        expected[i, i] = 3 * x.numpy()[i] ** 2
    np.testing.assert_allclose(J, expected, rtol=1e-12)
    assert J.dtype == tf.float64


def test_vmap_of_hessian_and_grad_match_jax(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    w = rng.normal(size=(4, 3)).astype(np.float32)
    x = rng.normal(size=(3,)).astype(np.float32)

    def jf(w, x):
        return jnp.sum(jnp.sin(w * x) + w**2 * x)

    H = tapekit.vmap(tapekit.hessian(_f), in_axes=(0, None))(w, x)
    H_jax = jax.vmap(jax.hessian(jf), in_axes=(0, None))(w, x)
    np.testing.assert_allclose(H, H_jax, rtol=1e-5, atol=1e-6)
    G = tapekit.vmap(tapekit.grad(_f, argnums=1), in_axes=(None, 0))(x, w)
    G_jax = jax.vmap(jax.grad(jf, argnums=1), in_axes=(None, 0))(x, w)
    np.testing.assert_allclose(G, G_jax, rtol=1e-5, atol=1e-6)


def test_nested_axes_match_jax(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    a = rng.normal(size=(2, 5, 3)).astype(np.float32)
    b = rng.normal(size=(3, 5)).astype(np.float32)

    def tf_fn(p, q):
        return {"m": tf.linalg.matvec(p, q), "s": tf.reduce_sum(p) * q}

    def jax_fn(p, q):
        return {"m": p @ q, "s": jnp.sum(p) * q}

    for in_axes, out_axes in [((1, 1), 0), ((1, -1), {"m": 1, "s": 0}), ((-2, 1), -1)]:
        got = tapekit.vmap(tf_fn, in_axes, out_axes)(a, b)
        want = jax.vmap(jax_fn, in_axes, out_axes)(a, b)
        for k in ("m", "s"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_nested_vmap_matches_jax(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = rng.normal(size=(3, 4)).astype(np.float32)
    y = rng.normal(size=(5, 4)).astype(np.float32)
    pair = lambda a, b: tf.reduce_sum((a - b) ** 2)  # noqa: E731
    got = tapekit.vmap(tapekit.vmap(pair, (None, 0)), (0, None))(x, y)
    want = jax.vmap(jax.vmap(lambda a, b: jnp.sum((a - b) ** 2), (None, 0)), (0, None))(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Fallback to a loop


def _no_rule(x):
    return tf.strings.to_number(tf.strings.as_string(x))  # AsString has no pfor rule


def test_fallback_warns_once_naming_the_op_and_gives_the_same_result():
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    with pytest.warns(VectorizationWarning, match=r"`AsString`.*fallback='error'"):
        out = tapekit.vmap(_no_rule)(x)
    np.testing.assert_allclose(out, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VectorizationWarning)
        tapekit.vmap(_no_rule)(tf.ones([3, 2]))  # same op: not warned again


def test_fallback_error_raises_naming_the_op():
    with pytest.raises(ValueError, match=r"no vectorization \(pfor\) rule for op\(s\) `AsString`"):
        tapekit.vmap(_no_rule, fallback="error")(tf.ones([2, 2]))


def _clipped_square(r):
    if tf.reduce_sum(r) > 0.0:  # a Python `if` on a tensor: AutoGraph makes it a tf.cond
        return r**2
    return -r


def _loss_with_if(w):
    return lambda x: _clipped_square(tf.linalg.matvec(x, w))


def test_a_python_if_in_per_example_grads_falls_back_to_a_loop_with_a_warning(rng):
    # pfor cannot stack the gradient of that cond (its own while_loop fallback fails too):
    # the examples run one by one, with the result of the tf.where form.
    w = tf.Variable(rng.normal(size=3))
    x = rng.normal(size=(6, 3))

    def where_form(x):
        r = tf.linalg.matvec(x, w)
        return tf.where(tf.reduce_sum(r) > 0.0, r**2, -r)

    with pytest.warns(VectorizationWarning, match=r"cannot vectorize.*tf\.where.*\(Shown once"):
        looped = tapekit.per_example_grads(_loss_with_if(w), [w])(x)
    vectorized = tapekit.per_example_grads(where_form, [w])(x)
    np.testing.assert_allclose(looped[0], vectorized[0], rtol=1e-12)
    in_graph = tf.function(lambda x: tapekit.per_example_grads(_loss_with_if(w), [w])(x))(x)
    np.testing.assert_allclose(in_graph[0], vectorized[0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"cannot vectorize.*fallback='error' forbids"):
        tapekit.per_example_grads(_loss_with_if(w), [w], fallback="error")(x)


# --------------------------------------------------------------------------------------------
# Errors


def test_mismatched_mapped_sizes_name_both_arguments():
    dot = lambda a, b: tf.reduce_sum(a * b)  # noqa: E731
    with pytest.raises(
        ValueError,
        match=r"same size.*argument 0 \(`a`\) \(axis 0\) has size 3.*"
        r"argument 1 \(`b`\) \(axis 0\) has size 2.*None in in_axes",
    ):
        tapekit.vmap(dot)(tf.ones([3, 2]), tf.ones([2, 2]))


def test_in_axes_nest_that_does_not_match():
    f = lambda a, b: a  # noqa: E731
    with pytest.raises(ValueError, match=r"in_axes has 1 entries.*2 positional"):
        tapekit.vmap(f, in_axes=(0,))(tf.ones([2]), tf.ones([2]))
    with pytest.raises(ValueError, match=r"in_axes gives a tuple of 2 entries for argument 0"):
        tapekit.vmap(lambda p: p[0], in_axes=((0, 0),))([tf.ones([2])] * 3)
    with pytest.raises(ValueError, match=r"keys \['a'\].*keys \['b'\]"):
        tapekit.vmap(lambda p: p["b"], in_axes=({"a": 0},))({"b": tf.ones([2])})


def test_out_axes_on_a_scalar_output():
    with pytest.raises(ValueError, match=r"out_axes=1.*scalar per example.*Use out_axes=0"):
        tapekit.vmap(tf.reduce_sum, out_axes=1)(tf.ones([3, 2]))


def test_axis_out_of_range_and_scalars():
    with pytest.raises(ValueError, match=r"in_axes=2 is out of range for argument 0.*rank 2"):
        tapekit.vmap(lambda a: a, in_axes=2)(tf.ones([3, 2]))
    with pytest.raises(ValueError, match=r"out_axes=-3 is out of range for the output.*-2\.\.1"):
        tapekit.vmap(lambda a: a, out_axes=-3)(tf.ones([3, 2]))
    with pytest.raises(ValueError, match=r"scalar \(rank 0\).*Pass None"):
        tapekit.vmap(lambda a, b: a * b)(tf.ones([3]), 2.0)


def test_out_axes_none_on_a_mapped_output():
    with pytest.raises(ValueError, match=r"out_axes=None.*depends on a mapped input"):
        tapekit.vmap(lambda a: a * 2, out_axes=None)(tf.ones([3]))


def test_build_time_errors():
    with pytest.raises(TypeError, match=r"vmap needs a callable"):
        tapekit.vmap(3)
    with pytest.raises(TypeError, match=r"in_axes\[1\] is str"):
        tapekit.vmap(tf.sin, in_axes=(0, "x"))
    with pytest.raises(ValueError, match=r"fallback to be one of"):
        tapekit.vmap(tf.sin, fallback="loop")
    with pytest.raises(ValueError, match=r"at least one mapped argument"):
        tapekit.vmap(tf.sin, in_axes=None)(tf.ones([2]))


# --------------------------------------------------------------------------------------------
# per_example_grads / per_example_grad_norms


def _model_and_loss():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    )
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    return model, lambda x, y: ce(y, model(x))


def _loop_grads(model, loss, x, y):
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(x[i : i + 1], y[i : i + 1]))
        out.append(tape.gradient(value, model.trainable_variables))
    return [np.stack([g[k] for g in out]) for k in range(len(out[0]))]


def test_per_example_grads_of_a_keras_model_equal_the_loop(rng):
    model, loss = _model_and_loss()
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    grads = tapekit.per_example_grads(loss, model)(x, y)
    loop = _loop_grads(model, loss, x, y)
    assert [g.shape for g in grads] == [(6,) + tuple(v.shape) for v in model.trainable_variables]
    for g, want in zip(grads, loop):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    norms = tapekit.per_example_grad_norms(loss, model, chunk_size=4)(x, y)
    want = np.sqrt(sum(np.sum(g.reshape(6, -1) ** 2, 1) for g in loop))
    np.testing.assert_allclose(norms, want, rtol=1e-5)


def test_per_example_grads_closed_form_nest_float64_and_tf_function(rng):
    w = tf.Variable(rng.normal(size=(3,)))
    b = tf.Variable(0.5, dtype=tf.float64)
    unused = tf.Variable(1.0, dtype=tf.float64)
    x = tf.constant(rng.normal(size=(4, 3)))
    t = tf.constant(rng.normal(size=(4,)))
    loss = lambda x, t: (tf.linalg.matvec(x, w) + b - t) ** 2  # noqa: E731
    pe = tapekit.per_example_grads(loss, {"w": w, "b": b, "unused": unused})
    r = (x.numpy() @ w.numpy() + 0.5 - t.numpy())[:, None]
    for got in (pe(x, t), tf.function(pe)(x, t)):
        assert got["w"].dtype == tf.float64
        np.testing.assert_allclose(got["w"], 2 * r * x.numpy(), rtol=1e-12)
        np.testing.assert_allclose(got["b"], 2 * r[:, 0], rtol=1e-12)
        np.testing.assert_array_equal(got["unused"], np.zeros(4))


def test_per_example_grads_match_jax(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    W = rng.normal(size=(4, 3)).astype(np.float32)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    v = tf.Variable(W)
    got = tapekit.per_example_grads(lambda x: tf.reduce_sum(tf.tanh(x @ v) ** 2, axis=1), [v])(x)[0]
    want = jax.vmap(jax.grad(lambda W, x: jnp.sum(jnp.tanh(x @ W) ** 2)), (None, 0))(W, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_per_example_grads_errors():
    v = tf.Variable([1.0, 2.0])
    with pytest.raises(TypeError, match=r"variables\[0\] is EagerTensor.*tapekit.vmap"):
        tapekit.per_example_grads(lambda x: x, [tf.constant(1.0)])
    with pytest.raises(ValueError, match=r"no trainable variables yet.*Build it first"):
        tapekit.per_example_grads(lambda x: x, keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"one loss per example.*shape \(1, 2\).*reduction=None"):
        tapekit.per_example_grads(lambda x: x * v, [v])(tf.ones([3, 2]))


def test_grad_norms_take_the_dense_shortcut_and_equal_the_formed_gradients(rng):
    """Dense kernels/biases: norms from |x|·|dL/dz| (no per-example matrix); other variables
    (used twice, or not at all) get their gradients formed; both routes agree with the loop."""
    from tapekit import _norms

    model, loss = _model_and_loss()
    shared = tf.Variable(rng.normal(size=(3, 3)).astype(np.float32))
    unused = tf.Variable(1.0)

    def loss2(x, y):  # `shared` is used twice: no shortcut for it
        logits = model(x) @ shared @ shared
        return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

    variables = [*model.trainable_variables, shared, unused]
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=6)
    norms = tapekit.per_example_grad_norms(loss2, variables)(x, y)
    grads = tapekit.per_example_grads(loss2, variables)(x, y)
    want = np.sqrt(sum(np.sum(g.numpy().reshape(6, -1) ** 2, 1) for g in grads))
    np.testing.assert_allclose(norms, want, rtol=1e-5)

    @tf.function
    def recognized(x, y):
        graph = tf.compat.v1.get_default_graph()
        start = len(graph.get_operations())
        loss2(x[:1], y[:1])  # the ops of one example, as the vectorized loop sees them
        uses = _norms._uses(graph.get_operations()[start:], [_v(v) for v in variables])
        return [_norms._shortcut(u, _v(v)) is not None for u, v in zip(uses, variables)]

    assert recognized(x, y) == [True, True, True, True, False, False]


def _v(v):
    return getattr(v, "value", v) if not isinstance(v, tf.Variable) else v


def test_functions_run_eagerly_gives_the_same_results_and_errors():
    tf.config.run_functions_eagerly(True)
    try:
        f = tapekit.vmap(lambda a, c: (a * c, c + 1.0), in_axes=(0, None), out_axes=(0, None))
        mapped, const = f(tf.constant([1.0, 2.0]), tf.constant(2.0))
        np.testing.assert_allclose(mapped, [2.0, 4.0])
        assert float(const) == 3.0
        with pytest.raises(ValueError, match=r"out_axes=None.*depends on a mapped input"):
            tapekit.vmap(lambda a: a * 2, out_axes=None)(tf.ones([3]))
    finally:
        tf.config.run_functions_eagerly(False)


def test_per_example_grads_of_one_loss_for_two_variable_sets_of_the_same_shape():
    """The loss reads both variables from its closure; each function differentiates its own."""
    v1 = tf.Variable([1.0, 2.0])
    v2 = tf.Variable([3.0, 5.0])

    def loss(x):
        return tf.reduce_sum(x, axis=1) * v1[0] + tf.reduce_sum(x * v2, axis=1)

    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    g1 = tapekit.per_example_grads(loss, [v1])(x)[0]
    g2 = tapekit.per_example_grads(loss, [v2])(x)[0]
    np.testing.assert_allclose(g1, [[3.0, 0.0], [7.0, 0.0]])
    np.testing.assert_allclose(g2, x)
    np.testing.assert_allclose(tapekit.per_example_grads(loss, [v1])(x)[0], g1)


def test_variables_passed_as_arguments_are_read_at_each_call():
    """One variable in fn's closure, another of the same shape as the argument."""
    v1 = tf.Variable([1.0, 2.0])
    v2 = tf.Variable([3.0, 5.0])
    f = tapekit.vmap(lambda a, v: a * v + v1, in_axes=(0, None))
    x = tf.ones([2, 2])
    np.testing.assert_allclose(f(x, v1), [[2.0, 4.0]] * 2)
    np.testing.assert_allclose(f(x, v2), [[4.0, 7.0]] * 2)
    g = tapekit.vmap(tapekit.grad(lambda v, a: tf.reduce_sum(v**2 * a)), in_axes=(None, 0))
    np.testing.assert_allclose(g(v2, x), [[6.0, 10.0]] * 2)


def test_no_retracing_warning_for_many_distinct_functions_under_grad():
    """vmap(grad(f)) for many different f: tapekit's grad_fn code is shared, the f are not."""
    x = tf.ones([2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", _compile.RetracingWarning)
        for k in range(_compile.RETRACE_WARNING + 3):
            f = eval(f"lambda w: tf.reduce_sum(w ** 2) * {k}.0")  # a new code object each time
            np.testing.assert_allclose(tapekit.vmap(tapekit.grad(f))(x), 2 * k * np.ones([2, 2]))
