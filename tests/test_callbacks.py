"""Learning-rate callbacks and BestCheckpoint, with keras.Model.fit as the oracle where Keras has
the same callback; the learning rate read back from real TensorBoard event files; the best
checkpoint restored into a fresh model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from _regression import close, mse, regression_data, small_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit


def _against_keras(make_keras_cb, make_cb, epochs=8, lr=0.05, **fit):
    x, y = regression_data()
    ref = small_model()
    ref.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    expected = ref.fit(
        x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0, callbacks=[make_keras_cb()],
        **fit,
    )  # fmt: skip
    trainer = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(lr), logdir=False, callbacks=[make_cb()]
    )
    got = trainer.fit((x, y), epochs=epochs, batch_size=16, shuffle=False, verbose=0, **fit)
    return expected.history, got, ref, trainer


def test_reduce_lr_on_plateau_matches_keras_fit():
    kw = dict(factor=0.5, patience=1, min_delta=0.1, cooldown=1, min_lr=0.004)
    expected, got, ref, trainer = _against_keras(
        lambda: keras.callbacks.ReduceLROnPlateau("loss", **kw),
        lambda: tapekit.ReduceLROnPlateau("loss", **kw),
        epochs=12,
    )
    rates = expected["learning_rate"]
    assert len(set(np.round(rates, 6))) >= 3  # the oracle did reduce, more than once
    np.testing.assert_allclose(got["learning_rate"], rates, rtol=1e-6)
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    close(trainer.get_weights(), ref.get_weights(), 1e-5)


def test_learning_rate_scheduler_matches_keras_fit():
    def schedule(epoch, lr):
        return float(lr * 0.5) if epoch % 2 else float(lr)

    expected, got, ref, trainer = _against_keras(
        lambda: keras.callbacks.LearningRateScheduler(schedule),
        lambda: tapekit.LearningRateScheduler(schedule),
        epochs=5,
    )
    np.testing.assert_allclose(got["learning_rate"], expected["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose(got["learning_rate"], [0.05, 0.025, 0.025, 0.0125, 0.0125])
    close(trainer.get_weights(), ref.get_weights(), 1e-5)


def test_learning_rate_in_tensorboard_whatever_changes_it(tmp_path):
    plateau = tapekit.ReduceLROnPlateau("loss", factor=0.5, patience=0, min_delta=1e9)
    trainer = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(0.1), logdir=tmp_path / "a",
        callbacks=[plateau],
    )  # fmt: skip
    trainer.fit(regression_data(), epochs=3, batch_size=16, verbose=0)
    trainer.close()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    scheduled = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(schedule), logdir=tmp_path / "b"
    )
    scheduled.fit(regression_data(), epochs=3, batch_size=16, verbose=0)
    scheduled.close()
    logged = {}
    for run in ("a", "b"):
        acc = EventAccumulator(str(tmp_path / run / "train"), size_guidance={"tensors": 0})
        acc.Reload()
        logged[run] = {
            e.step: float(tf.make_ndarray(e.tensor_proto))
            for e in acc.Tensors("optimizer/learning_rate")
        }
    # a: the rate each epoch ran with (epoch 1 sets the best; halved after epoch 2's end)
    np.testing.assert_allclose([logged["a"][s] for s in (4, 8, 12)], [0.1, 0.1, 0.05])
    assert plateau.trainer.optimizer.learning_rate.numpy() == pytest.approx(0.025)
    # b: the schedule's value at the step the epoch ended
    np.testing.assert_allclose([logged["b"][s] for s in (4, 8, 12)], [0.05, 0.025, 0.0125])


def test_lr_callbacks_refuse_a_schedule_and_bad_arguments():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    trainer = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(schedule), logdir=False,
        callbacks=[tapekit.LearningRateScheduler(lambda epoch: 0.1)],
    )  # fmt: skip
    with pytest.raises(TypeError, match="follows a ExponentialDecay schedule.*float learning"):
        trainer.fit(regression_data(), epochs=1, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="factor < 1, got factor=2"):
        tapekit.ReduceLROnPlateau(factor=2)
    bad = tapekit.Trainer(
        small_model(),
        mse,
        logdir=False,
        callbacks=[tapekit.LearningRateScheduler(lambda e, lr: "x")],
    )
    with pytest.raises(ValueError, match="must return a float.*'x'"):
        bad.fit(regression_data(), epochs=1, batch_size=16, verbose=0)


class _Snapshots(tapekit.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.trainer.get_weights())


def test_best_checkpoint_keeps_the_best_epoch_besides_the_last(tmp_path):
    x, y = regression_data()
    val = regression_data(16, seed=7)
    best, snaps = tapekit.BestCheckpoint("val_loss"), _Snapshots()
    trainer = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(0.15), logdir=False, seed=0,
        checkpoint_dir=tmp_path, keep_checkpoints=1, callbacks=[best, snaps],
    )  # fmt: skip
    # (a step size at which these 8 epochs' validation loss is lowest at epoch 3 of 0-7)
    hist = trainer.fit((x, y), epochs=8, batch_size=8, validation_data=val, verbose=0)
    losses = hist["val_loss"]
    k = int(np.argmin(losses))
    assert 0 < k < len(losses) - 1, losses  # the best is neither the first nor the last epoch
    assert best.best_epoch == k and best.best == pytest.approx(losses[k])
    assert best.path.endswith(f"best/ckpt-{8 * (k + 1)}")
    record = json.loads((tmp_path / "best" / "best.json").read_text())
    assert record["epoch"] == k and record["monitor"] == "val_loss"
    assert sorted(p.name for p in (tmp_path / "best").glob("*.index")) == [
        f"ckpt-{8 * (k + 1)}.index"
    ]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-64.index"]
    fresh = small_model(seed=9)
    tf.train.Checkpoint(model=fresh).restore(best.path).expect_partial()
    close(fresh.get_weights(), snaps.weights[k], 0)
    # A resumed run knows the earlier best and does not overwrite it with a worse epoch.
    again = tapekit.BestCheckpoint("val_loss")
    more = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(0.15), logdir=False, seed=0,
        checkpoint_dir=tmp_path, callbacks=[again],
    )  # fmt: skip
    rest = more.fit((x, y), epochs=9, batch_size=8, validation_data=val, verbose=0)
    assert again.best == pytest.approx(min(losses[k], rest["val_loss"][0]))
    if rest["val_loss"][0] >= losses[k]:
        assert again.path == best.path and again.best_epoch == k
    else:
        assert again.path.endswith("best/ckpt-72") and again.best_epoch == 8


def test_best_checkpoint_needs_a_checkpoint_dir():
    trainer = tapekit.Trainer(
        small_model(), mse, logdir=False, callbacks=[tapekit.BestCheckpoint("loss")]
    )
    with pytest.raises(ValueError, match="BestCheckpoint needs Trainer\\(checkpoint_dir"):
        trainer.fit(regression_data(), epochs=1, batch_size=16, verbose=0)
    assert trainer.global_step == 0


def test_early_stopping_auto_mode_maximises_accuracy_like_keras():
    stop = tapekit.EarlyStopping("val_acc", patience=1)  # mode="auto": "acc" is maximised
    assert stop.mode == "max"
    stop.on_train_begin()
    for epoch, acc in enumerate([0.5, 0.6, 0.7, 0.65, 0.64]):  # rising, then worse epochs
        stop.on_epoch_end(epoch, {"val_acc": acc})
        if stop.stopped_epoch is not None:  # what the Trainer does on stop_training
            break
    assert stop.best == 0.7 and stop.stopped_epoch == 3  # Keras: stop when wait >= patience


def test_a_step_callback_with_next_step_end_sees_exactly_the_steps_it_asks_for():
    class EveryFifteen(tapekit.Callback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, step, logs=None):
            self.seen.append(step)

        def next_step_end(self, step):
            return (step // 15 + 1) * 15

    class EveryStep(tapekit.Callback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, step, logs=None):
            self.seen.append(step)

    x, y = regression_data(160)
    scheduled, plain = EveryFifteen(), EveryStep()
    trainer = tapekit.Trainer(small_model(), mse, logdir=False, callbacks=[scheduled])
    trainer.fit((x, y), epochs=2, batch_size=8, shuffle=False, verbose=0)  # 20 steps/epoch
    # Calls end at the steps asked for and at epoch ends only: many steps per call.
    assert scheduled.seen == [15, 20, 30, 40]
    other = tapekit.Trainer(small_model(), mse, logdir=False, callbacks=[scheduled, plain])
    other.fit((x, y), epochs=1, batch_size=8, verbose=0)
    assert plain.seen == list(range(1, 21))  # a callback without a schedule: every step
    reference = tapekit.Trainer(small_model(), mse, logdir=False)  # no callbacks: 64/call
    reference.fit((x, y), epochs=2, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(trainer.get_weights(), reference.get_weights()):  # grouping changes nothing
        np.testing.assert_array_equal(a, b)
