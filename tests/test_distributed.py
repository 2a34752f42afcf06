"""tapekit.Trainer under tf.distribute: MirroredStrategy over the 2 logical CPUs of conftest.py
against one device, clipping of the aggregated gradient, logging, float16 loss scaling, resume,
and MultiWorkerMirroredStrategy with 2 real local worker processes (cluster.run_local_workers).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import _distributed_child as child
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tapekit
from tapekit.training.cluster import run_local_workers

CHILD = Path(__file__).with_name("_distributed_child.py")


def _trainer(strategy=None, *, clip_norm=None, **kw) -> tapekit.Trainer:
    """The workers' model, loss and options (SGD with momentum), under ``strategy``."""
    with (strategy or tf.distribute.get_strategy()).scope():
        options = child.trainer_kwargs(clip_norm)
    options.update({"logdir": False, **kw})
    return tapekit.Trainer(child.build, child.mse, strategy=strategy, **options)


def _fit(trainer: tapekit.Trainer, epochs: int = 2, **kw) -> tapekit.History:
    kw.setdefault("shuffle", True)
    return trainer.fit(child.data(), epochs=epochs, batch_size=child.GLOBAL_BATCH, verbose=0, **kw)


def _close(a: list[np.ndarray], b: list[np.ndarray], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, atol=atol, rtol=0)


def _scalars(path: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(path), size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


# -- MirroredStrategy over 2 logical CPUs ---------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"steps_per_execution": 1},
        {"steps_per_execution": 3, "accumulate_steps": 2},
        {},
        {"on_nonfinite": None},
    ],
    ids=["one-step-calls", "3-steps-per-call-accumulate-2", "auto", "unchecked"],
)
def test_mirrored_equals_one_device_weights_loss_and_metrics(kw, mirrored_strategy):
    val = child.data(24)
    one = _trainer(**kw)
    two = _trainer(mirrored_strategy, **kw)
    assert two._steps.replicas == 2
    h1 = _fit(one, validation_data=val)
    h2 = _fit(two, validation_data=val)
    _close(one.get_weights(), two.get_weights())
    for key in ("loss", "mean_absolute_error", "val_loss", "val_mean_absolute_error"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, err_msg=key)
    assert one.global_step == two.global_step == (5 if "accumulate_steps" not in kw else 2) * 2


def test_clipping_under_a_strategy_clips_the_aggregated_gradient(mirrored_strategy):
    x = np.array([[0.1, 0.2], [0.3, -0.1], [-0.2, 0.1], [0.1, 0.1]] * 2, "float32")
    x[4:] *= 30.0  # replica 1's half of the batch: much larger local gradient
    y = np.array([[1.0], [-1.0], [0.5], [2.0], [1.0], [3.0], [-2.0], [0.0]], "float32")
    w0 = np.array([[0.5], [-0.5]], "float32")

    def loss(p, batch):
        return tf.reduce_mean((batch[0] @ p - batch[1]) ** 2)

    def grad(rows):  # gradient of the GLOBAL mean loss restricted to some rows
        err = x[rows] @ w0 - y[rows]
        return 2.0 * x[rows].T @ err / len(x)

    g = grad(slice(0, 8))
    halves = [grad(slice(0, 4)), grad(slice(4, 8))]  # what each replica computes
    for kw, expected, per_replica in (
        (
            {"clip_norm": 1.0},
            g / np.linalg.norm(g),
            sum(h * min(1.0, 1.0 / np.linalg.norm(h)) for h in halves),
        ),
        (
            {"clip_norm": 1.0, "on_nonfinite": None},  # unchecked: the norm is still global
            g / np.linalg.norm(g),
            sum(h * min(1.0, 1.0 / np.linalg.norm(h)) for h in halves),
        ),
        ({"clip_value": 0.5}, np.clip(g, -0.5, 0.5), sum(np.clip(h, -0.5, 0.5) for h in halves)),
    ):
        assert np.abs(expected - per_replica).max() > 0.1  # the test can tell them apart
        results = []
        for strategy in (None, mirrored_strategy):
            with (strategy or tf.distribute.get_strategy()).scope():
                p = tf.Variable(w0)
                sgd = keras.optimizers.SGD(1.0)
            trainer = tapekit.Trainer(p, loss, optimizer=sgd, strategy=strategy, logdir=False, **kw)
            trainer.step((x, y))
            results.append(p.numpy())
        one, two = results
        np.testing.assert_allclose(one, w0 - expected, atol=1e-5)
        np.testing.assert_allclose(two, w0 - expected, atol=1e-5)


