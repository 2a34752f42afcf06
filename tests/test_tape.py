"""Tape: persistent reuse, higher orders on closed forms, every missing-gradient cause detected and
explained, release semantics, use inside tf.function."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit import DisconnectedGradientError, Tape


def causes(exc_info: pytest.ExceptionInfo) -> list[str]:
    return [cause for _, cause in exc_info.value.sources]


# ---------------------------------------------------------------- gradients and orders


def test_persistent_tape_answers_many_times():
    x = tf.Variable([1.0, 2.0], name="x")
    w = tf.constant(3.0)
    with Tape(persistent=True, watch=w) as tape:
        y = tf.reduce_sum(x**2) * w
        z = x * w
    g = tape.gradient(y, {"x": x, "w": w})
    np.testing.assert_allclose(g["x"], [6.0, 12.0])
    assert float(g["w"]) == 5.0
    np.testing.assert_allclose(tape.jacobian(z, x), np.diag([3.0, 3.0]))
    np.testing.assert_allclose(
        tape.gradient(z, x, output_gradients=tf.constant([1.0, 0.0])), [3, 0]
    )
    np.testing.assert_allclose(tape.gradient(y, [x])[0], [6.0, 12.0])
    assert tape.watched_variables() == (x,)
    tape.release()


def test_orders_one_to_three_on_closed_forms():
    x = tf.constant(2.0, tf.float64)
    v = tf.Variable([0.5, 1.0, 2.0], dtype=tf.float64)
    with Tape(order=3, persistent=True, watch=x) as tape:
        y = x**4
        s = tf.sin(v)  # elementwise: order k is the k-th derivative at each point
    assert [float(tape.gradient(y, x, order=k)) for k in (1, 2, 3)] == [32.0, 48.0, 48.0]
    for k, expected in ((1, np.cos), (2, lambda a: -np.sin(a)), (3, lambda a: -np.cos(a))):
        got = tape.gradient(s, v, order=k)
        assert got.dtype == tf.float64
        np.testing.assert_allclose(got, expected(v.numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match=r"order=4\) needs 1 <= order <= the Tape's order \(3\)"):
        tape.gradient(y, x, order=4)


def test_higher_order_of_a_linear_function_is_zero_not_an_error():
    x = tf.constant([1.0, 2.0])
    with Tape(order=2, watch=x) as tape:
        y = 3.0 * x
    np.testing.assert_allclose(tape.gradient(y, x, order=2), [0.0, 0.0])


def test_mixed_nest_and_keras_variable_names():
    kv = keras.Variable(np.ones(2, np.float32), name="kernel")
    tv = tf.Variable(2.0, name="scale")
    with Tape(persistent=True) as tape:
        y = tf.reduce_sum(kv * tv)
    g = tape.gradient(y, {"layer": [kv], "scale": tv})
    np.testing.assert_allclose(g["layer"][0], [2.0, 2.0])
    with Tape() as tape2:
        y = tv * 2.0
    with pytest.raises(DisconnectedGradientError, match=r"sources\['k'\] \(variable '.*kernel"):
        tape2.gradient(y, {"k": kv, "t": tv})


def test_gradient_inside_the_block_does_not_record_it():
    x = tf.constant(3.0)
    with Tape(persistent=True, watch=x) as tape:
        y = x**2
        g = tape.gradient(y, x)
        z = g * x  # recorded: z = 2x², dz/dx = 4x (g itself counts as a constant here)
    assert float(g) == 6.0
    assert float(tape.gradient(z, x)) == 6.0  # g was not recorded, so z = const * x
    with tape:  # recording again: what runs inside stop_recording() is not recorded
        with tape.stop_recording():
            hidden = x**3  # not recorded
        seen = x**3 + hidden  # recorded: d/dx = 3x² only
    assert float(tape.gradient(seen, x)) == 27.0
    with pytest.raises(DisconnectedGradientError):
        tape.gradient(hidden, x)
    tape.release()


def test_stop_recording_is_named_as_the_cause():
    x, y = tf.Variable(2.0), tf.Variable(3.0)
    with Tape() as tape:  # the autodiff guide's example
        x_sq = x * x
        with tape.stop_recording():
            y_sq = y * y
        z = x_sq + y_sq
    with pytest.raises(DisconnectedGradientError, match=r"sources\['y'\].*stop_recording") as info:
        tape.gradient(z, {"x": x, "y": y})
    assert causes(info) == ["stop_recording"]


def test_a_variable_as_the_target_raises_naming_it():
    x, v = tf.constant(1.0), tf.Variable(2.0, name="v")
    for method in ("gradient", "jacobian"):
        with Tape(watch=x) as tape:
            result = v
        with pytest.raises(
            DisconnectedGradientError, match=r"target is the variable 'v:0'"
        ) as info:
            getattr(tape, method)(result, x)
        assert causes(info) == ["target_is_variable"]


def test_watched_variables_survive_the_answer_and_reset_clears_them():
    v, w = tf.Variable(2.0), tf.Variable(5.0)
    with Tape() as tape:
        y = v * v
    assert float(tape.gradient(y, v)) == 4.0
    assert tape.watched_variables() == (v,)  # as tf.GradientTape after a non-persistent answer
    tape.reset()
    assert tape.watched_variables() == ()
    with tape:  # usable again after reset
        y = w * v
        tape.reset()  # inside the block: start again with an empty tape
        z = w * w
    assert tape.watched_variables() == (w,)
    assert float(tape.gradient(z, w)) == 10.0


def test_cut_paths_are_named_inside_tf_function():
    a = tf.constant([2.0, 3.0])
    x1 = tf.Variable(1.0)

    @tf.function
    def betainc(a):
        with Tape(watch=a) as tape:
            y = tf.reduce_sum(tf.math.betainc(a, 2.0, 0.5) + a)  # one path cut, one kept
        return tape.gradient(y, a)

    with pytest.raises(DisconnectedGradientError, match=r"\(Betainc\).*not define") as info:
        betainc(a)
    assert causes(info) == ["no_input_gradient"]

    @tf.function
    def assigned(x0):
        with Tape(watch=x0) as tape:
            x1.assign_add(x0)
            y = x1**2
        return tape.gradient(y, x0)

    with pytest.raises(DisconnectedGradientError, match=r"assignment") as info:
        assigned(tf.constant(1.0))
    assert causes(info) == ["assign_cut"]


def test_tape_jacobian_and_batch_jacobian_match_tensorflow(rng):
    w = tf.Variable(rng.normal(size=(3, 2)))
    x = tf.constant(rng.normal(size=(4, 3)))
    with Tape(persistent=True, watch=x) as tape:
        y = tf.tanh(x @ w)
    with tf.GradientTape(persistent=True) as ref:
        ref.watch(x)
        y_ref = tf.tanh(x @ w)
    jac = tape.jacobian({"y": y}, [x, w])
    np.testing.assert_allclose(jac["y"][0], ref.jacobian(y_ref, x), rtol=1e-12)
    np.testing.assert_allclose(jac["y"][1], ref.jacobian(y_ref, w), rtol=1e-12)
    bj = tape.batch_jacobian(y, x, chunk_size=2)
    np.testing.assert_allclose(bj, ref.batch_jacobian(y_ref, x), rtol=1e-12)
    with pytest.raises(ValueError, match="share one leading"):
        tape.batch_jacobian(y, w)
    tape.release()


# ---------------------------------------------------------------- no silent None


def test_integer_source_is_named_with_its_dtype():
    x = tf.constant(2.0)
    n = tf.constant(3)
    with Tape(watch=[x, n]) as tape:
        y = x * tf.cast(n, tf.float32)
    pattern = (
        r"sources\[1\] \(tf.Tensor int32 \(\)\): it has dtype int32; integer and bool .*tf.cast"
    )
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, [x, n])
    assert causes(info) == ["integer_dtype"]
    assert isinstance(info.value, ValueError)


def test_integer_target_is_explained():
    x = tf.constant([1.0, 2.0])
    with Tape(watch=x) as tape:
        y = tf.argmax(x)
    with pytest.raises(DisconnectedGradientError, match="the target has dtype int64"):
        tape.gradient(y, x)


def test_unwatched_tensor_says_to_watch_it():
    x = tf.constant(2.0)
    with Tape() as tape:
        y = x**2
    pattern = r"never watched.*tape\.watch\(x\).*Tape\(watch=x\)"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, x)
    assert causes(info) == ["unwatched_tensor"]


def test_variable_never_read_inside_the_tape():
    a = tf.Variable(1.0, name="used")
    b = tf.Variable(2.0, name="unused_bias")
    with Tape() as tape:
        y = a * 3.0
    pattern = r"sources\['b'\] \(variable 'unused_bias:0'\): the variable was never read inside"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, {"a": a, "b": b})
    assert info.value.sources == [("sources['b']", "variable_not_read")]
    assert "1 of 2 source(s)" in str(info.value)


def test_unwatched_variable_with_watch_accessed_variables_false():
    v = tf.Variable(2.0, name="v")
    with Tape(watch_accessed_variables=False) as tape:
        y = v * 2.0
    with pytest.raises(DisconnectedGradientError, match="watch_accessed_variables=False") as info:
        tape.gradient(y, v)
    assert causes(info) == ["unwatched_variable"]
    with Tape(watch_accessed_variables=False, watch=v) as tape:
        y = v * 2.0
    assert float(tape.gradient(y, v)) == 2.0


def test_variable_replaced_by_a_tensor_is_detected():
    v = tf.Variable(1.0, name="weight")
    with Tape() as tape:
        y = v * 2.0
        v = v + 1.0  # the mistake: should be v.assign_add(1.0)
    pattern = r"computed on the tape from variable 'weight:0'.*assign_add"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, v)
    assert causes(info) == ["variable_replaced"]


def test_variable_replaced_outside_the_tape_points_to_assign():
    x = tf.Variable(2.0)
    x = x + 1.0  # now a tensor, never watched
    with Tape() as tape:
        y = x**2
    pattern = r"never watched.*replaced a tf.Variable.*assign_add"
    with pytest.raises(DisconnectedGradientError, match=pattern):
        tape.gradient(y, x)


def test_target_through_numpy_or_outside_the_tape():
    v = tf.Variable([1.0, 2.0], name="v")
    with Tape() as tape:
        y = tf.constant(np.sum(v.numpy() ** 2))  # left TensorFlow
    with pytest.raises(DisconnectedGradientError, match="went through NumPy") as info:
        tape.gradient(y, v)
    assert causes(info) == ["target_not_recorded"]
    outside = tf.reduce_sum(v * 2.0)
    with Tape() as tape:
        _ = v * 1.0
    with pytest.raises(DisconnectedGradientError, match="computed outside the `with` block"):
        tape.gradient(outside, v)


def test_source_not_connected_to_the_target():
    x, z = tf.constant([1.0, 2.0]), tf.constant(3.0)
    with Tape(watch=[x, z]) as tape:
        y = tf.reduce_sum(tf.round(x)) + z
    pattern = r"sources\[0\].*the target does not depend on it"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, [x, z])
    assert causes(info) == ["not_connected"]


def test_op_without_gradient_is_named():
    x = tf.constant([1.0, 2.0, 2.0])
    with Tape(watch=x) as tape:
        y = tf.reduce_sum(tf.unique(x)[0])
    pattern = r"op `Unique`, which has no registered gradient.*tf.custom_gradient"
    with pytest.raises(DisconnectedGradientError, match=pattern) as info:
        tape.gradient(y, x, unconnected="zero")  # not a disconnection: raised in every mode
    assert causes(info) == ["no_gradient_op"]


def test_unconnected_zero_and_none():
    a, b = tf.Variable(1.0), tf.Variable([1.0, 2.0])
    with Tape(persistent=True) as tape:
        y = a * 2.0
    za, zb = tape.gradient(y, [a, b], unconnected="zero")
    assert float(za) == 2.0 and zb.shape == (2,) and not np.any(zb)
    assert tape.gradient(y, [a, b], unconnected="none")[1] is None
    jb = tape.jacobian(y, b, unconnected="zero")
    assert jb.shape == (2,) and jb.dtype == tf.float32 and not np.any(jb)
    assert tape.jacobian(y, [a, b], unconnected="none")[1] is None
    with pytest.raises(ValueError, match="unconnected to be one of"):
        tape.gradient(y, a, unconnected="ignore")
    tape.release()


# ---------------------------------------------------------------- lifecycle


def test_release_and_single_use_semantics():
    x = tf.constant(1.0)
    with Tape(watch=x) as tape:
        y = x * 2.0
    assert float(tape.gradient(y, x)) == 2.0
    with pytest.raises(RuntimeError, match=r"not persistent.*Tape\(persistent=True\)"):
        tape.gradient(y, x)
    with Tape(persistent=True, watch=x) as tape:
        y = x * 2.0
    tape.gradient(y, x)
    tape.gradient(y, x)
    tape.release()
    for call in (lambda: tape.gradient(y, x), lambda: tape.jacobian(y, x), tape.__enter__):
        with pytest.raises(RuntimeError, match="was released"):
            call()
    with pytest.raises(RuntimeError, match="nothing was recorded yet"):
        Tape().gradient(y, x)
    with pytest.raises(TypeError, match=r"takes tensors or variables.*but watch\[0\] is float"):
        Tape(watch=[3.0])
    with pytest.raises(ValueError, match="order to be an int >= 1"):
        Tape(order=0)


def test_non_persistent_tape_stops_recording_after_use_inside_the_block():
    x = tf.constant(1.0)
    with Tape(watch=x) as tape:
        y = x * 2.0
        tape.gradient(y, x)
        z = x * 3.0  # the tape is used up; nothing more is recorded (as tf.GradientTape)
    with pytest.raises(RuntimeError, match="already used once"):
        tape.gradient(z, x)


def test_tape_inside_tf_function():
    @tf.function
    def second(x):
        with Tape(order=2, watch=x) as tape:
            y = tf.reduce_sum(x**3)
        return tape.gradient(y, x, order=2)

    np.testing.assert_allclose(second(tf.constant([1.0, 2.0])), [6.0, 12.0])

    @tf.function
    def cut(x):
        with Tape(watch=x) as tape:
            y = tf.reduce_sum(tf.round(x)) * 2.0
        return tape.gradient(y, x)

    with pytest.raises(DisconnectedGradientError, match=r"except through op '.*' \(Round\)"):
        cut(tf.constant([1.0, 2.0]))

    @tf.function
    def jac(x):
        with Tape(watch=x) as tape:
            y = tf.sin(x)
        return tape.jacobian(y, x)

    np.testing.assert_allclose(jac(tf.constant([0.0, 1.0])), np.diag(np.cos([0.0, 1.0])), rtol=1e-6)


def test_tape_gradient_matches_tapekit_hessian_route(rng):
    x = tf.constant(rng.normal(size=3))
    f = lambda x: tf.reduce_sum(tf.exp(x) * x[0])  # noqa: E731
    with Tape(order=2, persistent=True, watch=x) as tape:
        y = f(x)
    g = tape.gradient(y, x)
    np.testing.assert_allclose(g, tapekit.grad(f)(x), rtol=1e-12)
    # order 2 sums each Hessian row over the previous result: H @ 1
    np.testing.assert_allclose(
        tape.gradient(y, x, order=2), tapekit.hessian(f)(x).numpy().sum(axis=0), rtol=1e-12
    )
    tape.release()


def test_disconnected_error_keeps_its_sources_when_raised_inside_tf_function():
    @tf.function
    def step(x):
        with tapekit.Tape() as tape:
            y = tf.constant(2.0) * 3.0  # never touches x
        return tape.gradient(y, {"x": x})

    with pytest.raises(tapekit.DisconnectedGradientError) as info:
        step(tf.constant(1.0))
    assert info.value.sources and info.value.sources[0][0] == "sources['x']"
    assert "sources['x']" in str(info.value)
