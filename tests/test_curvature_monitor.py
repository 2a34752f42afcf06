"""CurvatureMonitor: values checked against direct computation, event files read back, and the
same values under MirroredStrategy as on one device."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit
from tapekit import curvature

N = 32


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype("float32")
    y = np.sin(x @ np.array([[1.0], [-1.0], [0.5]], "float32")).astype("float32")
    return x, y


def build_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(6, activation="tanh", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="net",
    )


def loss_fn(model, batch, training=False):
    x, y = batch
    return keras.ops.mean((model(x, training=training) - y) ** 2)


class WeightRecorder(tapekit.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_begin(self, logs=None):
        self.on_step_end(self.trainer.global_step)

    def on_step_end(self, step, logs=None):
        self.weights[step] = [v.numpy().copy() for v in self.trainer.trainable_variables]


def _fit(strategy=None, logdir=False, every=4, steps=12, **monitor_kw):
    x, y = _data()
    monitor = tapekit.CurvatureMonitor(
        (x, y), every=every, k=2, tol=1e-5, max_iters=60, **monitor_kw
    )
    recorder = WeightRecorder()
    with (strategy or tf.distribute.get_strategy()).scope():
        optimizer = keras.optimizers.SGD(0.2)
    trainer = tapekit.Trainer(
        build_model,
        loss_fn,
        optimizer=optimizer,
        callbacks=[monitor, recorder],
        logdir=logdir,
        seed=0,
        strategy=strategy,
    )
    trainer.fit((x, y), batch_size=N, epochs=steps, verbose=0)  # full batch: 1 step per epoch
    trainer.close()
    return trainer, monitor, recorder


def _scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_logged_values_match_direct_computation_and_are_read_back(tmp_path):
    logdir = str(tmp_path / "run")
    trainer, monitor, recorder = _fit(
        logdir=logdir, trace=True, density=True, noise_scale=True, batch_size=N
    )
    hist = monitor.history
    assert [s for s, _ in hist["curvature/top_eigenvalue"]] == [0, 4, 8, 12]
    # the last sharpness equals the top eigenvalue of the final model's loss, computed anew
    fn, primals = curvature.model_loss(trainer.model, loss_fn, _data())
    values, _ = curvature.top_eigenvalues(fn, primals, k=2, seed=3)
    logged = [hist["curvature/top_eigenvalue"][-1][1], hist["curvature/top_eigenvalue_2"][-1][1]]
    np.testing.assert_allclose(logged, values.numpy(), rtol=2e-3)
    # update ratios are |w_s - w_{s-1}| / |w_{s-1}| of exactly one step
    names = [v.path for v in trainer.trainable_variables]
    for step, ratio in hist[f"update_ratio/{names[0]}"]:
        w1, w0 = recorder.weights[step][0], recorder.weights[step - 1][0]
        np.testing.assert_allclose(ratio, np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rtol=1e-5)
    assert [s for s, _ in hist[f"update_ratio/{names[0]}"]] == [4, 8, 12]

    acc = EventAccumulator(
        os.path.join(logdir, "train"), size_guidance={"tensors": 0, "images": 0}
    ).Reload()
    tags = set(acc.Tags()["tensors"])
    expected = {
        "curvature/top_eigenvalue",
        "curvature/top_eigenvalue_2",
        "curvature/trace",
        "curvature/density",
        "gradient_noise/b_simple",
        "gradient_noise/batch_size",
        f"update_ratio/{names[0]}",
        "custom_scalars__config__",
    }
    assert expected <= tags, expected - tags
    for tag in ("curvature/top_eigenvalue", "curvature/trace", "gradient_noise/b_simple"):
        np.testing.assert_allclose(
            [v for _, v in _scalars(acc, tag)], [v for _, v in hist[tag]], rtol=1e-6
        )
    density = tf.make_ndarray(acc.Tensors("curvature/density")[-1].tensor_proto)
    assert density.shape == (64, 3)
    n_params = sum(int(np.prod(v.shape)) for v in trainer.trainable_variables)
    np.testing.assert_allclose(density[:, 2].sum(), n_params, rtol=1e-3)  # eigenvalues counted
    assert density[0, 0] < logged[0] < density[-1, 1]
    image = acc.Tensors("gradient_flow/heatmap")[-1]
    _, _, png = tf.make_ndarray(image.tensor_proto)
    pixels = tf.io.decode_png(png).numpy()
    assert pixels.shape == (len(names) * 6, 4 * 6, 3)  # 4 variables x 4 measured steps


def test_mirrored_strategy_writes_the_same_values_as_one_device(mirrored_strategy, tmp_path):
    _, one, _ = _fit(noise_scale=True)
    logdir = str(tmp_path / "mirrored")
    _, two, _ = _fit(strategy=mirrored_strategy, logdir=logdir, noise_scale=True)
    assert sorted(one.history) == sorted(two.history)
    for tag, series in one.history.items():
        np.testing.assert_allclose(
            [v for _, v in two.history[tag]], [v for _, v in series], rtol=1e-4, err_msg=tag
        )
    acc = EventAccumulator(os.path.join(logdir, "train"), size_guidance={"tensors": 0}).Reload()
    np.testing.assert_allclose(
        [v for _, v in _scalars(acc, "curvature/top_eigenvalue")],
        [v for _, v in one.history["curvature/top_eigenvalue"]],
        rtol=1e-4,
    )
    assert len(glob.glob(os.path.join(logdir, "train", "events.out.tfevents.*"))) >= 1


def test_invalid_arguments_name_the_fix():
    with pytest.raises(ValueError, match="`every` to be an int >= 1, but received 0"):
        tapekit.CurvatureMonitor(_data(), every=0)
    with pytest.raises(TypeError, match="`loss_fn` to be callable"):
        tapekit.CurvatureMonitor(_data(), loss_fn="mse")


def test_many_steps_per_call_give_the_exact_one_step_update_ratio():
    x, y = _data()
    runs = {}
    for name, extra in (("alone", []), ("every step", [WeightRecorder()])):
        monitor = tapekit.CurvatureMonitor((x, y), every=5, k=1)
        trainer = tapekit.Trainer(
            build_model,
            loss_fn,
            optimizer=keras.optimizers.SGD(0.2),
            callbacks=[monitor, *extra],
            logdir=False,
            seed=0,
        )
        trainer.fit((x, y), batch_size=8, epochs=3, shuffle=False, verbose=0)  # 12 steps
        runs[name] = (monitor.history, extra)
    alone, (every, (recorder,)) = runs["alone"][0], runs["every step"]
    tags = [t for t in alone if t.startswith("update_ratio/")]
    assert len(tags) == 4 and all([s for s, _ in alone[t]] == [5, 10] for t in tags)
    for k, tag in enumerate(tags):  # the alone run (calls of up to 4 steps) saw one step too
        np.testing.assert_allclose(
            [r for _, r in alone[tag]], [r for _, r in every[tag]], rtol=1e-6
        )
        for step, ratio in alone[tag]:
            w1, w0 = recorder.weights[step][k], recorder.weights[step - 1][k]
            np.testing.assert_allclose(
                ratio, np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rtol=1e-5
            )
