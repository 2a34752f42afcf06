"""Where a continued or resumed Trainer.fit goes on: the same step and the next example.

A run continued in the same process (after fit returned or raised) and a run resumed from a
real checkpoint both equal an uninterrupted run bitwise; a checkpoint records what its data
position counts and a resume with other data is refused mid-epoch, or starts the new data at an
epoch boundary; empty and exhausted data and a loss_fn returning None give clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tapekit


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


def _build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )


def mse(model, batch):
    return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)


def _trainer(**kw) -> tapekit.Trainer:
    kw.setdefault("seed", 4)
    kw.setdefault("logdir", False)
    return tapekit.Trainer(_build, mse, **kw)


def _equal(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def _reference(epochs: int = 3, **fit_kw) -> tuple[tapekit.Trainer, tapekit.History]:
    trainer = _trainer()
    history = trainer.fit(_data(), epochs=epochs, batch_size=16, verbose=0, **fit_kw)
    return trainer, history


class _Interrupt(tapekit.Callback):
    """Raises KeyboardInterrupt once, after the given step (as Ctrl-C in the loop would)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.fired = at, False

    def on_step_end(self, step, logs=None):
        if step == self.at and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_fit_one_epoch_then_three_equals_fit_three():
    ref, ref_hist = _reference()
    trainer = _trainer()
    first = trainer.fit(_data(), epochs=1, batch_size=16, verbose=0)  # shuffled every epoch
    rest = trainer.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert first.epochs == [0] and rest.epochs == [1, 2] and trainer.global_step == 12
    _equal(trainer.get_weights(), ref.get_weights())
    np.testing.assert_array_equal(first["loss"] + rest["loss"], ref_hist["loss"])


def test_fits_on_one_dataset_continue_its_stream_without_replaying_it():
    # A reshuffling dataset that counts the examples its pipeline produces: a continued fit
    # goes on with the same iterator (an uninterrupted stream), it does not rebuild the stream
    # and replay the batches consumed so far; a stopped one (max steps) continues exactly too.
    produced = tf.Variable(0, dtype=tf.int64)

    def counted(x, y):
        produced.assign_add(1)
        return x, y

    options = tf.data.Options()  # no reading ahead: `produced` counts the batches pulled
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False

    def dataset() -> tf.data.Dataset:  # each object has its own shuffle seed stream
        return (
            tf.data.Dataset.from_tensor_slices(_data())
            .shuffle(64, seed=1, reshuffle_each_iteration=True)
            .map(counted)
            .batch(16)
            .with_options(options)
        )

    ref = _trainer()
    ref_hist = ref.fit(dataset(), epochs=4, verbose=0)
    trainer, ds = _trainer(), dataset()
    produced.assign(0)
    first = trainer.fit(ds, epochs=1, verbose=0)
    after_first = int(produced.numpy())
    rest = trainer.fit(ds, epochs=4, verbose=0)
    assert trainer.global_step == ref.global_step == 16
    _equal(trainer.get_weights(), ref.get_weights())
    np.testing.assert_array_equal(first["loss"] + rest["loss"], ref_hist["loss"])
    # 4 epochs of 64 examples, each produced once (a rebuilt stream would replay epoch 1).
    assert after_first == 64 and int(produced.numpy()) == 4 * 64
    # Any other data (here arrays) builds a new stream (at its first batch: a new epoch).
    with pytest.warns(UserWarning, match="training data changed"):
        again = trainer.fit(_data(), epochs=5, batch_size=16, verbose=0)
    assert again.epochs == [4] and trainer.global_step == 20


def test_the_array_stream_starts_at_any_position_without_replaying_the_batches_before():
    from tapekit.training.data import array_stream

    x = {"a": np.arange(10), "b": np.arange(10) * 10.0}  # 4 batches of 3 per pass (3, 3, 3, 1)
    full = [b for b in array_stream(x, batch_size=3, shuffle=True, seed=5).take(12)]
    for k in range(12):  # the stream built at position k is the full stream from batch k on
        (first,) = array_stream(x, batch_size=3, shuffle=True, seed=5, start=k).take(1)
        np.testing.assert_array_equal(first["a"], full[k]["a"])
        np.testing.assert_array_equal(first["b"], full[k]["b"])
    passes = [np.concatenate([b["a"].numpy() for b in full[i : i + 4]]) for i in (0, 4, 8)]
    for p in passes:  # every pass is all examples once, in an order of its own
        assert sorted(p.tolist()) == list(range(10)) and p.tolist() != list(range(10))
    assert passes[0].tolist() != passes[1].tolist() != passes[2].tolist()
    # Position 10^12 (a replay would take days): a batch of that pass, right away.
    (far,) = array_stream(x, batch_size=3, shuffle=True, seed=5, start=4 * 10**12 + 3).take(1)
    assert far["a"].shape == (1,) and 0 <= int(far["a"][0]) < 10


