"""Real keras.callbacks objects in Trainer(callbacks=...), with keras.Model.fit as the oracle:
EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, CSVLogger, TerminateOnNaN, LambdaCallback;
the ones that cannot work are refused when the Trainer is built."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf
from _regression import close, mse, regression_data, small_model

import tapekit


def _both(make_callbacks, epochs=30, **fit):
    """keras fit and Trainer.fit on the same model, data, order and callbacks (fresh copies)."""
    x, y = regression_data()
    val = regression_data(32, seed=2)
    ref = small_model()
    ref.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    expected = ref.fit(
        x, y, batch_size=16, epochs=epochs, shuffle=False, validation_data=val, verbose=0,
        callbacks=make_callbacks("keras"),
    )  # fmt: skip
    model = small_model()
    trainer = tapekit.Trainer(
        model, mse, optimizer=keras.optimizers.SGD(0.05), logdir=False,
        callbacks=make_callbacks("tapekit"),
    )  # fmt: skip
    got = trainer.fit((x, y), epochs=epochs, batch_size=16, shuffle=False, validation_data=val,
                      verbose=0, **fit)  # fmt: skip
    return expected, ref, got, trainer


def test_keras_early_stopping_and_reduce_lr_match_keras_fit(capsys):
    made = {}

    def callbacks(who):
        made[who] = keras.callbacks.EarlyStopping(
            "val_loss", patience=3, min_delta=0.01, restore_best_weights=True
        )
        plateau = keras.callbacks.ReduceLROnPlateau(
            "val_loss", factor=0.5, patience=1, min_delta=0.03
        )
        return [plateau, made[who]]

    expected, ref, got, trainer = _both(callbacks)
    ran = len(expected.history["loss"])
    assert 2 < ran < 30 and got.epochs == list(range(ran))
    assert made["tapekit"].stopped_epoch == made["keras"].stopped_epoch
    assert made["tapekit"].best_epoch == made["keras"].best_epoch
    np.testing.assert_allclose(got["learning_rate"], expected.history["learning_rate"], rtol=1e-6)
    assert len(set(np.round(got["learning_rate"], 6))) > 1  # the rate was reduced
    np.testing.assert_allclose(got["val_loss"], expected.history["val_loss"], rtol=1e-5)
    close(trainer.get_weights(), ref.get_weights(), 1e-5)  # the best epoch's weights, restored
    assert trainer.model.optimizer is trainer.optimizer


def test_keras_model_checkpoint_and_csv_logger_write_what_fit_writes(tmp_path):
    def callbacks(who):
        return [
            keras.callbacks.ModelCheckpoint(
                str(tmp_path / f"{who}.weights.h5"), monitor="loss", save_best_only=True,
                save_weights_only=True,
            ),
            keras.callbacks.CSVLogger(str(tmp_path / f"{who}.csv")),
        ]  # fmt: skip

    expected, ref, got, trainer = _both(callbacks, epochs=4)
    # ModelCheckpoint(save_freq="epoch") gets no batch hook: multi-step calls stay on
    assert [type(cb).__name__ for cb in trainer.callbacks] == ["KerasCallback"] * 2
    loaded = small_model(seed=5)
    loaded.load_weights(str(tmp_path / "tapekit.weights.h5"))
    close(loaded.get_weights(), trainer.get_weights(), 0)  # the loss fell every epoch
    close(loaded.get_weights(), ref.get_weights(), 1e-5)
    rows = {}
    for who in ("keras", "tapekit"):
        with open(tmp_path / f"{who}.csv") as f:
            rows[who] = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows["tapekit"]] == ["0", "1", "2", "3"]
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(
            [float(r[key]) for r in rows["tapekit"]],
            [float(r[key]) for r in rows["keras"]],
            rtol=1e-5,
        )


def test_batch_hooks_stop_training_and_terminate_on_nan():
    seen = []
    model = small_model()

    def on_batch(batch, logs):
        seen.append((batch, logs["loss"]))

    def on_epoch(epoch, logs):
        if epoch == 1:
            model.stop_training = True

    lam = keras.callbacks.LambdaCallback(on_train_batch_end=on_batch, on_epoch_end=on_epoch)
    trainer = tapekit.Trainer(
        model, mse, logdir=False, callbacks=[lam, keras.callbacks.TerminateOnNaN()]
    )
    history = trainer.fit(regression_data(), epochs=5, batch_size=16, verbose=0)
    assert history.epochs == [0, 1] and trainer.global_step == 8
    assert [b for b, _ in seen] == [0, 1, 2, 3] * 2 and all(np.isfinite(v) for _, v in seen)
    np.testing.assert_allclose(seen[7][1], history["loss"][1], rtol=1e-6)  # running mean


def test_keras_callbacks_that_cannot_work_are_refused_up_front():
    with pytest.raises(TypeError, match="BackupAndRestore cannot drive.*checkpoint_dir"):
        tapekit.Trainer(
            small_model(), mse, callbacks=[keras.callbacks.BackupAndRestore("/tmp/x")], logdir=False
        )
    with pytest.raises(TypeError, match="TensorBoard cannot drive.*logdir"):
        tapekit.Trainer(small_model(), mse, callbacks=[keras.callbacks.TensorBoard()], logdir=False)
    with pytest.raises(TypeError, match="need a keras.Model.*EarlyStopping.*ResourceVariable"):
        tapekit.Trainer(
            tf.Variable(1.0), lambda v, b: v * 1.0, logdir=False,
            callbacks=[keras.callbacks.EarlyStopping("loss")],
        )  # fmt: skip
