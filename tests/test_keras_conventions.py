"""Keras conventions with ``keras.Model.fit`` as the oracle: EarlyStopping stops at the same
epoch with the same weights, ``fit`` called twice, ``get_weights`` interchange; and the console
(progress bar on a real pseudo-terminal, early-stopping and resume messages)."""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import keras
import numpy as np
import pytest
from _regression import close, mse, regression_data, small_model

import tapekit


@pytest.mark.parametrize(
    ("monitor", "patience", "min_delta"), [("loss", 2, 0.02), ("val_loss", 1, 0.01)]
)
def test_early_stopping_stops_at_the_same_epoch_as_keras_fit(monitor, patience, min_delta):
    x, y = regression_data()
    val = regression_data(32, seed=2)
    ref = small_model()
    ref.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    keras_stop = keras.callbacks.EarlyStopping(
        monitor, patience=patience, min_delta=min_delta, restore_best_weights=True
    )
    keras_hist = ref.fit(
        x, y, batch_size=16, epochs=40, shuffle=False, validation_data=val, verbose=0,
        callbacks=[keras_stop],
    )  # fmt: skip
    stop = tapekit.EarlyStopping(
        monitor, patience=patience, min_delta=min_delta, restore_best_weights=True
    )
    trainer = tapekit.Trainer(
        small_model(), mse, optimizer=keras.optimizers.SGD(0.05), logdir=False, callbacks=[stop]
    )
    hist = trainer.fit(
        (x, y), epochs=40, batch_size=16, shuffle=False, validation_data=val, verbose=0
    )
    ran = len(keras_hist.history["loss"])
    assert 2 < ran < 40  # the oracle did stop early
    assert hist.epochs == list(range(ran)) and stop.stopped_epoch == keras_stop.stopped_epoch
    assert stop.best_epoch == keras_stop.best_epoch and stop.wait == keras_stop.wait
    np.testing.assert_allclose(hist[monitor], keras_hist.history[monitor], rtol=1e-5)
    close(trainer.get_weights(), ref.get_weights(), 1e-5)  # the best epoch's, restored


def test_early_stopping_resets_in_on_train_begin_and_keeps_the_alias():
    stop = tapekit.EarlyStopping("loss", patience=1, restore_best=True)
    assert stop.restore_best_weights and tapekit.EarlyStopping("loss").restore_best is False
    for epoch, loss in enumerate([0.1, 0.2]):
        stop.on_epoch_end(epoch, {"loss": loss})
    assert stop.best == 0.1 and stop.stopped_epoch == 1
    stop.on_train_begin()  # a reused object must not carry the last run's best
    assert stop.best is None and stop.wait == 0 and stop.stopped_epoch is None
    stop.on_epoch_end(0, {"loss": 5.0})
    assert stop.best == 5.0
    with pytest.raises(ValueError, match="patience must be an int >= 0, got -1"):
        tapekit.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'up'"):
        tapekit.EarlyStopping(mode="up")


