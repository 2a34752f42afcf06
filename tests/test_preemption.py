"""SIGTERM and SIGINT during ``Trainer.fit``: real signals, in this process and sent to real
subprocesses; SIGTERM saves at the exact position and exits 42, a restart resumes exactly;
SIGINT leaves the checkpoints alone and raises KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from _signals import SignalAt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit
from tapekit.training.preemption import PREEMPTION_EXIT_CODE, Preempted, StopSignals

CHILD = Path(__file__).with_name("_training_child.py")


def _data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ np.array([[1.0], [-1.0], [2.0]], "float32"))


def _build() -> keras.Model:
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)]
    )


def mse(model, batch):
    return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)


def _trainer(ckpt_dir, **kw) -> tapekit.Trainer:
    return tapekit.Trainer(
        _build, mse, optimizer="adam", checkpoint_dir=ckpt_dir, logdir=False, seed=5, **kw
    )


def test_stop_signals_restore_the_previous_handlers():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a[0]))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM wins over an earlier SIGINT
            assert stop.requested == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    with StopSignals(enabled=False) as off:
        assert signal.getsignal(signal.SIGTERM) is previous and off.requested is None


def test_sigterm_saves_at_the_exact_position_and_a_restart_resumes(tmp_path, capsys):
    reference = _trainer(tmp_path / "ref")
    full = reference.fit(_data(), epochs=3, batch_size=16, verbose=0)
    run = _trainer(tmp_path / "run", callbacks=[SignalAt(6, signal.SIGTERM)])
    with pytest.raises(Preempted) as info:
        run.fit(_data(), epochs=3, batch_size=16, verbose=1)
    assert info.value.code == PREEMPTION_EXIT_CODE == 42
    assert info.value.step == 6 and info.value.checkpoint.endswith("ckpt-6")
    assert "SIGTERM at step 6: saved" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # fit put the handler back
    names = sorted(p.name for p in (tmp_path / "run").glob("ckpt-*.index"))
    assert names == ["ckpt-4.index", "ckpt-6.index"]  # epoch end 1, then the preemption save
    resumed = _trainer(tmp_path / "run")
    rest = resumed.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert resumed.restored_from.endswith("ckpt-6") and rest.epochs == [1, 2]
    assert resumed.global_step == reference.global_step == 12
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(rest["loss"], full["loss"][1:], rtol=1e-5)


def test_sigint_leaves_the_checkpoints_and_raises_keyboard_interrupt(tmp_path):
    run = _trainer(tmp_path, callbacks=[SignalAt(6, signal.SIGINT)])
    with pytest.raises(KeyboardInterrupt, match="SIGINT at step 6"):
        run.fit(_data(), epochs=3, batch_size=16, verbose=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert run.global_step == 6  # the running execution finished; nothing was saved
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-4.index"]


def _child(ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(ckpt), str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _newest(directory: Path) -> int:
    return max(int(p.name[len("ckpt-") : -len(".index")]) for p in directory.glob("*.index"))


def _finish(proc: subprocess.Popen, code: int = 0) -> str:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == code, output[-3000:]
    return output


def _signal_when_reached(proc: subprocess.Popen, run: Path, sig: int) -> None:
    deadline = time.time() + 240
    while not (run / "reached").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the child never reached the step"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    (run / "go").write_text("go")


@pytest.mark.slow
def test_sigterm_to_a_subprocess_exits_42_and_the_restart_matches(tmp_path):
    ref = _child(tmp_path / "ref" / "ckpt", tmp_path / "ref.npz")
    run = tmp_path / "run"
    run.mkdir()
    proc = _child(run / "ckpt", tmp_path / "stopped.npz", "--signal-at", "10")
    _signal_when_reached(proc, run, signal.SIGTERM)
    _finish(proc, PREEMPTION_EXIT_CODE)
    assert not (tmp_path / "stopped.npz").exists()
    assert _newest(run / "ckpt") == 10
    _finish(_child(run / "ckpt", tmp_path / "resumed.npz"))
    _finish(ref)
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "resumed.npz")
    assert int(a["step"]) == int(b["step"]) == 18
    weights = [k for k in a.files if k.startswith("arr_")]
    assert len(weights) == 5
    for k in weights:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0)
    np.testing.assert_allclose(a["loss"][-1], b["loss"][-1], rtol=1e-5)


@pytest.mark.slow
def test_sigint_to_a_subprocess_flushes_logs_and_keeps_the_checkpoints(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    logdir = tmp_path / "logs"
    proc = _child(run / "ckpt", tmp_path / "out.npz", "--signal-at", "10", "--logdir", str(logdir))
    _signal_when_reached(proc, run, signal.SIGINT)
    output = _finish(proc, -signal.SIGINT)  # Python re-raises an uncaught Ctrl-C as SIGINT
    assert "KeyboardInterrupt: SIGINT at step 10" in output
    assert _newest(run / "ckpt") == 8
    acc = EventAccumulator(str(logdir / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    steps = [e.step for e in acc.Tensors("step/loss")]
    assert max(steps) >= 9  # the steps up to the interrupt reached the event file


def test_sigterm_under_mirrored_strategy_saves_and_resumes(tmp_path, mirrored_strategy):
    def trainer(directory, **kw):
        return tapekit.Trainer(
            _build, mse, optimizer="adam", checkpoint_dir=directory, logdir=False, seed=5,
            strategy=mirrored_strategy, **kw,
        )  # fmt: skip

    reference = trainer(tmp_path / "ref")
    reference.fit(_data(), epochs=2, batch_size=16, verbose=0)
    run = trainer(tmp_path / "run", callbacks=[SignalAt(3, signal.SIGTERM)])
    with pytest.raises(Preempted) as info:
        run.fit(_data(), epochs=2, batch_size=16, verbose=0)
    assert info.value.checkpoint.endswith("ckpt-3")
    resumed = trainer(tmp_path / "run")
    resumed.fit(_data(), epochs=2, batch_size=16, verbose=0)
    assert resumed.restored_from.endswith("ckpt-3") and resumed.global_step == 8
    for a, b in zip(resumed.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
