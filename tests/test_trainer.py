"""tapekit.Trainer: training results, compiled steps, accumulation, clipping, distribution,
non-finite handling, reproducibility, callbacks and console output (real TF throughout)."""

from __future__ import annotations

import re
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit
from tapekit.training.progress import format_line


def _data(n: int = 70, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ np.arange(1.0, d + 1.0, dtype="float32") - 0.5)[:, None]
    return x, y


def _mlp(d: int = 4) -> keras.Model:
    return keras.Sequential(
        [keras.Input((d,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def mse(model, batch):
    x, y = batch
    return tf.reduce_mean((model(x, training=True) - y) ** 2)


def _factory(seed: int = 0):
    def build() -> keras.Model:
        keras.utils.set_random_seed(seed)
        return _mlp()

    return build


def _train(data=None, *, epochs=2, batch_size=16, fit_kw=None, **kw) -> tapekit.Trainer:
    kw.setdefault("optimizer", "adam")
    kw.setdefault("logdir", False)
    kw.setdefault("seed", 0)
    trainer = tapekit.Trainer(kw.pop("model", _factory()), kw.pop("loss_fn", mse), **kw)
    trainer.fit(
        data or _data(),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=False,
        verbose=0,
        **(fit_kw or {}),
    )
    return trainer


def _close(a: list[np.ndarray], b: list[np.ndarray], atol: float) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)


# -- results ---------------------------------------------------------------------------------


def test_variables_and_sgd_recover_true_weights():
    x, y = _data(128)
    params = {"w": tf.Variable(tf.zeros([4, 1])), "b": tf.Variable(0.0)}

    def loss_fn(p, batch):
        xb, yb = batch
        return tf.reduce_mean((xb @ p["w"] + p["b"] - yb) ** 2)

    trainer = tapekit.Trainer(
        params, loss_fn, optimizer=keras.optimizers.SGD(0.1), logdir=False, seed=0
    )
    history = trainer.fit((x, y), epochs=30, batch_size=32, verbose=0)
    np.testing.assert_allclose(params["w"].numpy()[:, 0], [1, 2, 3, 4], atol=1e-3)
    np.testing.assert_allclose(params["b"].numpy(), -0.5, atol=1e-3)
    assert history.epochs == list(range(30)) and history.step == 30 * 4 == trainer.global_step
    assert history["loss"][-1] < 1e-5 < history["loss"][0]


def test_history_metrics_validation_and_evaluate():
    x, y = _data()
    val = tf.data.Dataset.from_tensor_slices((x[:20], y[:20])).batch(6)
    trainer = _train((x, y), metrics=["mae"], fit_kw={"validation_data": val})
    hist = trainer.fit((x, y), epochs=3, batch_size=16, verbose=0, validation_data=(x[:20], y[:20]))
    assert hist.epochs == [2]  # epochs counts the total: 2 were already done
    assert set(hist.history) == {
        "loss",
        "mean_absolute_error",
        "val_loss",
        "val_mean_absolute_error",
        "steps_per_second",
    }
    result = trainer.evaluate((x[:20], y[:20]), batch_size=7)
    pred = trainer.model(x[:20]).numpy()
    np.testing.assert_allclose(result["loss"], np.mean((pred - y[:20]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(
        result["mean_absolute_error"], np.mean(np.abs(pred - y[:20])), rtol=1e-5
    )
    np.testing.assert_allclose(hist["val_loss"][0], result["loss"], rtol=1e-5)


def test_extras_and_metric_targets_from_loss_fn():
    x, y = _data()

    def loss_fn(model, batch, training):
        pred = model(batch[0], training=training)
        err = pred - batch[1]
        return tf.reduce_mean(err**2), {
            "bias": tf.reduce_mean(err),
            "y_true": batch[1],
            "y_pred": pred,
        }

    trainer = _train((x, y), loss_fn=loss_fn, metrics=[keras.metrics.MeanSquaredError()])
    out = trainer.evaluate((x, y), batch_size=32)
    assert set(out) == {"loss", "bias", "mean_squared_error"}
    np.testing.assert_allclose(out["loss"], out["mean_squared_error"], rtol=1e-5)
    step_out = trainer.step((x[:9], y[:9]))
    assert set(step_out) == {"loss", "bias"} and np.isfinite(float(step_out["loss"]))


def test_tf_module_model():
    class Line(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(0.0)

        def __call__(self, x):
            return self.w * x

    x = np.linspace(-1, 1, 40).astype("float32")
    model = Line()
    trainer = tapekit.Trainer(
        model,
        lambda m, b: tf.reduce_mean((m(b[0]) - b[1]) ** 2),
        optimizer=keras.optimizers.SGD(0.5),
        logdir=False,
    )
    trainer.fit((x, -2 * x), epochs=15, batch_size=8, verbose=0)
    assert abs(float(model.w.numpy()) + 2) < 1e-4


# -- compiled steps ----------------------------------------------------------------------------


def test_partial_last_batch_and_epochs_do_not_retrace():
    x, y = _data(70)  # batches of 16: 16, 16, 16, 16, 6
    trainer = _train((x, y), epochs=3, fit_kw={"validation_data": (x[:21], y[:21])})
    assert trainer._steps.trace_counts() == {"train": 1, "eval": 1}
    trainer.fit((x, y), epochs=4, batch_size=16, verbose=0, validation_data=(x[:21], y[:21]))
    assert trainer._steps.trace_counts() == {"train": 1, "eval": 1}
    for n in (8, 5, 3):  # user-driven steps with varying batch sizes: one trace
        trainer.step((x[:n], y[:n]))
    assert trainer._steps.trace_counts() == {"train": 1, "eval": 1, "batch": 1}


def test_steps_per_execution_gives_the_same_training():
    a = _train(epochs=2)
    b = _train(epochs=2, steps_per_execution=3)  # 5 steps/epoch: executions of 3 and 2
    assert a.global_step == b.global_step == 10
    _close(a.get_weights(), b.get_weights(), 1e-6)
    assert b._steps.trace_counts()["train"] == 1


@pytest.mark.parametrize("seconds, later", [(0.0, None), (0.018, 16)])
def test_automatic_steps_per_call_follow_the_time_a_step_takes(seconds, later):
    # 64 steps per call until a call ran without tracing (the first traces), then about half
    # a second of steps per call: a fast step gets more (up to 1024), an 18 ms step 16 (27
    # fit, the power of two below).
    class Calls(tapekit.Callback):  # sees every call's end: it asks for no step
        def __init__(self):
            self.ends = []

        def on_step_end(self, step, logs=None):
            self.ends.append(step)

        def next_step_end(self, step):
            return None

    w = tf.Variable(1.0)

    def step(ctx, batch):
        if seconds:
            tf.py_function(lambda: time.sleep(seconds), [], [])
        with tf.GradientTape() as tape:
            loss = (ctx.models["model"] - 3.0) ** 2
        ctx.minimize("model", loss, tape)
        return {"loss": loss}

    calls = Calls()
    trainer = tapekit.Trainer(
        w, step=step, optimizer=keras.optimizers.SGD(0.01), logdir=False, callbacks=[calls]
    )
    trainer.fit(None, steps_per_epoch=64 + 64 + 32, verbose=0)
    sizes = np.diff([0, *calls.ends]).tolist()
    if later is None:
        assert sizes == [64, 64, 32]  # more than the 32 left: the epoch's end stops the call
        trainer.fit(None, steps_per_epoch=64 + 64 + 32, epochs=2, verbose=0)
        assert np.diff(calls.ends).tolist()[-1] == 160  # the size is kept: one call
    else:
        assert sizes == [64, 64, later, later]


def test_jit_compile_matches():
    a = _train(epochs=1)
    b = _train(epochs=1, jit_compile=True)
    _close(a.get_weights(), b.get_weights(), 1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_equals_a_k_times_larger_batch(optimizer):
    x, y = _data(64)
    big = _train((x, y), epochs=2, batch_size=16, optimizer=optimizer)
    acc = _train((x, y), epochs=2, batch_size=8, accumulate_steps=2, optimizer=optimizer)
    assert big.global_step == acc.global_step == 8
    _close(big.get_weights(), acc.get_weights(), 1e-6)


def test_uneven_accumulation_weights_examples_not_batches():
    x, y = _data(24)  # batch 16 then 8: one accumulated step over all 24 examples
    params = tf.Variable(tf.zeros([4, 1]))
    loss = lambda p, b: tf.reduce_mean((b[0] @ p - b[1]) ** 2)  # noqa: E731
    trainer = tapekit.Trainer(
        params, loss, optimizer=keras.optimizers.SGD(0.1), accumulate_steps=2, logdir=False
    )
    trainer.fit((x, y), batch_size=16, shuffle=False, verbose=0)
    expected = -0.1 * tapekit.grad(lambda p: loss(p, (x, y)))(tf.zeros([4, 1]))
    np.testing.assert_allclose(params.numpy(), expected.numpy(), atol=1e-6)


def test_clipping_by_norm_and_value_match_a_hand_step():
    x, y = _data(16)
    w0 = np.full([4, 1], 3.0, "float32")
    loss = lambda p, b: tf.reduce_mean((b[0] @ p - b[1]) ** 2)  # noqa: E731
    g = tapekit.grad(lambda p: loss(p, (x, y)))(tf.constant(w0)).numpy()
    for kw, clipped in (
        ({"clip_norm": 0.5}, g * 0.5 / np.linalg.norm(g)),
        ({"clip_value": 0.1}, np.clip(g, -0.1, 0.1)),
    ):
        p = tf.Variable(w0)
        trainer = tapekit.Trainer(p, loss, optimizer=keras.optimizers.SGD(1.0), logdir=False, **kw)
        trainer.step((x, y))
        np.testing.assert_allclose(p.numpy(), w0 - clipped, atol=1e-6)


@pytest.mark.parametrize("kw", [{"clip_norm": 0.3, "accumulate_steps": 2}, {}])
def test_mirrored_strategy_matches_one_device(kw, mirrored_strategy):
    x, y = _data(70)  # uneven last batch: 6 examples over 2 replicas
    one = _train((x, y), epochs=2, metrics=["mae"], **kw)
    two = _train((x, y), epochs=2, metrics=["mae"], strategy=mirrored_strategy, **kw)
    _close(one.get_weights(), two.get_weights(), 1e-5)
    one.step((x[:9], y[:9]))  # user-driven steps: the batch is split over the replicas
    two.step((x[:9], y[:9]))
    _close(one.get_weights(), two.get_weights(), 1e-5)
    a, b = one.evaluate((x, y), batch_size=16), two.evaluate((x, y), batch_size=16)
    np.testing.assert_allclose(
        [a["loss"], a["mean_absolute_error"]], [b["loss"], b["mean_absolute_error"]], rtol=1e-5
    )


def test_model_built_outside_the_strategy_scope_is_refused(mirrored_strategy):
    with pytest.raises(ValueError, match=r"inside strategy.scope\(\).*factory"):
        tapekit.Trainer(_mlp(), mse, strategy=mirrored_strategy, logdir=False)


# -- mixed precision -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_restores_the_global_policy(policy):
    before = keras.config.dtype_policy().name

    def loss_fn(model, batch):
        return tf.reduce_mean((tf.cast(model(batch[0]), tf.float32) - batch[1]) ** 2)

    trainer = _train(
        epochs=3, mixed_precision=policy, loss_fn=loss_fn, optimizer=keras.optimizers.Adam(0.01)
    )
    assert keras.config.dtype_policy().name == before
    assert trainer.model.layers[0].compute_dtype == policy.split("_")[1]
    assert trainer.model.trainable_variables[0].dtype == "float32"
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    losses = trainer.fit(_data(), epochs=6, batch_size=16, verbose=0).history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_mixed_precision_needs_a_factory_for_a_ready_model():
    with pytest.raises(ValueError, match="pass a factory|Pass a factory"):
        tapekit.Trainer(_mlp(), mse, mixed_precision="mixed_float16", logdir=False)


# -- failures ----------------------------------------------------------------------------------


def _nan_data() -> tuple[np.ndarray, np.ndarray]:
    x, y = _data(64)
    x[40] = np.nan  # batch 2 (examples 32..47) of size 16
    return x, y


def test_nonfinite_loss_raises_naming_step_and_variables():
    def build() -> keras.Model:
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, name="hidden"),
                keras.layers.Dense(1, name="out"),
            ],
            name="net",
        )

    trainer = tapekit.Trainer(build, mse, logdir=False, seed=0)
    with pytest.raises(
        tapekit.NonFiniteError,
        match=r"at step 2 in the loss and the gradients of "
        r"net/hidden/kernel, .*on_nonfinite='skip'",
    ) as e:
        trainer.fit(_nan_data(), batch_size=16, shuffle=False, verbose=0)
    assert e.value.step == 2 and trainer.global_step == 2
    assert e.value.variables == [
        "net/hidden/kernel",
        "net/hidden/bias",
        "net/out/kernel",
        "net/out/bias",
    ]
    assert all(np.isfinite(w).all() for w in trainer.get_weights())


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adam(0.05),  # only the gradients wait for the check
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),  # decay: waits whole
        lambda: keras.optimizers.Nadam(0.05),  # its running product: waits whole
    ],
    ids=["adam", "sgd-momentum", "adamw", "nadam"],
)
def test_a_nonfinite_step_leaves_weights_and_optimizer_state_as_before_it(make):
    # Not applied means nothing of it: weights, slots and the iteration count equal those of
    # a run that stopped before the step (x[40] is NaN: step 2 of batches of 16).
    broken = tapekit.Trainer(_factory(), mse, optimizer=make(), logdir=False, seed=0)
    with pytest.raises(tapekit.NonFiniteError, match="at step 2 "):
        broken.fit(_nan_data(), batch_size=16, shuffle=False, verbose=0)
    clean = tapekit.Trainer(_factory(), mse, optimizer=make(), logdir=False, seed=0)
    clean.fit(_nan_data(), batch_size=16, shuffle=False, steps_per_epoch=2, verbose=0)
    assert int(broken.optimizer.iterations.numpy()) == 2
    for a, b in zip(broken.get_weights(), clean.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(broken.optimizer.variables, clean.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_the_check_keeps_sparse_embedding_gradients_sparse():
    # Holding the gradients back for the check must not turn IndexedSlices dense: training
    # equals the unchecked run bitwise, and the gradient the optimizer gets stays sparse.
    def build() -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((3,), dtype="int32"),
                keras.layers.Embedding(50, 4),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )

    x = np.random.default_rng(0).integers(0, 50, size=(32, 3)).astype("int32")
    y = np.random.default_rng(1).normal(size=(32, 1)).astype("float32")
    seen = []

    results = {}
    for check in ("raise", None):
        opt = keras.optimizers.Adam(0.01)
        apply = opt.apply

        def spying(grads, variables=None, apply=apply):
            seen.append(type(grads[0]).__name__)
            return apply(grads, variables)

        opt.apply = spying
        trainer = tapekit.Trainer(build, mse, optimizer=opt, logdir=False, on_nonfinite=check)
        trainer.fit((x, y), batch_size=8, epochs=2, shuffle=False, verbose=0)
        results[check] = trainer.get_weights()
    assert set(seen) == {"IndexedSlices"}
    for a, b in zip(results["raise"], results[None], strict=True):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_steps_can_be_skipped():
    x, y = _nan_data()
    trainer = _train((x, y), epochs=1, on_nonfinite="skip", steps_per_execution=4)
    assert trainer.skipped_steps == 1 and trainer.global_step == 4
    # Skipping the NaN batch is training without it: the same weights as a run on the other
    # three batches (same seed, same order, same number of optimizer updates).
    keep = np.r_[0:32, 48:64]
    without = _train((x[keep], y[keep]), epochs=1, steps_per_execution=4)
    assert int(trainer.optimizer.iterations.numpy()) == int(without.optimizer.iterations.numpy())
    for got, want in zip(trainer.get_weights(), without.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_check_can_be_turned_off():
    # on_nonfinite=None changes no arithmetic: the same weights as the checked default, with
    # and without clipping (which still needs the global norm) ...
    for kw in ({}, {"clip_norm": 0.5}):
        checked = _train(epochs=1, steps_per_execution=4, **kw)
        unchecked = _train(epochs=1, steps_per_execution=4, on_nonfinite=None, **kw)
        for got, want in zip(unchecked.get_weights(), checked.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    # Loss scaling needs the check (overflowed steps are skipped on every replica alike).
    with pytest.raises(ValueError, match=r"on_nonfinite=None .* LossScaleOptimizer"):
        tapekit.Trainer(_factory(), mse, on_nonfinite=None, mixed_precision="mixed_float16")
    # ... and a NaN batch goes through unnoticed, as in keras.Model.fit: what the option means.
    trainer = _train(_nan_data(), epochs=1, on_nonfinite=None)
    assert trainer.global_step == 4 and trainer.skipped_steps == 0
    assert not all(np.isfinite(w).all() for w in trainer.get_weights())


def test_unused_variables_are_named_at_the_first_step():
    params = {"used": tf.Variable(1.0), "unused": tf.Variable(2.0)}
    loss = lambda p, b: tf.reduce_mean((p["used"] * b - 3.0) ** 2)  # noqa: E731
    trainer = tapekit.Trainer(params, loss, logdir=False)
    with pytest.raises(tapekit.DisconnectedGradientError, match=r"unused.*allow_unused=True"):
        trainer.step(np.ones(4, "float32"))
    trainer = tapekit.Trainer(
        params, loss, logdir=False, allow_unused=True, optimizer=keras.optimizers.SGD(0.1)
    )
    trainer.step(np.ones(4, "float32"))
    assert float(params["unused"].numpy()) == 2.0 and float(params["used"].numpy()) != 1.0


def test_argument_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="clip the aggregated gradient"):
        tapekit.Trainer(_mlp(), mse, optimizer=keras.optimizers.SGD(clipnorm=1.0))
    with pytest.raises(ValueError, match="on_nonfinite must be"):
        tapekit.Trainer(_mlp(), mse, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="accumulate_steps"):
        tapekit.Trainer(_mlp(), mse, accumulate_steps=0)
    trainer = tapekit.Trainer(_mlp(), mse, logdir=False)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int.*batch_size=32"):
        trainer.fit(_data(), verbose=0)
    with pytest.raises(ValueError, match="same number of examples"):
        trainer.fit((np.zeros((5, 4)), np.zeros((6, 1))), batch_size=2, verbose=0)
    bad = tapekit.Trainer(_mlp(), lambda m, b: m(b[0]) - b[1], logdir=False)
    with pytest.raises(ValueError, match=r"float scalar.*shape \(None, 1\).*reduce_mean"):
        bad.fit(_data(), batch_size=8, verbose=0)


# -- reproducibility, callbacks, console ---------------------------------------------------------


def test_seed_gives_bitwise_identical_runs():
    def build() -> keras.Model:
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(1),
            ]
        )

    def noisy(model, batch):
        x, y = batch
        return tf.reduce_mean((model(x, training=True) - y) ** 2) + 1e-3 * trainer.rng.normal([])

    runs = []
    for _ in range(2):
        trainer = tapekit.Trainer(build, noisy, seed=7, logdir=False)
        trainer.fit(_data(), epochs=2, batch_size=16, verbose=0)  # shuffled, seeded
        runs.append(trainer.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_callbacks_protocol_and_early_stopping_restores_best():
    events = []

    class Recorder(tapekit.Callback):
        def on_train_begin(self, logs=None):
            events.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            events.append(("epoch", epoch, round(logs["loss"], 9)))

        def on_step_end(self, step, logs=None):
            events.append(("step", step))

        def on_train_end(self, logs=None):
            events.append("end")

    snapshots = []

    class Snapshot(tapekit.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.trainer.get_weights())

    stop = tapekit.EarlyStopping(monitor="loss", patience=1, min_delta=1e9, restore_best=True)
    trainer = _train(epochs=10, steps_per_execution=2, callbacks=[Recorder(), Snapshot(), stop])
    # Keras' rule: stop when wait >= patience, i.e. after 1 epoch without improvement.
    assert stop.stopped_epoch == 1 and stop.best_epoch == 0 and trainer.epoch == 2
    assert events[0] == "begin" and events[-1] == "end"
    assert [e[1] for e in events if e[0] == "step"] == [2, 4, 5, 7, 9, 10]
    _close(trainer.get_weights(), snapshots[0], 0)
    with pytest.raises(KeyError, match="val_loss.*validation_data"):
        _train(epochs=1, callbacks=[tapekit.EarlyStopping()])


def test_console_prints_one_uniform_line_per_epoch(capsys):
    _train(epochs=2, metrics=["mae"])
    assert capsys.readouterr().out == ""
    trainer = tapekit.Trainer(_factory(), mse, metrics=["mae"], logdir=False)
    trainer.fit(_data(), epochs=2, batch_size=16, verbose=1, validation_data=_data(20, seed=1))
    lines = capsys.readouterr().out.splitlines()
    pattern = (
        r"epoch \d/2 \| step \d+ \| loss [\d.]+ \| mean_absolute_error [\d.]+ \| "
        r"val_loss [\d.]+ \| val_mean_absolute_error [\d.]+ \| \d+ steps/s \| ETA \d+s"
    )
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[1].startswith("epoch 2/2 | step 10 |")
    assert format_line(0, 3, 7, {"loss": float("nan")}, None) == "epoch 1/3 | step 7 | loss nan"


# -- data forms, metrics_fn, on_epoch_begin (issue 16) --------------------------------------------


def test_batched_dataset_and_dict_of_arrays_train_like_arrays():
    x, y = _data()
    arrays = _train((x, y), epochs=2)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    dataset = tapekit.Trainer(_factory(), mse, logdir=False, seed=0)
    dataset.fit(ds, epochs=2, verbose=0)

    def dict_mse(model, batch):
        return tf.reduce_mean((model(batch["x"], training=True) - batch["y"]) ** 2)

    named = tapekit.Trainer(_factory(), dict_mse, logdir=False, seed=0)
    named.fit({"x": x, "y": y}, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for other in (dataset, named):
        assert other.global_step == arrays.global_step == 10
        _close(other.get_weights(), arrays.get_weights(), 0)


def test_metrics_fn_feeds_the_metrics_and_on_epoch_begin_is_called():
    x, y = _data()
    seen = []

    class Begin(tapekit.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, self.trainer.global_step))

    def targets(model, batch):
        return batch[1], model(batch[0], training=False) + 1.0  # shifted on purpose

    trainer = _train((x, y), epochs=2, metrics=["mae"], metrics_fn=targets, callbacks=[Begin()])
    assert seen == [(0, 0), (1, 5)]
    out = trainer.evaluate((x, y), batch_size=70)
    pred = trainer.model(x).numpy() + 1.0
    np.testing.assert_allclose(out["mean_absolute_error"], np.abs(pred - y).mean(), rtol=1e-5)


def test_nonfinite_gradient_with_a_finite_loss_names_the_variable():
    params = {"w": tf.Variable(0.0), "b": tf.Variable(1.0)}

    def loss_fn(p, batch):
        return tf.sqrt(p["w"]) + tf.reduce_mean(p["b"] * batch)  # d/dw sqrt(w) at 0 is inf

    trainer = tapekit.Trainer(params, loss_fn, optimizer=keras.optimizers.SGD(0.1), logdir=False)
    with pytest.raises(tapekit.NonFiniteError, match=r"at step 0 in the gradients of w\. ") as e:
        trainer.step(np.ones(4, "float32"))
    assert e.value.variables == ["w"] and "the loss" not in str(e.value)
    assert float(params["w"].numpy()) == 0.0 and float(params["b"].numpy()) == 1.0


@pytest.mark.parametrize("kind", ["sparse", "binary", "categorical"])
def test_accuracy_by_name_resolves_like_keras_compile(kind):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype("float32")
    classes = 1 if kind == "binary" else 3
    labels = (x[:, 0] > 0).astype("int64") + (kind != "binary") * (x[:, 1] > 0.5)
    y = {
        "sparse": labels,
        "binary": labels[:, None].astype("float32"),
        "categorical": np.eye(3, dtype="float32")[labels],
    }[kind]

    def build() -> keras.Model:
        keras.utils.set_random_seed(1)
        act = "sigmoid" if kind == "binary" else None
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(classes, activation=act)])

    def loss_fn(model, batch):
        return tf.reduce_mean(tf.square(tf.cast(model(batch[0]), tf.float32)))  # any loss

    trainer = tapekit.Trainer(build, loss_fn, metrics=["accuracy"], logdir=False)
    ours = trainer.evaluate((x, y), batch_size=16)["accuracy"]
    oracle = build()
    oracle.compile(loss=lambda t, p: tf.reduce_mean(tf.square(p)), metrics=["accuracy"])
    theirs = oracle.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)["accuracy"]
    expected = {
        "sparse": keras.metrics.SparseCategoricalAccuracy,
        "binary": keras.metrics.BinaryAccuracy,
        "categorical": keras.metrics.CategoricalAccuracy,
    }[kind]
    assert isinstance(trainer.metrics[0], expected)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert 0.0 < ours < 1.0