def test_early_stopping_says_so_on_the_console(capsys):
    stop = tapekit.EarlyStopping("loss", patience=1, min_delta=1e9)
    trainer = tapekit.Trainer(small_model(), mse, logdir=False, callbacks=[stop])
    trainer.fit(regression_data(), epochs=5, batch_size=32, verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("epoch 2/5")
    assert out[2] == (
        "early stopping after epoch 2: loss did not improve for 1 epoch(s) "
        f"(patience 1, best {stop.best:.4g} at epoch 1)"
    )


def test_fit_twice_counts_epochs_in_total_and_says_when_nothing_is_left():
    x, y = regression_data()
    kw = dict(batch_size=16, verbose=0, shuffle=False)  # the shuffled case: data-position tests
    once = tapekit.Trainer(small_model(), mse, logdir=False, seed=3)
    once.fit((x, y), epochs=3, **kw)
    twice = tapekit.Trainer(small_model(), mse, logdir=False, seed=3)
    twice.fit((x, y), epochs=1, **kw)
    rest = twice.fit((x, y), epochs=3, **kw)
    assert rest.epochs == [1, 2] and twice.global_step == once.global_step == 12
    close(twice.get_weights(), once.get_weights(), 0)
    with pytest.warns(UserWarning, match=r"fit\(epochs=3\) has nothing to train: 3 epoch.*"
                      r"pass epochs=6 to train 3 more") as caught:  # fmt: skip
        empty = twice.fit((x, y), epochs=3, batch_size=16, verbose=1)
    assert empty.epochs == [] and empty.step == 12 and twice.global_step == 12
    assert caught[0].filename == __file__  # the warning points at the fit call


def test_resume_is_announced_on_the_console(tmp_path, capsys):
    first = tapekit.Trainer(small_model(), mse, logdir=False, checkpoint_dir=tmp_path, seed=0)
    first.fit(regression_data(), epochs=1, batch_size=16, verbose=0)
    again = tapekit.Trainer(small_model(), mse, logdir=False, checkpoint_dir=tmp_path, seed=0)
    again.fit(regression_data(), epochs=2, batch_size=16, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"resumed from .*ckpt-4 \(step 4\): continuing epoch 2/2 at step 0 of 4", lines[0]
    ), lines
    assert lines[1].startswith("epoch 2/2 | step 8 |")


def test_get_weights_interchange_with_keras_for_a_dropout_model():
    def build():
        return keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4),
                keras.layers.Dropout(0.5),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(1),
            ]
        )

    model, other = build(), build()
    trainer = tapekit.Trainer(model, mse, logdir=False)
    assert len(trainer.variables) > len(trainer.get_weights())  # the seed state stays out
    assert [w.shape for w in trainer.get_weights()] == [w.shape for w in other.get_weights()]
    trainer.set_weights(other.get_weights())
    close(model.get_weights(), other.get_weights(), 0)
    close(trainer.get_weights(), other.get_weights(), 0)
    other.set_weights([w + 1 for w in trainer.get_weights()])
    close(other.get_weights(), [w + 1 for w in model.get_weights()], 0)
    with pytest.raises(ValueError, match=r"set_weights needs 8 arrays .* got 9"):
        trainer.set_weights([np.zeros(1)] * 9)


class _Slow(tapekit.Callback):
    """Makes each step take a while, so the bar redraws between steps."""

    def on_step_end(self, step, logs=None):
        time.sleep(0.3)


def _on_a_terminal(run) -> str:
    """Run ``run()`` with sys.stdout on a real pseudo-terminal; return what it showed."""
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    terminal = os.fdopen(slave, "w", buffering=1)
    saved, sys.stdout = sys.stdout, terminal
    try:
        run()
    finally:
        sys.stdout = saved
        terminal.close()
        reader.join(timeout=5)
        os.close(master)
    return b"".join(chunks).decode()


def test_progress_bar_on_a_terminal_and_one_line_per_epoch_with_verbose_2():
    def fit(verbose):
        trainer = tapekit.Trainer(small_model(), mse, logdir=False, callbacks=[_Slow()], seed=0)
        return lambda: trainer.fit(regression_data(), epochs=2, batch_size=16, verbose=verbose)

    shown = _on_a_terminal(fit(1))
    shown = shown.replace("\r\n", "\n").replace("\x1b[K", "")  # the tty's newlines, clear-line
    bars = re.findall(r"\r(\d)/4 \[[=>.]{24}\] \| loss ([\d.]+)( \| ETA \d+s)?", shown)
    assert len(bars) >= 4 and {b[0] for b in bars} <= {"1", "2", "3"}, shown
    assert sum(bool(b[2]) for b in bars) >= 2  # an ETA once the rate is known
    lines = [line.split("\r")[-1] for line in shown.split("\n") if line]
    assert [line[:10] for line in lines] == ["epoch 1/2 ", "epoch 2/2 "], shown
    plain = _on_a_terminal(fit(2))
    assert "[" not in plain and len(plain.splitlines()) == 2, plain
