"""Trainer logging through tapekit.board: real event files read back with TensorBoard's own
EventAccumulator (scalars, gradient norms, histograms, the train-step graph)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit


def _data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-1.0], [2.0]], "float32"))


def _build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="tanh", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="net",
    )


def mse(model, batch):
    err = model(batch[0], training=True) - batch[1]
    return tf.reduce_mean(err**2), {"bias": tf.reduce_mean(err)}


def plain_mse(model, batch):
    return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)


def _events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def _values(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_fit_writes_scalars_norms_histograms_and_the_step_graph(tmp_path):
    trainer = tapekit.Trainer(
        _build, mse, logdir=tmp_path, log_every=1, histogram_every=4, metrics=["mae"], seed=0
    )
    x, y = _data()
    hist = trainer.fit(
        (x, y), epochs=2, batch_size=8, validation_data=_data(16, 1), verbose=0, shuffle=False
    )
    trainer.close()
    train, val = _events(tmp_path / "train"), _events(tmp_path / "validation")
    tags = set(train.Tags()["tensors"])
    names = ["net/hidden/kernel", "net/hidden/bias", "net/out/kernel", "net/out/bias"]
    assert {
        "step/loss",
        "step/bias",
        "epoch/loss",
        "epoch/mean_absolute_error",
        "optimizer/learning_rate",
        "optimizer/steps_per_second",
        "gradient_norm/global",
    } <= tags
    for name in names:  # one unique tag per variable
        assert {f"gradient_norm/{name}", f"gradients/{name}", f"weights/{name}"} <= tags
    assert sorted(_values(train, "step/loss")) == list(range(12))  # every step (log_every=1)
    assert sorted(e.step for e in train.Tensors(f"gradients/{names[0]}")) == [0, 4, 8]
    epoch_loss = _values(train, "epoch/loss")
    np.testing.assert_allclose([epoch_loss[6], epoch_loss[12]], hist["loss"], rtol=1e-6)
    mae = _values(train, "epoch/mean_absolute_error")
    np.testing.assert_allclose([mae[6], mae[12]], hist["mean_absolute_error"], rtol=1e-6)
    np.testing.assert_allclose(list(_values(train, "optimizer/learning_rate").values()), [1e-3] * 2)
    assert set(val.Tags()["tensors"]) == {
        "epoch/loss",
        "step/loss",
        "epoch/bias",
        "step/bias",
        "epoch/mean_absolute_error",
    }
    val_loss = _values(val, "epoch/loss")
    np.testing.assert_allclose([val_loss[6], val_loss[12]], hist["val_loss"], rtol=1e-6)
    # The global norm logged at step 0 is the norm of the first batch's gradient.
    model = _build()
    with tf.GradientTape() as tape:
        loss, _ = mse(model, (x[:8], y[:8]))
    norm0 = float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))
    np.testing.assert_allclose(_values(train, "gradient_norm/global")[0], norm0, rtol=1e-5)
    graph = train.Graph()
    ops = {n.op for f in graph.library.function for n in f.node_def} | {n.op for n in graph.node}
    assert {"MatMul", "ResourceApplyAdam"} & ops or "MatMul" in ops
    assert any(
        "AssignSubVariableOp" in o or "ResourceApply" in o or "AssignVariableOp" in o for o in ops
    )


def test_tags_are_grouped_and_validation_shares_the_charts_and_steps(tmp_path):
    trainer = tapekit.Trainer(
        _build, plain_mse, logdir=tmp_path, log_every=2, histogram_every=0, metrics=["mae"], seed=0
    )
    (x, y), (xv, yv) = _data(), _data(16, 1)
    hist = trainer.fit((x, y), epochs=2, batch_size=8, validation_data=(xv, yv), verbose=0)
    trainer.close()
    train, val = _events(tmp_path / "train"), _events(tmp_path / "validation")
    variables = ["net/hidden/kernel", "net/hidden/bias", "net/out/kernel", "net/out/bias"]
    assert set(train.Tags()["tensors"]) == {
        "step/loss",
        "epoch/loss",
        "epoch/mean_absolute_error",
        "optimizer/learning_rate",
        "optimizer/steps_per_second",
        "gradient_norm/global",
        *(f"gradient_norm/{name}" for name in variables),
    }
    assert set(val.Tags()["tensors"]) == {"step/loss", "epoch/loss", "epoch/mean_absolute_error"}
    # Per epoch: train and validation at the same steps (the global step at each epoch's end).
    train_epoch, val_epoch = _values(train, "epoch/loss"), _values(val, "epoch/loss")
    assert sorted(train_epoch) == sorted(val_epoch) == [6, 12]
    np.testing.assert_allclose([train_epoch[6], train_epoch[12]], hist["loss"], rtol=1e-6)
    np.testing.assert_allclose([val_epoch[6], val_epoch[12]], hist["val_loss"], rtol=1e-6)
    val_mae = _values(val, "epoch/mean_absolute_error")
    np.testing.assert_allclose([val_mae[6], val_mae[12]], hist["val_mean_absolute_error"])
    # The last validation loss, recomputed from the final weights outside the Trainer.
    final = float(np.mean((trainer.model(xv, training=False).numpy() - yv) ** 2))
    np.testing.assert_allclose(val_epoch[12], final, rtol=1e-5)
    # Per step: train every log_every steps, validation as one point per epoch end.
    assert sorted(_values(train, "step/loss")) == [0, 2, 4, 6, 8, 10]
    assert _values(val, "step/loss") == val_epoch
    # History, callbacks' logs and the console keep the plain names.
    assert set(hist.history) == {
        "loss",
        "mean_absolute_error",
        "val_loss",
        "val_mean_absolute_error",
        "steps_per_second",
    }
    rate = _values(train, "optimizer/steps_per_second")
    np.testing.assert_allclose([rate[6], rate[12]], hist["steps_per_second"], rtol=1e-6)


def test_skipped_steps_are_counted_in_the_optimizer_group(tmp_path):
    x, y = _data()
    x[20] = np.nan  # the batch of examples 16..23 is skipped in each epoch (no shuffle)
    trainer = tapekit.Trainer(
        _build, plain_mse, logdir=tmp_path, on_nonfinite="skip", histogram_every=0, seed=0
    )
    hist = trainer.fit((x, y), epochs=2, batch_size=8, shuffle=False, verbose=0)
    trainer.close()
    train = _events(tmp_path / "train")
    assert _values(train, "optimizer/skipped_steps") == {6: 1.0, 12: 2.0}  # the count so far
    assert hist["skipped_steps"] == [1.0, 2.0]
    assert not [t for t in train.Tags()["tensors"] if t.startswith("skipped_steps")]


def test_log_every_and_histograms_off(tmp_path):
    trainer = tapekit.Trainer(
        _build, mse, logdir=tmp_path, log_every=5, histogram_every=0, steps_per_execution=3
    )
    trainer.fit(_data(), epochs=2, batch_size=8, verbose=0)
    trainer.close()
    train = _events(tmp_path / "train")
    assert sorted(_values(train, "step/loss")) == [0, 5, 10]
    assert sorted(e.step for e in train.Tensors("gradient_norm/global")) == [0, 5, 10]
    assert not any(t.startswith(("gradients/", "weights/")) for t in train.Tags()["tensors"])


def test_events_survive_a_failing_fit(tmp_path):
    x, y = _data()
    x[20] = np.nan  # step 2 (batch of examples 16..23)
    trainer = tapekit.Trainer(_build, mse, logdir=tmp_path, log_every=1)
    with pytest.raises(tapekit.NonFiniteError, match="at step 2 "):
        trainer.fit((x, y), batch_size=8, shuffle=False, verbose=0)
    losses = _values(_events(tmp_path / "train"), "step/loss")  # fit closed the writers
    # Every completed step is on disk; the failing step stopped before its update and its
    # logging (the error names it), so nothing non-finite was written.
    assert sorted(losses) == [0, 1] and np.isfinite(list(losses.values())).all()


def test_unwritable_logdir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    trainer = tapekit.Trainer(_build, mse, logdir=blocker / "run")
    before = trainer.get_weights()
    with pytest.raises(OSError, match="not writable.*logdir"):
        trainer.fit(_data(), batch_size=8, verbose=0)
    assert trainer.global_step == 0
    for a, b in zip(before, trainer.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_logging_disabled_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = tapekit.Trainer(_build, mse, logdir=False)
    trainer.fit(_data(), batch_size=8, verbose=0)
    assert trainer.logdir is None and not (tmp_path / "logs").exists()
    default = tapekit.Trainer(_build, mse, name="demo")
    default.fit(_data(), batch_size=8, verbose=0)
    default.close()
    runs = list((tmp_path / "logs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo-")
    assert (runs[0] / "train").is_dir()


def test_the_step_graph_shows_forward_backward_and_update(tmp_path):
    trainer = tapekit.Trainer(_build, mse, logdir=tmp_path, seed=0)
    trainer.fit(_data(), batch_size=8, verbose=0)
    trainer.close()
    graph = _events(tmp_path / "train").Graph()
    names = [n.name for f in graph.library.function for n in f.node_def]
    names += [n.name for n in graph.node]
    for scope in ("forward/", "backward/", "update/"):
        assert any(scope in name for name in names), scope
    assert any("forward/" in name and "hidden" in name for name in names)  # the model's layers
