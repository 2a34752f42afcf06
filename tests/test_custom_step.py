"""User-written training steps on tapekit.Trainer: a two-optimizer WGAN-GP (tests/_gan.py)
resumed bitwise after a real SIGKILL, under MirroredStrategy equal to one device, NaN in the
critic update, clipping / loss scaling / gradient logging per optimizer read back from event
files, steps without data, and the loss_fn path as a special case of the same machinery."""

from __future__ import annotations

from pathlib import Path

import _gan
import keras
import numpy as np
import pytest
import tensorflow as tf
from _children import kill_when_reached, run_child
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit

CHILD = Path(__file__).with_name("_gan_child.py")
CRITIC = ["critic/hidden/kernel", "critic/hidden/bias", "critic/out/kernel", "critic/out/bias"]


def _equal(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def _close(a, b, atol: float) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)


def _scalars(path: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def _critic_names(trainer: tapekit.Trainer) -> list[str]:
    return [v.path for v in trainer.models["critic"].trainable_variables]


# -- the GAN step ---------------------------------------------------------------------------


def test_gan_step_trains_both_models_and_reports_its_values():
    trainer = _gan.trainer()
    history = trainer.fit(_gan.real_data(), epochs=2, batch_size=16, verbose=0)
    assert trainer.global_step == 12 and history.epochs == [0, 1]
    assert set(history.history) == {
        "critic_loss",
        "wasserstein",
        "generator_loss",
        "steps_per_second",
    }
    # Two critic updates and one generator update per step.
    assert int(trainer.optimizers["critic"].iterations.numpy()) == 24
    assert int(trainer.optimizers["generator"].iterations.numpy()) == 12
    assert set(trainer.model) == {"generator", "critic"}
    with pytest.raises(AttributeError, match="several optimizers.*optimizers\\[name\\]"):
        _ = trainer.optimizer


def test_same_seed_gives_bitwise_equal_gan_runs():
    runs = []
    for _ in range(2):
        trainer = _gan.trainer()
        trainer.fit(_gan.real_data(), epochs=1, batch_size=16, verbose=0)
        runs.append(trainer.get_weights())
    _equal(*runs)


@pytest.mark.slow
def test_gan_killed_mid_epoch_resumes_bitwise_like_an_uninterrupted_run(tmp_path):
    ref = run_child(CHILD, tmp_path / "ref" / "ckpt", tmp_path / "ref.npz", wait=False)
    (tmp_path / "run").mkdir()
    killed = run_child(
        CHILD, tmp_path / "run" / "ckpt", tmp_path / "killed.npz", "--kill-at", "10", wait=False
    )
    kill_when_reached(
        killed, tmp_path / "run" / "reached"
    )  # epoch 2, step 4 of 6 done; newest checkpoint: ckpt-8
    assert not (tmp_path / "killed.npz").exists()
    saved = sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("*.index"))
    assert saved[-1] == "ckpt-8.index"
    run_child(CHILD, tmp_path / "run" / "ckpt", tmp_path / "resumed.npz")
    output, _ = ref.communicate(timeout=240)
    assert ref.returncode == 0, output[-3000:]
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    assert str(b["restored"]).endswith("ckpt-8") and str(a["restored"]) == "None"
    assert int(a["step"]) == int(b["step"]) == 18
    weights = [k for k in a.files if k.startswith("arr_")]
    assert len(weights) == 8  # 4 arrays per model
    for k in weights:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["rng"], b["rng"])  # the step's noise generator too
    np.testing.assert_array_equal(a["loss"][-1], b["loss"][-1])


