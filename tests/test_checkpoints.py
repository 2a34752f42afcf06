"""Trainer checkpoints on disk: resume in a new Trainer, corrupt-file fallback, non-finite steps
leave the last good checkpoint, and a real subprocess killed with SIGKILL resumes exactly."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from _children import kill_when_reached, run_child

import tapekit
from tapekit.training.checkpoints import Checkpoints

CHILD = Path(__file__).with_name("_training_child.py")


def _data(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-1.0], [2.0]], "float32"))


def _build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)]
    )


def mse(model, batch):
    return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)


def _trainer(ckpt_dir, **kw) -> tapekit.Trainer:
    kw.setdefault("seed", 5)
    return tapekit.Trainer(_build, mse, checkpoint_dir=ckpt_dir, logdir=False, **kw)


def _equal(a, b, atol=0.0) -> None:
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)


def test_new_trainer_resumes_where_the_last_stopped(tmp_path):
    straight = _trainer(tmp_path / "a")
    full = straight.fit(_data(), epochs=4, batch_size=16, verbose=0)
    first = _trainer(tmp_path / "b", checkpoint_every=3)
    first.fit(_data(), epochs=2, batch_size=16, verbose=0)
    second = _trainer(tmp_path / "b", checkpoint_every=3)
    assert second.global_step == 0  # restored lazily, at the first fit/step/evaluate
    rest = second.fit(_data(), epochs=4, batch_size=16, verbose=0)
    assert second.restored_from.endswith("ckpt-8") and rest.epochs == [2, 3]
    assert second.global_step == straight.global_step == 16
    _equal(second.get_weights(), straight.get_weights(), 1e-6)
    np.testing.assert_allclose(rest["loss"], full["loss"][2:], rtol=1e-6)
    # Slots, iteration counter and RNG came back too.
    assert int(second.optimizer.iterations.numpy()) == 16
    np.testing.assert_array_equal(second.rng.state.numpy(), straight.rng.state.numpy())


def test_own_loop_with_step_and_save_checkpoint(tmp_path):
    x, y = _data(32)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="at least one call"):
        trainer.save_checkpoint()
    for i in range(3):
        trainer.step((x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]))
    assert trainer.save_checkpoint().endswith("ckpt-3")
    again = _trainer(tmp_path)
    again.step((x[24:], y[24:]))  # restores ckpt-3 first, then steps
    assert again.global_step == 4 and int(again.optimizer.iterations.numpy()) == 4
    trainer.step((x[24:], y[24:]))  # the same fourth step in the first Trainer: equal values
    for got, want in zip(again.get_weights(), trainer.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_checkpoint_manager_keeps_the_newest(tmp_path):
    trainer = _trainer(tmp_path, keep_checkpoints=2, checkpoint_every=2)
    trainer.fit(_data(), epochs=2, batch_size=16, verbose=0)  # 4 steps/epoch: saves 2,4,6,8
    names = sorted(p.name for p in tmp_path.glob("ckpt-*.index"))
    assert names == ["ckpt-6.index", "ckpt-8.index"]


def _truncate_data_files(directory: Path, number: int) -> None:
    files = list(directory.glob(f"ckpt-{number}.data-*"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:7])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    trainer = _trainer(tmp_path, checkpoint_every=2)
    trainer.fit(_data(), epochs=1, batch_size=16, verbose=0)  # ckpt-2, ckpt-4
    reference = _trainer(tmp_path / "ref", checkpoint_every=2)
    reference.fit(_data(), epochs=1, batch_size=16, steps_per_epoch=2, verbose=0)
    _truncate_data_files(tmp_path, 4)
    resumed = _trainer(tmp_path, checkpoint_every=2)
    with pytest.warns(UserWarning, match=r"ckpt-4 could not be read.*Falling back"):
        resumed.evaluate(_data(), batch_size=16)
    assert resumed.restored_from.endswith("ckpt-2") and resumed.global_step == 2
    _equal(resumed.get_weights(), reference.get_weights())


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, checkpoint_every=2, keep_checkpoints=1)
    trainer.fit(_data(), epochs=1, batch_size=16, verbose=0)
    _truncate_data_files(tmp_path, 4)
    with (
        pytest.warns(UserWarning),
        pytest.raises(tapekit.CheckpointError, match="could be restored.*Delete the directory"),
    ):
        _trainer(tmp_path).fit(_data(), batch_size=16, verbose=0)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _trainer(tmp_path).fit(_data(), epochs=1, batch_size=16, verbose=0)
    wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(7), keras.layers.Dense(1)])
    other = tapekit.Trainer(wide, mse, checkpoint_dir=tmp_path, logdir=False)
    with pytest.raises(tapekit.CheckpointError, match="does not match.*new checkpoint_dir"):
        other.fit(_data(), batch_size=16, verbose=0)


def test_nonfinite_step_leaves_the_last_good_checkpoint(tmp_path):
    x, y = _data(64)
    x[53] = np.inf  # batch 3 (examples 48..63): steps 0-2 are fine
    trainer = _trainer(tmp_path, checkpoint_every=2)
    with pytest.raises(tapekit.NonFiniteError, match=r"at step 3 .*ckpt-2"):
        trainer.fit((x, y), batch_size=16, shuffle=False, verbose=0)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-2.index"]
    good = trainer.get_weights()  # 3 good steps applied in memory, none after
    assert all(np.isfinite(w).all() for w in good)
    restored = _trainer(tmp_path)
    restored.evaluate((x[:16], y[:16]), batch_size=16)
    assert restored.global_step == 2
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_checkpoints_wrapper_doc_example_and_candidates(tmp_path):
    v = tf.Variable(1.0)
    ckpt = Checkpoints(tmp_path, {"v": v}, keep=3)
    for step in (1, 2, 3):
        v.assign(float(step))
        ckpt.save(step)
    assert [os.path.basename(p) for p in ckpt.candidates()] == ["ckpt-3", "ckpt-2", "ckpt-1"]
    (tmp_path / "ckpt-3.index").unlink()  # a partial write: the index never made it
    v.assign(0.0)
    with pytest.warns(UserWarning, match="ckpt-3"):
        assert ckpt.restore_latest().endswith("ckpt-2")
    assert float(v.numpy()) == 2.0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_restart_matches_an_uninterrupted_run(tmp_path):
    # Uninterrupted reference and the run that gets killed, started side by side.
    ref = run_child(CHILD, tmp_path / "ref" / "ckpt", tmp_path / "ref.npz", wait=False)
    (tmp_path / "run").mkdir()
    killed = run_child(
        CHILD, tmp_path / "run" / "ckpt", tmp_path / "killed.npz", "--kill-at", "10", wait=False
    )
    kill_when_reached(
        killed, tmp_path / "run" / "reached"
    )  # step 10 is done; the last checkpoint is ckpt-8
    assert not (tmp_path / "killed.npz").exists()
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("*.index"))[-1] == "ckpt-8.index"
    run_child(CHILD, tmp_path / "run" / "ckpt", tmp_path / "resumed.npz")
    output, _ = ref.communicate(timeout=240)
    assert ref.returncode == 0, output[-3000:]
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["step"]) == int(b["step"]) == 18
    weights = [k for k in a.files if k.startswith("arr_")]
    assert len(weights) == 5  # 4 weights and the dropout seed state
    for k in weights:  # bitwise, as the README promises
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["loss"][-1], b["loss"][-1])


def test_checkpoint_dir_that_is_a_file_fails_before_the_first_step(tmp_path):
    target = tmp_path / "ckpt"
    target.write_text("not a directory")
    trainer = _trainer(target)
    with pytest.raises(tapekit.CheckpointError, match=r"must be a directory, but .*ckpt.* a file"):
        trainer.fit(_data(), batch_size=16, verbose=0)
    assert trainer.global_step == 0
    with pytest.raises(tapekit.CheckpointError, match=r"must be writable, but .*sub.*is not"):
        _trainer(target / "sub").fit(_data(), batch_size=16, verbose=0)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs the read-only /sys")
def test_read_only_checkpoint_dir_fails_before_the_first_step():
    trainer = _trainer("/sys/kernel/tapekit-ckpt")  # read-only even for root
    with pytest.raises(tapekit.CheckpointError, match="must be writable.*Pass a writable"):
        trainer.fit(_data(), batch_size=16, verbose=0)
    assert trainer.global_step == 0


def test_unwritable_checkpoint_dir_fails_before_the_first_step(tmp_path):
    tmp_path.chmod(0o500)
    try:
        trainer = _trainer(tmp_path)
        if os.geteuid() == 0:  # mode bits do not bind root: the directory IS writable for it
            trainer.fit(_data(), batch_size=16, verbose=0)
            assert list(tmp_path.glob("ckpt-*.index")), "root's checkpoint was not written"
        else:
            with pytest.raises(tapekit.CheckpointError, match="must be writable"):
                trainer.fit(_data(), batch_size=16, verbose=0)
            assert trainer.global_step == 0
    finally:
        tmp_path.chmod(0o700)


def test_checkpoint_of_another_optimizer_is_refused(tmp_path):
    _trainer(tmp_path, optimizer="adam").fit(_data(), epochs=1, batch_size=16, verbose=0)
    sgd = _trainer(tmp_path, optimizer="sgd")
    with pytest.raises(
        tapekit.CheckpointError, match=r"written with optimizer Adam, but this Trainer uses SGD"
    ):
        sgd.fit(_data(), epochs=2, batch_size=16, verbose=0)
    same = _trainer(tmp_path, optimizer=keras.optimizers.Adam(1e-3))
    same.evaluate(_data(), batch_size=16)
    assert same.restored_from.endswith("ckpt-4")


def test_temp_leftovers_of_a_killed_save_are_removed(tmp_path):
    _trainer(tmp_path).fit(_data(), epochs=1, batch_size=16, verbose=0)
    leftover = tmp_path / "ckpt-6_temp"  # what tf.train.Checkpoint leaves when killed mid-save
    leftover.mkdir()
    (leftover / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    resumed = _trainer(tmp_path)
    resumed.fit(_data(), epochs=2, batch_size=16, verbose=0)
    assert resumed.restored_from.endswith("ckpt-4") and not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "_temp" in p.name) == []