def test_nonfinite_in_one_replica_stops_or_skips_every_replica(mirrored_strategy):
    x, y = child.data(64)
    x[40] = np.nan  # step 2 (examples 32..47): in replica 1's half of that batch
    runs = [_trainer(s, on_nonfinite="skip") for s in (None, mirrored_strategy)]
    for trainer in runs:
        trainer.fit((x, y), epochs=1, batch_size=16, shuffle=False, verbose=0)
        assert trainer.skipped_steps == 1 and trainer.global_step == 4
    _close(runs[0].get_weights(), runs[1].get_weights())
    strict = _trainer(mirrored_strategy)
    with pytest.raises(tapekit.NonFiniteError, match="at step 2 in the loss"):
        strict.fit((x, y), epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert strict.global_step == 2 and all(np.isfinite(w).all() for w in strict.get_weights())


def test_mirrored_logs_the_aggregated_gradient_like_one_device(mirrored_strategy, tmp_path):
    runs = {}
    for name, strategy in (("one", None), ("two", mirrored_strategy)):
        trainer = _trainer(strategy, logdir=tmp_path / name, histogram_every=3)
        _fit(trainer, epochs=1, shuffle=False)
        trainer.close()
        runs[name] = {
            tag: _scalars(tmp_path / name / "train", tag)
            for tag in ("step/loss", "gradient_norm/global", "epoch/loss")
        }
    for tag, values in runs["one"].items():
        assert sorted(values) == sorted(runs["two"][tag]), tag
        np.testing.assert_allclose(
            [runs["two"][tag][s] for s in sorted(values)],
            [values[s] for s in sorted(values)],
            rtol=1e-5,
            err_msg=tag,
        )
    assert sorted(runs["two"]["gradient_norm/global"]) == [0, 1, 2, 3, 4]


def test_mirrored_resumes_from_its_checkpoints(mirrored_strategy, tmp_path):
    straight = _trainer(mirrored_strategy)
    _fit(straight, epochs=3)
    first = _trainer(mirrored_strategy, checkpoint_dir=tmp_path, checkpoint_every=3)
    _fit(first, epochs=2)
    second = _trainer(mirrored_strategy, checkpoint_dir=tmp_path, checkpoint_every=3)
    rest = _fit(second, epochs=3)
    assert second.restored_from.endswith("ckpt-10") and rest.epochs == [2]
    _close(straight.get_weights(), second.get_weights(), atol=1e-6)
    assert second.global_step == 15


def _float16_trainer(strategy, scale: float) -> tapekit.Trainer:
    def build() -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])

    def loss_fn(model, batch):
        return tf.reduce_mean((tf.cast(model(batch[0]), tf.float32) - batch[1]) ** 2)

    with (strategy or tf.distribute.get_strategy()).scope():
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=scale)
    return tapekit.Trainer(
        build,
        loss_fn,
        optimizer=opt,
        strategy=strategy,
        mixed_precision="mixed_float16",
        logdir=False,
        seed=0,
    )


def test_mixed_float16_under_mirrored(mirrored_strategy):
    x, y = child.data(64)
    one, two = (_float16_trainer(s, 2.0**8) for s in (None, mirrored_strategy))
    h1, h2 = (t.fit((x, y), epochs=3, batch_size=16, shuffle=False, verbose=0) for t in (one, two))
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-2)
    _close(one.get_weights(), two.get_weights(), atol=2e-3)
    # Only replica 1's half overflows float16 in its local (scaled) gradient: every replica
    # must skip the step and halve the scale, like one device seeing the whole batch.
    x8, y8 = x[:8].copy(), y[:8].copy()
    x8[4:] = 300.0
    for trainer in (one, two):
        before, scale = trainer.get_weights(), float(trainer.optimizer.dynamic_scale.numpy())
        trainer.step((x8, y8))
        _close(before, trainer.get_weights(), atol=0)
        assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2


# -- MultiWorkerMirroredStrategy: 2 real worker processes -----------------------------------------


def _workers(tmp: Path, out: str, ckpt: str, logdir: str, *args: str) -> list[dict]:
    """Run the child on a local 2-worker cluster; each worker's saved results."""
    scratch = tmp / "worker_tmp"  # the workers' TMPDIR: their private checkpoints go there
    scratch.mkdir(exist_ok=True)
    results = run_local_workers(
        [sys.executable, str(CHILD), "--out", out, "--ckpt", ckpt, "--logdir", logdir, *args],
        2,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(scratch)},
        timeout=150,
    )
    for r in results:
        assert r.returncode == 0, f"worker {r.index} failed:\n{r.output[-4000:]}"
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("__autograph")]
    assert left == [], f"temporary files left by the workers: {left}"
    saved = []
    for i, r in zip(range(2), results):
        with np.load(out.format(task=i)) as f:
            saved.append({k: f[k] for k in f.files} | {"console": r.output})
    return saved


def _weights(saved: dict) -> list[np.ndarray]:
    return [saved[f"arr_{i}"] for i in range(len([k for k in saved if k.startswith("arr_")]))]