@pytest.mark.parametrize("model_losses", [True, False])
def test_regularization_losses_are_added_like_keras_fit(model_losses):
    x, y = _data(48)

    def build() -> keras.Model:
        keras.utils.set_random_seed(2)
        reg = keras.regularizers.L2(0.05)
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(6, activation="tanh", kernel_regularizer=reg),
                keras.layers.Dense(1, activity_regularizer=keras.regularizers.L1(0.01)),
            ]
        )

    trainer = tapekit.Trainer(
        build, mse, optimizer=keras.optimizers.SGD(0.05), logdir=False, model_losses=model_losses
    )
    history = trainer.fit((x, y), epochs=2, batch_size=16, shuffle=False, verbose=0)
    oracle = build()
    if not model_losses:  # the same network without its regularizers
        oracle = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)]
        )
        oracle.set_weights(build().get_weights())
    oracle.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    theirs = oracle.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    _close(trainer.get_weights(), oracle.get_weights(), 1e-6)
    np.testing.assert_allclose(history["loss"], theirs.history["loss"], rtol=1e-5)


def test_a_float64_gradient_whose_square_overflows_float32_is_still_finite():
    w = tf.Variable([1.0, -1.0], dtype=tf.float64, name="w")
    unused = tf.Variable([0.0], dtype=tf.float64, name="unused")

    def loss_fn(model, batch):  # gradient 1e25 per element: |g|^2 = 2e50 (float32 max ~3e38)
        return 1e25 * tf.reduce_sum(w) + 0.0 * tf.reduce_sum(tf.cast(batch, tf.float64))

    trainer = tapekit.Trainer(
        [w, unused],
        loss_fn,
        optimizer=keras.optimizers.SGD(1e-26),
        allow_unused=True,
        logdir=False,
    )
    trainer.fit(np.zeros((4, 1), "float32"), batch_size=4, epochs=1, verbose=0)
    np.testing.assert_allclose(w.numpy(), [1.0 - 0.1, -1.0 - 0.1], rtol=1e-6)


def test_the_check_leaves_an_optimizer_method_the_user_set_in_place():
    # The check shadows assign/assign_add/assign_sub on the optimizer while it traces an
    # update (only the writes wait); a method the user had set on the instance stays theirs.
    opt = keras.optimizers.Adam(0.05)
    calls = []
    original = opt.assign_add

    def counting(variable, value):
        calls.append(1)
        return original(variable, value)

    opt.assign_add = counting
    trainer = tapekit.Trainer(_factory(), mse, optimizer=opt, logdir=False, seed=0)
    trainer.fit(_data(32), batch_size=16, verbose=0)
    assert vars(opt)["assign_add"] is counting and calls  # still theirs, and it was used
    assert "assign" not in vars(opt) and "assign_sub" not in vars(opt)
