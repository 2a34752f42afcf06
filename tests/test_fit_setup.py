"""The keras-engineer features on the restructured Trainer with several named models
(issue 11's custom steps): optimizer records in checkpoints, Keras callbacks, predict, weights,
SIGTERM at the exact position; and the helpers of ``tapekit.training.fit_setup``."""

from __future__ import annotations

import signal

import _gan
import keras
import numpy as np
import pytest
from _signals import SignalAt

import tapekit
from tapekit.training.fit_setup import optimizer_record
from tapekit.training.preemption import Preempted


def _gan_trainer(optimizers=None, **kw) -> tapekit.Trainer:
    if optimizers is None:
        return _gan.trainer(**kw)
    kw.setdefault("logdir", False)
    return tapekit.Trainer(
        models=_gan.models(), step=_gan.make_step(), optimizers=optimizers, seed=3, **kw
    )


def test_optimizer_record_names_every_optimizer():
    assert optimizer_record({"model": keras.optimizers.SGD()}) == {"optimizer": "SGD"}
    record = optimizer_record(
        {"generator": keras.optimizers.Adam(), "critic": keras.optimizers.RMSprop()}
    )
    assert record == {"optimizers": "critic=RMSprop, generator=Adam"}


def test_several_optimizers_are_recorded_and_a_mismatch_is_refused(tmp_path):
    first = _gan_trainer(checkpoint_dir=tmp_path)
    first.fit(_gan.real_data(32), epochs=1, batch_size=16, verbose=0)
    assert first.checkpoints.meta == {"optimizers": "critic=Adam, generator=Adam"}
    other = _gan_trainer(
        {"generator": keras.optimizers.Adam(1e-2), "critic": keras.optimizers.SGD(1e-2)},
        checkpoint_dir=tmp_path,
    )
    with pytest.raises(
        tapekit.CheckpointError,
        match=r"written with optimizers critic=Adam, generator=Adam, but this Trainer uses "
        r"critic=SGD, generator=Adam",
    ):
        other.fit(_gan.real_data(32), epochs=2, batch_size=16, verbose=0)
    same = _gan_trainer(checkpoint_dir=tmp_path)
    same.fit(_gan.real_data(32), epochs=2, batch_size=16, verbose=0)
    assert same.restored_from.endswith("ckpt-2") and same.global_step == 4


def test_keras_callbacks_need_exactly_one_keras_model():
    with pytest.raises(
        TypeError, match=r"train one keras.Model .* trains 2 models \(generator, critic\)"
    ):
        _gan_trainer(callbacks=[keras.callbacks.TerminateOnNaN()])
    one = tapekit.Trainer(
        models={"net": _gan.mlp(1, "net")},
        step=lambda ctx, batch: {"n": 0.0},
        optimizers={"net": keras.optimizers.SGD()},
        callbacks=[keras.callbacks.TerminateOnNaN()],
        logdir=False,
    )
    assert one.callbacks[0].model is one.models["net"]


def test_predict_with_several_models_needs_the_name():
    trainer = _gan_trainer()
    z = np.random.default_rng(0).normal(size=(7, 2)).astype("float32")
    with pytest.raises(ValueError, match=r"predict needs model=<name> .*'generator', 'critic'"):
        trainer.predict(z, batch_size=4)
    with pytest.raises(ValueError, match=r"predict\(model='gen'\) names no model"):
        trainer.predict(z, batch_size=4, model="gen")
    out = trainer.predict(z, batch_size=4, model="generator")
    expected = trainer.models["generator"](z, training=False).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert trainer.predict(z, batch_size=3, model="critic").shape == (7, 1)


def test_weights_of_several_models_are_all_variables():
    trainer = _gan_trainer()
    assert [id(v) for v in trainer.weights] == [id(v) for v in trainer.variables]
    values = [np.full(w.shape, 0.5, w.dtype) for w in trainer.get_weights()]
    trainer.set_weights(values)
    assert all(np.all(w == 0.5) for w in trainer.get_weights())
    with pytest.raises(ValueError, match=r"set_weights needs \d+ arrays .* got 1"):
        trainer.set_weights(values[:1])


def test_sigterm_in_a_custom_step_saves_the_exact_step_and_resumes(tmp_path):
    data = _gan.real_data(64)  # 4 steps per epoch
    reference = _gan_trainer(checkpoint_dir=tmp_path / "ref")
    reference.fit(data, epochs=2, batch_size=16, verbose=0)
    run = _gan_trainer(checkpoint_dir=tmp_path / "run", callbacks=[SignalAt(6, signal.SIGTERM)])
    with pytest.raises(Preempted) as info:
        run.fit(data, epochs=2, batch_size=16, verbose=0)
    assert info.value.code == 42 and info.value.checkpoint.endswith("ckpt-6")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = _gan_trainer(checkpoint_dir=tmp_path / "run")
    rest = resumed.fit(data, epochs=2, batch_size=16, verbose=0)
    assert resumed.restored_from.endswith("ckpt-6") and rest.epochs == [1]
    assert resumed.global_step == reference.global_step == 8
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # same RNG stream and data position: bitwise


def test_fit_with_nothing_left_warns_at_the_call_for_a_custom_step():
    trainer = _gan_trainer()
    trainer.fit(_gan.real_data(32), epochs=1, batch_size=16, verbose=0)
    with pytest.warns(UserWarning, match=r"fit\(epochs=1\) has nothing to train") as caught:
        empty = trainer.fit(_gan.real_data(32), epochs=1, batch_size=16, verbose=0)
    assert empty.epochs == [] and empty.step == trainer.global_step == 2
    assert caught[0].filename == __file__