@pytest.fixture(scope="module")
def first_multi_worker_run(tmp_path_factory) -> dict:
    """2 epochs on 2 workers, each told its own checkpoint and log directory (as on hosts with
    local disks), and the same training in this process."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    saved = _workers(
        tmp, str(tmp / "out{task}.npz"), str(tmp / "ckpt{task}"), str(tmp / "logs{task}")
    )
    written = sorted(
        p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if "worker_tmp" not in p.parts
    )
    reference = _trainer(checkpoint_dir=tmp / "reference", logdir=tmp / "reference_logs")
    history = _fit(reference)
    reference.close()
    return dict(tmp=tmp, saved=saved, written=written, reference=reference, history=history)


@pytest.mark.slow
def test_multi_worker_equals_one_process_and_only_the_chief_writes(first_multi_worker_run):
    run = first_multi_worker_run
    chief, other = run["saved"]
    assert int(chief["replicas"]) == int(other["replicas"]) == 2
    for a, b in zip(_weights(chief), _weights(other), strict=True):
        np.testing.assert_array_equal(a, b)  # the workers hold identical weights
    _close(_weights(chief), run["reference"].get_weights())
    for key, ref in (("loss", "loss"), ("mae", "mean_absolute_error")):
        np.testing.assert_allclose(chief[key], run["history"][ref], rtol=1e-5)
        np.testing.assert_array_equal(chief[key], other[key])
    assert int(chief["step"]) == int(other["step"]) == 10
    progress = re.compile(r"^epoch \d+/\d+ \| step \d+ \| loss", re.M)
    assert len(progress.findall(chief["console"])) == 2  # one line per epoch, on the chief only
    assert not progress.findall(other["console"]), other["console"][-2000:]
    written = run["written"]
    assert not [p for p in written if p.startswith(("ckpt1", "logs1"))], written
    assert {"ckpt0/checkpoint", "ckpt0/ckpt-10.index", "ckpt0/ckpt-5.index"} <= set(written)
    assert [p for p in written if p.startswith("logs0/train/events.out.tfevents")]
    for tag in ("step/loss", "gradient_norm/global"):  # log_every=1: every step, once
        logged = _scalars(run["tmp"] / "logs0" / "train", tag)
        expected = _scalars(run["tmp"] / "reference_logs" / "train", tag)
        assert sorted(logged) == sorted(expected) == list(range(10))
        np.testing.assert_allclose(
            [logged[s] for s in range(10)], [expected[s] for s in range(10)], rtol=1e-5
        )


@pytest.mark.slow
def test_multi_worker_resumes_with_clipping_from_the_chiefs_checkpoints(first_multi_worker_run):
    run = first_multi_worker_run
    tmp = run["tmp"]
    # A restart where worker 1 cannot see the chief's checkpoints fails on both, saying why.
    results = run_local_workers(
        [sys.executable, str(CHILD), "--out", str(tmp / "bad{task}.npz")]
        + ["--ckpt", str(tmp / "ckpt{task}"), "--logdir", str(tmp / "logs0"), "--epochs", "3"],
        2,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=150,
    )
    for r, found in zip(results, ("ckpt-10", "no checkpoint"), strict=True):
        assert r.returncode != 0
        assert re.search(
            r"CheckpointError: Every worker must resume from the same checkpoint, but the "
            rf"workers restored different ones \(ckpt-10, none\); this is worker {r.index}, "
            rf"which found {found} in .*ckpt{r.index}\. Put checkpoint_dir on storage every "
            r"worker reads \(a shared filesystem",
            r.output,
        ), r.output[-3000:]
    assert not (tmp / "ckpt1").exists()
    # With the checkpoint directory shared by both, they resume and add a clipped epoch.
    norms = _scalars(tmp / "logs0" / "train", "gradient_norm/global")
    assert min(norms[s] for s in range(5, 10)) > 2.0  # so clip_norm=2 clips every step
    shared = str(tmp / "ckpt0")
    saved = _workers(
        tmp, str(tmp / "resumed{task}.npz"), shared, str(tmp / "logs0"), "--epochs", "3",
        "--clip-norm", "2.0",
    )  # fmt: skip
    assert [s["restored"].item() for s in saved] == [os.path.join(shared, "ckpt-10")] * 2
    reference = _trainer(clip_norm=2.0, checkpoint_dir=tmp / "reference")
    history = _fit(reference, epochs=3)
    assert reference.restored_from.endswith("ckpt-10")
    for a, b in zip(_weights(saved[0]), _weights(saved[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    _close(_weights(saved[0]), reference.get_weights())
    np.testing.assert_allclose(saved[0]["loss"], history["loss"], rtol=1e-5)
    assert int(saved[0]["step"]) == int(saved[1]["step"]) == 15
    assert os.path.exists(os.path.join(shared, "ckpt-15.index"))
