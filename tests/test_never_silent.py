"""Issue 10, "never silently wrong": every transform returns the right derivative, a documented
zero for an input the output does not use, or an error naming the cause. Stale compiled results
after a captured name is rebound, NumPy and ops without a gradient, assignments, cache keys."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import tapekit as tk
from tapekit import DisconnectedGradientError, _compile

X2 = tf.constant([0.5, 1.5])


def causes(info: pytest.ExceptionInfo) -> list[str]:
    return [cause for _, cause in info.value.sources]


# ---------------------------------------------------------------- rebinding a captured name

scale = tf.constant(2.0)  # read by `scaled` below: rebinding it must be seen
weight = tf.Variable(2.0)
factor = 2.0
net = None


def scaled(x):
    return scale * tf.reduce_sum(x**3)


def by_variable(x):
    return weight * tf.reduce_sum(x**3)


def by_float(x):
    return factor * tf.reduce_sum(x**3)


def helper(x):
    return 2.0 * tf.reduce_sum(x**3)


def calls_helper(x):
    return helper(x)


def by_model(x):
    return tf.reduce_sum(net(x[None]) ** 2)


def _rebind(kind: str, c: float):
    """Rebind the global read by the function of ``kind`` so the function is c·Σx³."""
    global scale, weight, factor, helper
    if kind == "tensor":
        scale = tf.constant(c)
    elif kind == "variable":
        weight = tf.Variable(c)
    elif kind == "float":
        factor = c
    else:
        helper = lambda x: c * tf.reduce_sum(x**3)  # noqa: E731


FUNCTIONS = {"tensor": scaled, "variable": by_variable, "float": by_float, "helper": calls_helper}
TRANSFORMS = {
    "hessian": lambda f: tk.hessian(f),
    "hessian_fwd": lambda f: tk.hessian(f, mode="fwd"),
    "jacobian_of_grad": lambda f: tk.jacobian(tk.grad(f)),
    "hvp": lambda f: lambda x: tk.hvp(f, (x,), (tf.ones_like(x),))[0],
}


def _expected(transform: str, c: float, x: np.ndarray) -> np.ndarray:
    h = np.diag(6.0 * c * x)  # the Hessian of c·Σx³
    return h.sum(axis=1) if transform == "hvp" else h


@settings(max_examples=6, deadline=None)
@given(
    kind=st.sampled_from(sorted(FUNCTIONS)),
    transform=st.sampled_from(sorted(TRANSFORMS)),
    c=st.floats(-4.0, 4.0).filter(lambda c: abs(c - 2.0) > 0.1),
)
def test_rebinding_a_captured_name_gives_the_fresh_answer(kind, transform, c):
    _rebind(kind, 2.0)
    fn = TRANSFORMS[transform](FUNCTIONS[kind])
    x = X2.numpy()
    np.testing.assert_allclose(fn(X2), _expected(transform, 2.0, x), rtol=1e-5)
    _rebind(kind, c)
    np.testing.assert_allclose(fn(X2), _expected(transform, c, x), rtol=1e-5, atol=1e-6)
    _rebind(kind, 2.0)
    np.testing.assert_allclose(fn(X2), _expected(transform, 2.0, x), rtol=1e-5)


def test_closure_tensor_rebound_in_the_enclosing_scope():
    s = tf.constant(1.0)

    def f(x):
        return s * tf.reduce_sum(x**2)

    h = tk.hessian(f)
    np.testing.assert_allclose(h(X2), 2.0 * np.eye(2))
    s = tf.constant(5.0)  # noqa: F841 - read by f through its closure cell
    np.testing.assert_allclose(h(X2), 10.0 * np.eye(2))


class _Scaled:
    def __init__(self, s: float) -> None:
        self.s = tf.constant(s)

    def loss(self, x):
        return self.s * tf.reduce_sum(x**2)


def test_an_attribute_rebound_on_the_object_of_a_method_or_closure_is_seen():
    obj = _Scaled(1.0)
    by_method = tk.hessian(obj.loss)
    by_closure = tk.hessian(lambda x: obj.s * tf.reduce_sum(x**2))
    for h in (by_method, by_closure):
        np.testing.assert_allclose(h(X2), 2.0 * np.eye(2))
    obj.s = tf.constant(4.0)  # a new tensor on the same object: both must answer with it
    for h in (by_method, by_closure):
        np.testing.assert_allclose(h(X2), 8.0 * np.eye(2))


def test_a_rebuilt_global_keras_model_gives_its_own_hessian():
    global net
    answers = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        net = keras.Sequential([keras.layers.Dense(1, use_bias=False)])
        net.build((None, 2))
        w = net.weights[0].numpy()
        answers.append((tk.hessian(by_model)(X2).numpy(), 2.0 * w @ w.T))
    for got, want in answers:
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(answers[0][1], answers[1][1])  # really two different models


def test_assigning_a_variable_is_read_without_a_retrace():
    v = tf.Variable(1.0)
    f = lambda x: v * tf.reduce_sum(x**2)  # noqa: E731
    h = tk.hessian(f)
    h(X2)
    count = _compile.tracing_count(f)
    v.assign(3.0)
    np.testing.assert_allclose(h(X2), 6.0 * np.eye(2))
    assert _compile.tracing_count(f) == count


# ---------------------------------------------------------------- cache keys


@pytest.mark.parametrize("make", [tk.hessian, tk.jacobian, tk.batch_jacobian])
def test_argnums_int_and_one_tuple_do_not_share_a_cache_entry(make):
    f = lambda x: tf.reduce_sum(x**2) if make is tk.hessian else x**2  # noqa: E731
    x = tf.constant([[1.0, 2.0]])
    bare, tupled = make(f)(x), make(f, argnums=(0,))(x)
    assert isinstance(bare, tf.Tensor)
    assert isinstance(tupled, tuple) and len(tupled) == 1
    block = tupled[0][0] if make is tk.hessian else tupled[0]  # hessian: blocks H[a][b]
    np.testing.assert_allclose(block, bare)
    assert isinstance(make(f)(x), tf.Tensor)  # and the other order again


def test_hessian_of_a_variable_takes_the_cached_concrete_function():
    f = lambda x: tf.reduce_sum(x**3)  # noqa: E731
    v = tf.Variable([1.0, 2.0])
    h = tk.hessian(f)
    np.testing.assert_allclose(h(v), np.diag([6.0, 12.0]))
    (entry,) = _compile._WEAK[f].values()
    assert len(entry.concrete) == 1  # the fast path (a concrete function) served the variable
    v.assign([2.0, 3.0])
    np.testing.assert_allclose(h(v), np.diag([12.0, 18.0]))
    assert len(entry.concrete) == 1 and entry.function.experimental_get_tracing_count() == 1


# ---------------------------------------------------------------- NumPy cuts the path

NUMPY_FUNCTIONS = {
    "np.sin": lambda x: tf.reduce_sum(tf.constant(np.sin(x))),
    ".numpy()": lambda x: tf.reduce_sum(tf.constant(x.numpy() ** 2)),
    "partly": lambda x: tf.reduce_sum(x + tf.constant(np.sin(x))),  # one path cut, one kept
}
EAGER_TRANSFORMS = {
    "grad": lambda f, x: tk.grad(f)(x),
    "value_and_grad": lambda f, x: tk.value_and_grad(f)(x),
    "partials": lambda f, x: tk.partials(lambda x: f(x))(x),
    "jvp": lambda f, x: tk.jvp(f, (x,), (tf.ones_like(x),)),
    "vjp": lambda f, x: tk.vjp(f, x)[1](tf.constant(1.0)),
    "derivative": lambda f, x: tk.derivative(lambda x: f(x) * tf.ones_like(x))(x),
    "jacobian": lambda f, x: tk.jacobian(f, compile=False)(x),
    "jacobian_fwd": lambda f, x: tk.jacobian(f, mode="fwd", compile=False)(x),
    "hessian": lambda f, x: tk.hessian(f, compile=False)(x),
    "hvp": lambda f, x: tk.hvp(f, (x,), (tf.ones_like(x),), compile=False),
}


@pytest.mark.parametrize("case", sorted(NUMPY_FUNCTIONS))
@pytest.mark.parametrize("transform", sorted(EAGER_TRANSFORMS))
def test_numpy_on_the_path_raises_naming_numpy(transform, case):
    with pytest.raises(
        DisconnectedGradientError, match=r"argument 0|parameter `x`|primal 0|points"
    ) as info:
        EAGER_TRANSFORMS[transform](NUMPY_FUNCTIONS[case], X2)
    assert "numpy" in causes(info) or "through NumPy" in str(info.value)
    assert "through NumPy" in str(info.value)


@pytest.mark.parametrize("make", [tk.hessian, tk.jacobian, lambda f: tk.grad(tk.grad(f))])
def test_numpy_inside_a_compiled_transform_says_it_is_compiled(make):
    f = lambda x: tf.reduce_sum(x.numpy() ** 2)  # noqa: E731
    fn = make(lambda x: f(x)) if make is not tk.jacobian else make(lambda x: x * f(x))
    if make not in (tk.hessian, tk.jacobian):
        with pytest.raises(DisconnectedGradientError, match="through NumPy"):
            fn(tf.constant(1.0))
        return
    with pytest.raises(TypeError, match=r"hands a tensor to NumPy.*compiled.*compile=False"):
        fn(X2)


def test_numpy_on_a_non_differentiated_argument_is_fine():
    f = lambda x, k: tf.reduce_sum(x**2) * float(k.numpy())  # noqa: E731
    np.testing.assert_allclose(tk.grad(f)(X2, tf.constant(3.0)), 6.0 * X2.numpy())


# ---------------------------------------------------------------- ops without a gradient


def test_zeta_wrt_s_and_betainc_wrt_a_raise_naming_the_op():
    s, q = tf.constant([2.0, 3.0]), tf.constant([1.0, 2.0])
    for f, op in [
        (lambda s: tf.reduce_sum(tf.math.zeta(s, q)), "Zeta"),
        (lambda a: tf.reduce_sum(tf.math.betainc(a, 2.0, 0.5)), "Betainc"),
    ]:
        for run in (
            lambda f: tk.grad(f)(s),
            lambda f: tk.jvp(f, (s,), (tf.ones_like(s),)),
            lambda f: tk.hessian(f)(s),
            lambda f: tk.jacobian(lambda x: f(x) * x, mode="fwd")(s),
        ):
            with pytest.raises(
                DisconnectedGradientError, match=rf"op '\w*' \({op}\).*not define"
            ) as info:
                run(f)
            assert causes(info) == ["no_input_gradient"]


def test_zeta_wrt_q_is_right():
    jsp = pytest.importorskip("jax.scipy.special")
    jax = pytest.importorskip("jax")
    q = np.array([1.0, 2.0])
    want = jax.grad(lambda q: jsp.zeta(2.0, q).sum())(q)
    got = tk.grad(lambda q: tf.reduce_sum(tf.math.zeta(tf.constant(2.0, tf.float64), q)))(
        tf.constant(q)
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_op_without_registered_gradient_is_also_a_lookup_error():
    x = tf.constant([1.0, 2.0, 2.0])
    f = lambda x: tf.reduce_sum(tf.unique(x)[0])  # noqa: E731
    with pytest.raises(LookupError, match=r"op `Unique`, which has no registered gradient"):
        tk.grad(f)(x)
    with pytest.raises(DisconnectedGradientError):
        tk.grad(f)(x)
    g = lambda x: tf.unique(x)[0] * 2.0  # noqa: E731
    for run in (
        lambda: tk.jacobian(g)(x),
        lambda: tk.jacobian(g, compile=False)(x),
        lambda: tk.hessian(f)(x),
        lambda: tk.jvp(g, (x,), (x,)),
        lambda: tk.vjp(g, x),
    ):
        with pytest.raises(LookupError, match=r"Unique") as info:
            run()
        assert isinstance(info.value, DisconnectedGradientError)
        assert causes(info) == ["no_gradient_op"]


def test_the_vectorization_warning_gives_the_reason_without_autographs_frames():
    from tapekit import _vectorize

    exc = ValueError(
        'in user code:\n\n    File "/x.py", line 3, in f  *\n        return g(x)\n\n'
        "    ValueError: Attempted to stack a variant-dtype tensor (in pfor)\n"
    )
    assert _vectorize.failure_reason(exc) == "Attempted to stack a variant-dtype tensor"
    named = ValueError("Required handle data not set for <tf.Tensor 'loop_body/cond:2' shape=()>")
    assert _vectorize.failure_reason(named) == "Required handle data not set"


def test_by_design_zero_gradients_stay_zero_as_in_jax():
    jnp = pytest.importorskip("jax.numpy")
    jax = pytest.importorskip("jax")
    x = np.array([0.3, 1.7])
    for ours, theirs in [
        (lambda x: tf.reduce_sum(tf.round(x) * x), lambda x: jnp.sum(jnp.round(x) * x)),
        (
            lambda x: tf.reduce_sum(tf.stop_gradient(x) * x),
            lambda x: jnp.sum(jax.lax.stop_gradient(x) * x),
        ),
        (lambda x: tf.reduce_sum(tf.floor(x)), lambda x: jnp.sum(jnp.floor(x))),
    ]:
        np.testing.assert_allclose(tk.grad(ours)(tf.constant(x)), jax.grad(theirs)(x))


def test_unused_input_keeps_its_documented_zero_everywhere():
    f = lambda x, y: tf.reduce_sum(y**2)  # noqa: E731
    y = tf.constant([1.0, 2.0])
    gx, gy = tk.grad(f, argnums=(0, 1))(X2, y)
    assert not np.any(gx) and gx.shape == (2,)
    np.testing.assert_allclose(gy, [2.0, 4.0])
    assert not np.any(tk.hessian(f)(X2, y)) and tk.hessian(f)(X2, y).shape == (2, 2)
    _, t = tk.jvp(f, (X2, y), (tf.ones(2), tf.zeros(2)))
    assert float(t) == 0.0
    assert not np.any(tk.partials(f)(X2, y)["x"])


def test_same_tensor_at_a_non_differentiated_position_stays_constant():
    jax = pytest.importorskip("jax")
    f = lambda x, y: x * y**2  # noqa: E731
    x = tf.constant(3.0)
    assert float(tk.grad(f)(x, x)) == float(jax.grad(lambda a, b: a * b**2)(3.0, 3.0)) == 9.0


# ---------------------------------------------------------------- assignments


def test_gradient_through_assign_add_raises_naming_the_assignment():
    x1 = tf.Variable(2.0)

    def f(x0):
        x1.assign_add(x0)
        return x1**2

    with pytest.raises(DisconnectedGradientError, match=r"assignment.*AssignAddVariableOp") as info:
        tk.grad(f)(tf.constant(1.0))
    assert causes(info) == ["assign_cut"]


def test_assignment_after_the_read_does_not_cut_anything():
    v = tf.Variable(2.0)

    def f(x):
        y = v * x**2
        v.assign_add(x)
        return y

    assert float(tk.grad(f)(tf.constant(3.0))) == 12.0


# ---------------------------------------------------------------- jvp through tf.map_fn


def test_jvp_of_map_fn_inside_a_user_tf_function_falls_back_to_reverse_mode():
    @tf.function
    def run(x, t):
        return tk.jvp(lambda x: tf.map_fn(lambda r: tf.sin(r) * r, x), (x,), (t,))

    x = tf.constant([0.5, 1.0, 2.0])
    t = tf.constant([1.0, -2.0, 0.5])
    out, tangent = run(x, t)
    xn, tn = x.numpy(), t.numpy()
    np.testing.assert_allclose(out, np.sin(xn) * xn, rtol=1e-6)
    np.testing.assert_allclose(tangent, (np.cos(xn) * xn + np.sin(xn)) * tn, rtol=1e-5)


# ---------------------------------------------------------------- messages


def test_autograph_names_do_not_leak_into_messages():
    def loss(x):
        return x * 2.0  # not a scalar

    with pytest.raises(ValueError, match=r"`loss` returned shape \(2,\)") as info:
        tk.hessian(loss)(X2)
    assert "tf__" not in str(info.value)


# ---------------------------------------------------------------- Keras weights: variables=


def test_variables_option_differentiates_an_unbuilt_layer_keyed_by_path():
    jax = pytest.importorskip("jax")
    keras.utils.set_random_seed(3)
    layer = keras.layers.Dense(2, name="dense_v")  # no weights until the first call
    x = tf.constant([[1.0, -2.0, 0.5]])
    loss = lambda x: tf.reduce_sum(tf.tanh(layer(x)) ** 2)  # noqa: E731
    value, g = tk.value_and_grad(loss, variables=layer)(x)
    assert sorted(g) == ["dense_v/bias", "dense_v/kernel"]
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    jloss = lambda w, b: jax.numpy.sum(jax.numpy.tanh(x.numpy() @ w + b) ** 2)  # noqa: E731
    gw, gb = jax.grad(jloss, argnums=(0, 1))(w, b)
    np.testing.assert_allclose(g["dense_v/kernel"], gw, rtol=1e-5)
    np.testing.assert_allclose(g["dense_v/bias"], gb, rtol=1e-5)
    assert float(value) == pytest.approx(float(jloss(w, b)), rel=1e-6)
    g2 = tk.grad(loss, variables=lambda: layer.trainable_variables)(x)  # a function, a list
    np.testing.assert_allclose(g2["dense_v/kernel"], gw, rtol=1e-5)


def test_variables_option_refuses_an_empty_variable_list():
    with pytest.raises(ValueError, match=r"found no variables.*until it is built"):
        tk.grad(lambda x: tf.reduce_sum(x), variables=[])(tf.ones(2))
    frozen = keras.layers.Dense(1)
    frozen.build((None, 2))
    frozen.trainable = False
    with pytest.raises(ValueError, match=r"variables=\.\.\.\) found no variables"):
        tk.grad(lambda x: tf.reduce_sum(frozen(x)), variables=frozen)(tf.ones([1, 2]))
    with pytest.raises(TypeError, match=r"needs `variables` to be a Keras layer"):
        tk.grad(lambda x: x, variables=3)


def test_variables_option_names_a_cut_weight():
    v = tf.Variable([1.0, 2.0], name="w_cut")
    f = lambda x: tf.reduce_sum(tf.constant(np.sin(v.numpy())) * x)  # noqa: E731
    with pytest.raises(DisconnectedGradientError, match=r"variables\['w_cut:0'\].*NumPy"):
        tk.grad(f, variables=[v])(tf.ones(2))


# ---------------------------------------------------------------- batch_jacobian convention


def test_batch_jacobian_uses_tensorflows_convention_in_every_mode():
    x = tf.random.stateless_normal([4, 3], seed=[1, 2])
    f = lambda x: x * tf.reduce_sum(x, axis=0, keepdims=True) ** 2  # noqa: E731 - examples interact
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    want = tape.batch_jacobian(y, x).numpy()
    for compile in (True, False):
        for mode in ("rev", "fwd", "auto"):
            got = tk.batch_jacobian(f, mode=mode, compile=compile)(x)
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{mode} {compile}")


def test_batch_jacobian_is_the_diagonal_blocks_of_jacobian():
    w = tf.random.stateless_normal([3, 2], seed=[3, 4])
    f = lambda x: tf.tanh(x @ w)  # noqa: E731 - examples independent
    x = tf.random.stateless_normal([4, 3], seed=[5, 6])
    full = tk.jacobian(f)(x).numpy()  # (4, 2, 4, 3)
    for mode in ("rev", "fwd"):
        blocks = tk.batch_jacobian(f, mode=mode)(x).numpy()
        for b in range(4):
            np.testing.assert_allclose(blocks[b], full[b, :, b, :], rtol=1e-5)
            for other in set(range(4)) - {b}:
                assert not np.any(full[b, :, other, :])  # off-diagonal blocks really are zero


def test_assigning_the_differentiated_variable_itself_is_not_a_cut():
    v = tf.Variable(2.0)

    def f(x):
        v.assign(3.0)  # the read below is a read of v itself
        return v * x

    assert float(tk.grad(f, variables=[v])(tf.constant(5.0))[v.name]) == 5.0


def test_a_variable_argument_also_read_through_the_closure_is_not_aliased_later():
    # The first trace sees the argument and the closure read as one variable; a later call with
    # another variable of the same shape must not feed it to the closure read too.
    v1, v2 = tf.Variable([1.0, 2.0]), tf.Variable([3.0, 5.0])

    def f(v):
        return tf.reduce_sum(v**3) + tf.reduce_sum(v1**2) * v[0]

    for h in (tk.hessian(f), tk.hessian(f, mode="fwd"), tk.jacobian(tk.grad(f))):
        # f(v1) = Σv³ + (Σv²)·v0 in v = v1; f(v2) = Σv³ + const·v0 (v1 is another variable)
        np.testing.assert_allclose(h(v1), [[12.0, 4.0], [4.0, 14.0]])
        np.testing.assert_allclose(h(v2), [[18.0, 0.0], [0.0, 30.0]])
        np.testing.assert_allclose(h(v1), [[12.0, 4.0], [4.0, 14.0]])


@tf.custom_gradient
def _softplus(z):
    def grad(up):
        return up * tf.sigmoid(z)

    return tf.math.log1p(tf.exp(z)), grad


def test_a_custom_gradient_is_never_taken_for_a_cut_whatever_the_graph_order():
    # The cut check walks the graph from the source; tf.custom_gradient's IdentityN (gradient
    # None for the function's results by design) used to be taken for a cut when the walk
    # reached it through the results first, an order that varies from graph to graph: the
    # transforms then raised, and forward mode silently fell back to reverse mode.
    for n in range(1, 9):  # a fresh graph per shape
        a = np.linspace(-1.0, 1.0, 3 * n).reshape(3, n)
        x = tf.constant(np.linspace(0.2, 0.9, n))

        def f(x, a=a):
            return _softplus(tf.linalg.matvec(tf.constant(a), x))

        z = a @ x.numpy()
        exact = (1 / (1 + np.exp(-z)))[:, None] * a
        np.testing.assert_allclose(tk.jacobian(f, mode="fwd")(x), exact, atol=1e-12)
        np.testing.assert_allclose(tk.grad(lambda x: tf.reduce_sum(f(x)))(x), exact.sum(0))


def test_a_tensor_a_custom_gradient_captures_instead_of_taking_it_is_still_a_cut():
    def f(x):
        @tf.custom_gradient
        def shifted(y):  # reads x from the closure: its gradient covers y only
            return 2.0 * y + x, lambda up: 2.0 * up

        return tf.reduce_sum(shifted(tf.ones_like(x)))

    with pytest.raises(tk.DisconnectedGradientError, match="IdentityN"):
        tk.grad(f)(tf.constant([1.0, 2.0]))


def test_the_cut_check_takes_a_custom_gradient_whichever_input_it_walks_through_first():
    # Which IdentityN input the walk meets first depends on the graph's edge order (it varied
    # between processes); both orders must give the same verdict.
    from tapekit import _missing

    @tf.function
    def traced(x, captured):
        @tf.custom_gradient
        def fn(y):
            return tf.math.log1p(tf.exp(y)) + captured, lambda up: up * tf.sigmoid(y)

        return fn(2.0 * x)

    spec = tf.TensorSpec([2], tf.float64)
    graph = traced.get_concrete_function(spec, spec).graph
    x, captured = graph.inputs[:2]
    (identity,) = [op for op in graph.get_operations() if op.type == "IdentityN"]
    result, arg = identity.inputs[0], identity.inputs[1]
    with graph.as_default():  # as the check runs: inside the graph it walks
        assert _missing._op_verdict(identity, arg) == "pass"
        assert _missing._op_verdict(identity, result) == "cut"  # None for results by design
        assert _missing._also_through_defined_input(identity, [x])  # x reaches the argument
        assert not _missing._also_through_defined_input(identity, [captured])  # a real cut


def test_a_custom_gradient_over_an_argument_that_also_captures_the_source_is_a_cut():
    def f(x):
        @tf.custom_gradient
        def scaled(y):  # reads x from the closure too: its gradient covers y only
            return y * x, lambda up: up * x

        return tf.reduce_sum(scaled(2.0 * x))

    with pytest.raises(tk.DisconnectedGradientError, match="IdentityN"):
        tk.grad(f)(tf.constant([1.0, 2.0]))