def test_fit_continues_exactly_after_an_exception_inside_it():
    ref, ref_hist = _reference()
    stop = _Interrupt(6)  # epoch 2, step 2 of 4
    trainer = _trainer(callbacks=[stop])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert trainer.global_step == 6 and trainer.epoch == 1
    rest = trainer.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert rest.epochs == [1, 2]
    _equal(trainer.get_weights(), ref.get_weights())
    np.testing.assert_array_equal(rest["loss"], ref_hist["loss"][1:])  # epoch 2's mean, too


def test_resume_from_a_checkpoint_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    ref, _ = _reference()
    first = _trainer(checkpoint_dir=tmp_path, checkpoint_every=3, callbacks=[_Interrupt(7)])
    with pytest.raises(KeyboardInterrupt):
        first.fit(_data(), epochs=3, batch_size=16, verbose=0)  # newest checkpoint: ckpt-6
    resumed = _trainer(checkpoint_dir=tmp_path, checkpoint_every=3)
    resumed.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert resumed.restored_from.endswith("ckpt-6") and resumed.global_step == 12
    _equal(resumed.get_weights(), ref.get_weights())


def test_a_resume_with_another_batch_size_mid_epoch_is_refused(tmp_path):
    first = _trainer(checkpoint_dir=tmp_path, checkpoint_every=2)
    first.fit(_data(), epochs=1, batch_size=16, steps_per_epoch=4, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        _trainer(checkpoint_dir=tmp_path, checkpoint_every=2, callbacks=[_Interrupt(6)]).fit(
            _data(), epochs=2, batch_size=16, verbose=0
        )  # newest checkpoint: ckpt-6, epoch 2 step 2 of 4
    again = _trainer(checkpoint_dir=tmp_path)
    with pytest.raises(
        ValueError,
        match=r"middle of epoch 2: the data position \(6 batches\) was recorded for other data "
        r"\(batch_size 16 -> 8, batches_per_epoch 4 -> 8, steps_per_epoch 4 -> 8\).*same data, "
        r"batch_size.*new checkpoint_dir",
    ):
        again.fit(_data(), epochs=2, batch_size=8, verbose=0)
    assert again.global_step == 6  # nothing trained
    with pytest.raises(ValueError, match=r"examples 64 -> 48"):
        _trainer(checkpoint_dir=tmp_path).fit(_data(48), epochs=2, batch_size=16, verbose=0)


def test_other_data_at_an_epoch_boundary_starts_at_its_first_batch(tmp_path):
    first = _trainer(checkpoint_dir=tmp_path)
    first.fit(_data(), epochs=1, batch_size=16, verbose=0)
    resumed = _trainer(checkpoint_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"batch_size 16 -> 32.*epoch 2 starts at the new data"):
        history = resumed.fit(_data(), epochs=2, batch_size=32, shuffle=False, verbose=0)
    assert resumed.global_step == 4 + 2 and history.epochs == [1]
    # The same in one process: continuing with other data behaves as resuming with it.
    same = _trainer()
    same.fit(_data(), epochs=1, batch_size=16, verbose=0)
    with pytest.warns(UserWarning, match="epoch 2 starts at the new data's first batch"):
        same.fit(_data(), epochs=2, batch_size=32, shuffle=False, verbose=0)
    _equal(resumed.get_weights(), same.get_weights())
    # ... and as a fresh run over that data from its first batch, from the epoch-1 weights.
    fresh = _trainer()
    fresh.fit(_data(), epochs=1, batch_size=16, verbose=0)
    x, y = _data()
    for i in (0, 1):  # unshuffled batches 0 and 1 of size 32
        fresh.step((x[32 * i : 32 * i + 32], y[32 * i : 32 * i + 32]))
    _equal(resumed.get_weights()[:4], fresh.get_weights()[:4])


def test_empty_and_exhausted_data_give_clear_errors():
    trainer = _trainer()
    empty = tf.data.Dataset.from_tensor_slices(_data()).batch(8).take(0)
    with pytest.raises(ValueError, match="has no batches.*empty dataset"):
        trainer.fit(empty, verbose=0)
    with pytest.raises(ValueError, match="has no batches"):
        trainer.fit((np.zeros((0, 3), "float32"), np.zeros((0, 1), "float32")), batch_size=4)
    filtered = tf.data.Dataset.from_tensor_slices(_data()).filter(lambda x, y: False).batch(8)
    with pytest.raises(ValueError, match=r"ran out at step 0 .*empty.*filter"):
        trainer.fit(filtered, steps_per_epoch=3, verbose=0)
    assert trainer.global_step == 0


def test_loss_fn_returning_none_names_the_function_and_the_fix():
    def forgot_return(model, batch):
        tf.reduce_mean((model(batch[0]) - batch[1]) ** 2)

    trainer = tapekit.Trainer(_build, forgot_return, logdir=False)
    with pytest.raises(
        TypeError,
        match=r"`forgot_return` \(the Trainer's loss_fn\) returned None.*"
        r"Add `return loss`",
    ):
        trainer.fit(_data(), batch_size=16, verbose=0)
