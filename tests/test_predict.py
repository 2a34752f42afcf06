"""``Trainer.predict`` against ``keras.Model.predict``: inference mode, (x, y) batches, nested
outputs, partial batches under a real MirroredStrategy, one trace per signature, clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.5),  # inference mode: must be off
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )


def mse(model, batch):
    return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)


def _x(n: int = 23) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3)).astype("float32")


def test_predict_equals_keras_predict_and_traces_once():
    model = _model()
    trainer = tapekit.Trainer(model, mse, logdir=False)
    x = _x()
    out = trainer.predict(x, batch_size=5)  # 4 full batches and one of 3
    np.testing.assert_allclose(out, model.predict(x, batch_size=5, verbose=0), atol=1e-6)
    assert out.shape == (23, 2) and out.dtype == np.float32
    again = trainer.predict(_x(9), batch_size=4)
    np.testing.assert_allclose(again, model(_x(9), training=False).numpy(), atol=1e-6)
    (fn,) = trainer._predictors["model"]._fns.values()
    assert fn.experimental_get_tracing_count() == 1  # batch sizes 5, 3 and 4: one trace
    first = trainer.predict(x, batch_size=5, steps=2)
    np.testing.assert_allclose(first, out[:10], atol=1e-6)


def test_predict_takes_x_of_labelled_batches_and_keeps_nested_outputs():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, {"a": hidden, "b": keras.layers.Dense(1)(hidden)})
    trainer = tapekit.Trainer(model, lambda m, b: tf.reduce_mean(m(b[0])["b"]), logdir=False)
    x = _x(10)
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(10, "float32"))).batch(4)
    out = trainer.predict(ds)
    expected = model.predict(ds, verbose=0)
    assert sorted(out) == ["a", "b"] and out["b"].shape == (10, 1)
    for k in out:
        np.testing.assert_allclose(out[k], expected[k], atol=1e-6)


def test_predict_under_mirrored_strategy_gathers_in_order(mirrored_strategy):
    trainer = tapekit.Trainer(_model, mse, strategy=mirrored_strategy, logdir=False)
    x = _x(11)  # batches of 4, 4, 3: the last one splits 2 + 1 over the replicas
    out = trainer.predict(x, batch_size=4)
    np.testing.assert_allclose(out, trainer.model(x, training=False).numpy(), atol=1e-6)


def test_predict_errors_name_the_fix(tmp_path):
    with pytest.raises(TypeError, match="predict needs a callable model.*Variable"):
        tapekit.Trainer(tf.Variable(1.0), lambda v, b: v * 1.0, logdir=False).predict(
            _x(), batch_size=4
        )
    trainer = tapekit.Trainer(_model(), mse, logdir=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="initial weights.*evaluate"):
        trainer.predict(_x(), batch_size=4)
    free = tapekit.Trainer(_model(), mse, logdir=False)
    with pytest.raises(ValueError, match="batch_size` must be a positive int"):
        free.predict(_x())
    with pytest.raises(ValueError, match="steps >= 1"):
        free.predict(_x(), batch_size=4, steps=0)