def test_gan_under_mirrored_strategy_equals_one_device(mirrored_strategy):
    data = _gan.noisy_data(90)  # 90 = 5 batches of 16 and one of 10 (5 per replica)
    one = _gan.trainer("batch")
    two = _gan.trainer("batch", strategy=mirrored_strategy)
    h1 = one.fit(data, epochs=2, batch_size=16, verbose=0)
    h2 = two.fit(data, epochs=2, batch_size=16, verbose=0)
    assert one.global_step == two.global_step == 12
    _close(one.get_weights(), two.get_weights(), 1e-5)
    for key in ("critic_loss", "wasserstein", "generator_loss"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_nan_in_the_critic_update_names_critic_variables_and_keeps_good_checkpoints(tmp_path):
    trainer = _gan.trainer(nan_at=3, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    with pytest.raises(
        tapekit.NonFiniteError,
        match=r"at step 3 in the gradients of critic/hidden/kernel, critic/hidden/bias, "
        r"critic/out/kernel, critic/out/bias\. That 'critic' update was not applied "
        r".*newest checkpoint on disk is .*ckpt-2",
    ) as e:
        trainer.fit(_gan.real_data(), epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert e.value.step == 3 and e.value.variables == _critic_names(trainer) == CRITIC
    assert trainer.global_step == 3
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("ckpt-*.index")) == ["ckpt-2.index"]
    assert all(np.isfinite(w).all() for w in trainer.get_weights())
    # The checkpoint holds exactly the weights of a clean run of 2 steps.
    clean = _gan.trainer()
    clean.fit(
        _gan.real_data(), epochs=1, batch_size=16, shuffle=False, steps_per_epoch=2, verbose=0
    )
    restored = _gan.trainer(checkpoint_dir=tmp_path / "ckpt")
    restored.step(_gan.real_data()[:16])  # restores ckpt-2, then takes step 2 again
    again = _gan.trainer()
    again.fit(
        _gan.real_data(), epochs=1, batch_size=16, shuffle=False, steps_per_epoch=2, verbose=0
    )
    again.step(_gan.real_data()[:16])
    _equal(restored.get_weights(), again.get_weights())
    assert restored.global_step == 3
    # Nothing of the failed update stayed in memory: models and both optimizers (slots and
    # iteration counts) equal a clean run of 3 steps (the NaN is in step 3's first update).
    three = _gan.trainer()
    three.fit(
        _gan.real_data(), epochs=1, batch_size=16, shuffle=False, steps_per_epoch=3, verbose=0
    )
    _equal(trainer.get_weights(), three.get_weights())
    for name in ("critic", "generator"):
        ours, theirs = trainer.optimizers[name].variables, three.optimizers[name].variables
        _equal([np.asarray(v) for v in ours], [np.asarray(v) for v in theirs])
    assert int(trainer.optimizers["critic"].iterations.numpy()) == 3 * _gan.CRITIC_STEPS


def test_nonfinite_critic_updates_can_be_skipped():
    trainer = _gan.trainer(nan_at=2, on_nonfinite="skip")
    trainer.fit(_gan.real_data(), epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert trainer.skipped_steps == 1 and trainer.global_step == 6
    assert int(trainer.optimizers["critic"].iterations.numpy()) == 10  # 2 of 12 skipped
    assert all(np.isfinite(w).all() for w in trainer.get_weights())


def test_clipping_loss_scaling_and_gradient_logging_per_optimizer(tmp_path):
    trainer = _gan.trainer(
        logdir=tmp_path,
        log_every=1,
        histogram_every=3,
        clip_norm=0.05,
        mixed_precision="mixed_float16",
    )
    trainer.fit(_gan.real_data(48), epochs=1, batch_size=16, verbose=0)
    trainer.close()
    assert trainer.models["critic"].layers[0].compute_dtype == "float16"
    assert all(
        isinstance(o, keras.optimizers.LossScaleOptimizer) for o in trainer.optimizers.values()
    )
    train = tmp_path / "train"
    for name in ("critic", "generator"):
        norms = _scalars(train, f"optimizer/{name}/gradient_norm")
        assert sorted(norms) == [0, 1, 2]
        # The raw gradients are far above 0.05: what was applied (and logged) is clipped.
        np.testing.assert_allclose(list(norms.values()), 0.05, rtol=1e-3)
        scales = _scalars(train, f"optimizer/{name}/loss_scale")
        assert sorted(scales) == [0, 1, 2]
        final = float(trainer.optimizers[name].dynamic_scale.numpy())
        assert scales[2] == final and all(
            np.log2(s) % 1 == 0 and s <= 2**15 for s in scales.values()
        )
    acc = EventAccumulator(str(train), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for var in CRITIC + ["generator/hidden/kernel", "generator/out/bias"]:
        assert {f"gradient_norm/{var}", f"gradients/{var}", f"weights/{var}"} <= tags
    values = ("critic_loss", "wasserstein", "generator_loss")
    assert {f"{every}/{name}" for name in values for every in ("step", "epoch")} <= tags
    assert "gradient_norm/global" in tags
    for name in ("critic", "generator"):  # one learning rate per optimizer, at the epoch's end
        rate = _scalars(train, f"optimizer/{name}/learning_rate")
        assert list(rate) == [3] and rate[3] == pytest.approx(1e-2)
    assert not {"optimizer/learning_rate", "step/loss", "epoch/loss"} & tags
    assert sorted(e.step for e in acc.Tensors("gradients/critic/hidden/kernel")) == [0]


def test_clipping_per_optimizer_matches_a_hand_step():
    w, v = tf.Variable([3.0, -4.0]), tf.Variable([1.0])

    def step(ctx, batch):
        with tf.GradientTape() as tape:
            a = tf.reduce_sum(ctx.models["a"] ** 2)
        ctx.minimize("a", a, tape)
        with tf.GradientTape() as tape:
            b = tf.reduce_sum(ctx.models["b"] ** 2)
        ctx.minimize("b", b, tape)
        return {"a": a, "b": b}

    trainer = tapekit.Trainer(
        models={"a": w, "b": v},
        step=step,
        optimizers={"a": keras.optimizers.SGD(1.0), "b": keras.optimizers.SGD(1.0)},
        clip_norm=1.0,
        logdir=False,
    )
    out = trainer.step()
    np.testing.assert_allclose(w.numpy(), [3.0 - 0.6, -4.0 + 0.8], atol=1e-6)  # |g| = 10 -> 1
    np.testing.assert_allclose(v.numpy(), [0.0], atol=1e-6)  # g = 2 -> clipped to 1
    assert float(out["a"]) == 25.0 and float(out["b"]) == 1.0


# -- steps without data, one machinery ------------------------------------------------------


def test_fit_without_data_runs_a_step_that_samples_its_own_points():
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )

    def fit_sine(ctx, batch):
        assert batch is None
        x = ctx.rng.uniform([32, 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((ctx.model(x) - tf.sin(3 * x)) ** 2)
        ctx.minimize("model", loss, tape)
        return {"loss": loss}

    weights0 = net.get_weights()
    trainer = tapekit.Trainer(
        net, step=fit_sine, optimizer=keras.optimizers.Adam(0.05), seed=1, logdir=False
    )
    history = trainer.fit(None, steps_per_epoch=25, epochs=2, verbose=0)
    assert trainer.global_step == 50 and history["loss"][1] < history["loss"][0]
    # The same loop written by hand, with a generator seeded alike: equal results.
    trained = [w.copy() for w in trainer.get_weights()]
    net.set_weights(weights0)
    rng, opt = tf.random.Generator.from_seed(1), keras.optimizers.Adam(0.05)

    @tf.function
    def hand():
        x = rng.uniform([32, 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((net(x) - tf.sin(3 * x)) ** 2)
        opt.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)

    for _ in range(50):
        hand()
    _close(trained, net.get_weights(), 1e-6)
    with pytest.raises(ValueError, match=r"fit\(None, \.\.\.\).*steps_per_epoch=N"):
        trainer.fit(None, epochs=3, verbose=0)


def test_epoch_values_are_the_means_over_the_epoch_whatever_calls_ran_it():
    """The epoch's values are read back with the epoch's last call (no device read after
    it): the means over every step of the epoch, calls of 3, 3 and 1 steps alike. An epoch
    that has nothing left to run (it stopped at step 6 of 10, and the next fit has 5 steps
    per epoch) reports the means of the steps it had."""

    def count_steps(ctx, batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(ctx.model(ctx.rng.normal([4, 3])) ** 2)
        ctx.minimize("model", loss, tape)
        return {"loss": loss, "step": tf.cast(ctx.step, tf.float32)}

    class StopAtFour(tapekit.Callback):
        def on_step_end(self, step, logs=None):
            self.trainer.stop_training = step >= 4

    kw = dict(step=count_steps, optimizer="sgd", logdir=False, seed=0, steps_per_execution=3)
    trainer = tapekit.Trainer(_mlp, **kw)
    history = trainer.fit(None, steps_per_epoch=7, epochs=2, verbose=0)
    assert history["step"] == [3.0, 10.0]  # the means of steps 0..6 and 7..13
    assert all(np.isfinite(history["loss"]))

    stopped = tapekit.Trainer(_mlp, callbacks=[StopAtFour()], **kw)
    stopped.fit(None, steps_per_epoch=10, verbose=0)
    assert (stopped.global_step, stopped.epoch, stopped.epoch_step) == (6, 0, 6)
    stopped.callbacks.clear()
    history = stopped.fit(None, steps_per_epoch=5, verbose=0)
    assert history["step"] == [2.5] and stopped.global_step == 6  # steps 0..5, none run now
    assert stopped.epoch_means()["step"] == 2.5


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(1)]
    )


def test_the_loss_fn_form_equals_the_same_loss_as_a_custom_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def mse(model, batch):
        return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)

    def step(ctx, batch):
        with tf.GradientTape() as tape:
            loss = mse(ctx.model, batch)
        ctx.minimize("model", loss, tape)
        return {"loss": loss}

    kw = dict(optimizer="adam", logdir=False, seed=0, clip_norm=0.5)
    a = tapekit.Trainer(_mlp, mse, **kw)
    b = tapekit.Trainer(_mlp, step=step, **kw)
    ha = a.fit((x, y), epochs=2, batch_size=16, verbose=0)
    hb = b.fit((x, y), epochs=2, batch_size=16, verbose=0)
    _equal(a.get_weights(), b.get_weights())
    np.testing.assert_array_equal(ha["loss"], hb["loss"])


def test_python_control_flow_on_tensors_in_steps_and_loss_fns_is_converted():
    """The user's step and loss_fn (and what they call) get AutoGraph, as in a tf.function;
    tapekit's own functions are left unconverted (they are written for tracing)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 3)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) + rng.normal(size=(48, 1))).astype("float32")

    def penalty(err, centre):  # called by the loss_fn: converted with it
        if centre > 0:  # a tensor: a tf.cond
            return tf.reduce_mean(tf.abs(err))
        return tf.reduce_mean(err**2)

    def loss_if(model, batch):
        return penalty(model(batch[0], training=True) - batch[1], tf.reduce_mean(batch[1]))

    def loss_where(model, batch):
        err = model(batch[0], training=True) - batch[1]
        l1, l2 = tf.reduce_mean(tf.abs(err)), tf.reduce_mean(err**2)
        return tf.where(tf.reduce_mean(batch[1]) > 0, l1, l2)

    class Step:  # a callable object of the user's: its __call__ is converted
        def __call__(self, ctx, batch):
            with tf.GradientTape() as tape:
                loss = loss_if(ctx.model, batch)
            ctx.minimize("model", loss, tape)
            if loss > 1e6:
                loss = tf.zeros_like(loss)
            return {"loss": loss}

    def trainer(**kw):
        return tapekit.Trainer(
            _mlp, optimizer=keras.optimizers.SGD(0.05), seed=0, logdir=False, **kw
        )

    def targets(model, batch):  # a metrics_fn with a tensor condition
        pred = model(batch[0], training=False)
        if tf.reduce_mean(batch[1]) > 0:
            pred = pred + 0.0
        return batch[1], pred

    runs = [
        trainer(loss_fn=loss_if),
        trainer(loss_fn=loss_where),
        trainer(step=Step()),
        trainer(loss_fn=loss_if, metrics=["mae"], metrics_fn=targets),
    ]
    for trainer in runs:
        history = trainer.fit((x, y), epochs=2, batch_size=8, verbose=0)
    assert history["mean_absolute_error"][1] > 0
    for trainer in runs[1:]:
        _close(runs[0].get_weights(), trainer.get_weights(), 1e-6)
    assert not np.allclose(runs[0].get_weights()[0], _mlp().get_weights()[0])  # it trained


def test_custom_step_errors_say_how_to_fix():
    w = tf.Variable(1.0)
    with pytest.raises(TypeError, match="must return a dict of scalars.*return"):
        tapekit.Trainer(w, step=lambda ctx, b: None, logdir=False).step()
    with pytest.raises(KeyError, match="optimizer 'critic'.*\\['model'\\]"):
        tapekit.Trainer(w, step=lambda ctx, b: ctx.minimize("critic", w, None), logdir=False).step()
    u = {"used": tf.Variable(1.0), "unused": tf.Variable(2.0)}

    def partial(ctx, batch):
        with tf.GradientTape() as tape:
            loss = ctx.model["used"] ** 2
        ctx.minimize("model", loss, tape)
        return {"loss": loss}

    with pytest.raises(
        tapekit.DisconnectedGradientError, match="optimizer 'model'.*`partial`.*unused"
    ):
        tapekit.Trainer(u, step=partial, logdir=False).step()
    with pytest.raises(ValueError, match="accumulate_steps=2 applies to the default"):
        tapekit.Trainer(w, step=partial, accumulate_steps=2)
    with pytest.raises(ValueError, match="optimizers.*needs a custom `step`"):
        tapekit.Trainer(w, lambda m, b: m, optimizers={"model": "sgd"})
    with pytest.raises(ValueError, match="not among the models"):
        tapekit.Trainer(models={"g": tf.Variable(1.0)}, step=partial, optimizers={"d": "sgd"})
    with pytest.raises(ValueError, match="One optimizer object cannot train the 2 models"):
        tapekit.Trainer(
            models={"g": w, "d": tf.Variable(2.0)}, step=partial, optimizer=keras.optimizers.SGD()
        )
    with pytest.raises(TypeError, match="either `model`.*or `models`.*neither"):
        tapekit.Trainer(step=partial)
    with pytest.raises(ValueError, match="evaluate.*need a loss_fn"):
        tapekit.Trainer(w, step=partial, logdir=False).evaluate(
            np.zeros(4, "float32"), batch_size=2
        )


def test_learning_rate_callbacks_adjust_the_named_optimizer_of_several():
    schedule = tapekit.LearningRateScheduler(lambda epoch, lr: lr * 0.5, optimizer="generator")
    plateau = tapekit.ReduceLROnPlateau("critic_loss", factor=0.5, patience=0, optimizer="critic")
    trainer = _gan.trainer(callbacks=[schedule, plateau], logdir=False)
    rates = {
        n: tapekit.training.lr_callbacks.get_learning_rate(o) for n, o in trainer.optimizers.items()
    }
    history = trainer.fit(_gan.real_data(), epochs=2, batch_size=16, verbose=0)
    generator = tapekit.training.lr_callbacks.get_learning_rate(trainer.optimizers["generator"])
    assert generator == pytest.approx(rates["generator"] * 0.25)  # halved at each epoch start
    assert history.history["learning_rate/generator"] == pytest.approx(
        [rates["generator"] * 0.5, generator]
    )
    assert (
        "learning_rate/critic" in history.history
    )  # the plateau callback logs the rate it watches
    unnamed = _gan.trainer(callbacks=[tapekit.LearningRateScheduler(lambda e: 0.1)], logdir=False)
    with pytest.raises(ValueError, match=r"has 2 \(generator, critic\).*optimizer='generator'"):
        unnamed.fit(_gan.real_data(), epochs=1, batch_size=16, verbose=0)


@pytest.mark.parametrize("loop", ["python", "tf.range", "python if"])
def test_iteration_counts_after_a_nan_midway_through_a_step(loop):
    # NaN in the third critic update of step 2: the counts go back to what they were at that
    # update (2 steps of 3 critic updates and 1 generator update, then 2 more critic updates),
    # whether the updates are straight-line code (counted while tracing), in a tf.range loop
    # or behind a Python `if` on a tensor (control flow: the counts are read at the update).
    def build(name: str) -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)], name=name)

    x = tf.constant([[1.0, 2.0], [0.5, -1.0]])

    def step(ctx, batch):
        critic, generator = ctx.models["critic"], ctx.models["generator"]

        def critic_update(k):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(critic(generator(x)) ** 2)
                bad = tf.logical_and(tf.equal(ctx.step, 2), tf.equal(k, 2))
                loss = loss * tf.where(bad, np.nan, 1.0)
            ctx.minimize("critic", loss, tape)

        if loop == "tf.range":
            for k in tf.range(3):
                critic_update(k)
        else:
            for k in range(3):
                if loop == "python if" and ctx.step >= 0:  # a tf.cond once converted
                    critic_update(tf.constant(k))
                elif loop == "python":
                    critic_update(tf.constant(k))
        with tf.GradientTape() as tape:
            g_loss = tf.reduce_mean(critic(generator(x)))
        ctx.minimize("generator", g_loss, tape)
        return {"generator_loss": g_loss}

    trainer = tapekit.Trainer(
        models={"critic": build("critic"), "generator": build("generator")},
        step=step,
        optimizers={"critic": keras.optimizers.Adam(0.01), "generator": keras.optimizers.Adam()},
        logdir=False,
    )
    with pytest.raises(tapekit.NonFiniteError, match=r"at step 2 in the gradients of critic/"):
        trainer.fit(None, steps_per_epoch=5, verbose=0)
    assert trainer.global_step == 2
    assert int(trainer.optimizers["critic"].iterations.numpy()) == 2 * 3 + 2
    assert int(trainer.optimizers["generator"].iterations.numpy()) == 2
    assert all(np.isfinite(w).all() for w in trainer.get_weights())


@pytest.mark.parametrize(
    "report, hand, raises",
    [
        ("loss", "minimize", True),
        ("derived", "minimize", True),
        ("other", "minimize", False),
        ("other", "apply", True),
    ],
)
def test_minimize_checks_a_reported_loss_and_apply_a_given_loss(report, hand, raises):
    # The loss is NaN at step 2 while its gradients stay finite (a NaN term no variable
    # reaches). ctx.minimize checks it when the step reports it or a value computed from it,
    # not when the step reports nothing computed from it (TensorFlow would compute it for the
    # check alone); ctx.apply checks a loss it is given. The gradients are always checked.
    w = tf.Variable(1.0)

    def step(ctx, batch):
        with tf.GradientTape() as tape:
            fit_term = (ctx.models["model"] - 3.0) ** 2
            loss = fit_term + tf.where(tf.equal(ctx.step, 2), np.nan, 0.0)
        if hand == "minimize":
            ctx.minimize("model", loss, tape)
        else:
            ctx.apply("model", ctx.gradients("model", loss, tape), loss)
        if report == "loss":
            return {"loss": loss}
        return {"twice": 2.0 * loss} if report == "derived" else {"fit_term": fit_term}

    trainer = tapekit.Trainer(w, step=step, optimizer=keras.optimizers.SGD(0.1), logdir=False)
    expected = 1.0
    if raises:
        with pytest.raises(tapekit.NonFiniteError, match=r"at step 2 in the loss\. ") as e:
            trainer.fit(None, steps_per_epoch=4, verbose=0)
        assert e.value.variables == [] and trainer.global_step == 2
        steps = 2  # the failed update was not applied
    else:
        trainer.fit(None, steps_per_epoch=4, verbose=0)  # its gradients were finite throughout
        assert trainer.global_step == 4
        steps = 4
    for _ in range(steps):
        expected -= 0.1 * 2.0 * (expected - 3.0)
    np.testing.assert_allclose(float(w.numpy()), expected, rtol=1e-6)
