"""Train the MLP data-parallel with tf.distribute: MirroredStrategy on N devices or N workers.

The classifier of recipe 06 (synthetic data, nothing downloaded), trained by `tapekit.Trainer`
under one of TensorFlow's own distribution strategies. Every replica holds a copy of the model
and gets its slice of each GLOBAL batch; the Trainer averages the loss over the global batch,
all-reduces the gradients, clips them after that, and reduces the reported loss and accuracy
over all replicas, so the result is the training of one device with the same global batch.

* Default: `MirroredStrategy` over `--devices N` logical CPU devices of this process (the CPU is
  split into N logical devices before TensorFlow initialises).
* `--workers N`: starts N local worker processes (this script with `--worker`), each with its own
  `TF_CONFIG` on 127.0.0.1 free ports; they form a cluster and train with
  `MultiWorkerMirroredStrategy`. Worker 0 is the chief: only it prints progress and writes the
  TensorBoard logs and checkpoints. Every worker reports a checksum of its final weights: they
  are identical.
* `--worker`: one worker of a cluster described by `TF_CONFIG`; this is how the same script runs
  on real hosts (one `TF_CONFIG` per host, see the README).

Run `python3 dev.py run 10` or `python3 dev.py run 10 --workers 2`, then
`python3 dev.py board logs/10_distributed`.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tapekit
from tapekit.training.cluster import run_local_workers
from tapekit.training.distribution import is_chief, task_name

from _common import classification_data, logs_hint

CLASSES, FEATURES = 10, 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--devices", type=int, default=2, help="logical CPU devices (default 2)")
    where.add_argument("--workers", type=int, default=0, help="local worker processes to start")
    where.add_argument(
        "--worker", action="store_true", help="run as one worker of the TF_CONFIG cluster"
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs (default 4)")
    parser.add_argument("--batch-size", type=int, default=256, help="GLOBAL examples per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--examples", type=int, default=8000, help="training examples")
    parser.add_argument("--hidden", type=int, default=64, help="units per hidden layer")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffle")
    parser.add_argument("--logdir", default="logs/10_distributed", help="run directory (chief)")
    parser.add_argument("--resume", action="store_true", help="continue from <logdir>/checkpoints")
    parser.add_argument("--result-file", help=argparse.SUPPRESS)  # set by --workers
    args = parser.parse_args(argv)
    if args.devices < 1 or args.workers < 0 or args.workers == 1:
        parser.error("--devices needs N >= 1 and --workers N >= 2")
    return args


def build_model(hidden: int) -> keras.Model:
    """A 32-h-h-10 MLP; the Trainer calls this inside the strategy's scope (one copy per
    replica, kept in sync by the strategy)."""
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden_1"),
            keras.layers.Dense(hidden, activation="relu", name="hidden_2"),
            keras.layers.Dense(CLASSES, name="logits"),
        ],
        name="mlp",
    )


def loss_fn(model: keras.Model, batch: tuple, training: bool) -> tuple[tf.Tensor, dict]:
    """Mean cross-entropy over THIS replica's examples; the Trainer weights it by the replica's
    share of the global batch. y_true/y_pred feed the accuracy metric."""
    x, y = batch
    logits = model(x, training=training)
    loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return tf.reduce_mean(loss), {"y_true": y, "y_pred": logits}


def checksum(weights: list[np.ndarray]) -> tuple[float, str]:
    """The sum of all weights and a SHA-256 prefix of their bytes (equal bytes, equal hash)."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights))
    return float(sum(np.sum(w, dtype=np.float64) for w in weights)), digest.hexdigest()[:12]


def train(strategy: tf.distribute.Strategy, args: argparse.Namespace) -> dict:
    """Train and test under ``strategy`` (every worker of a cluster runs this)."""
    started = time.perf_counter()
    x, y = classification_data(args.examples + 4000, args.seed, CLASSES, FEATURES)
    train_data, val = (x[:-4000], y[:-4000]), (x[-4000:-2000], y[-4000:-2000])
    with strategy.scope():  # the optimizer's variables must live in the strategy
        optimizer = keras.optimizers.Adam(args.lr)
    trainer = tapekit.Trainer(
        lambda: build_model(args.hidden),
        loss_fn,
        optimizer=optimizer,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        clip_norm=5.0,  # applied to the gradient aggregated over all replicas
        strategy=strategy,
        checkpoint_dir=Path(args.logdir) / "checkpoints",  # written by the chief only
        logdir=args.logdir,  # likewise
        seed=args.seed,
        name="10_distributed",
    )
    history = trainer.fit(
        train_data, epochs=args.epochs, batch_size=args.batch_size, validation_data=val
    )
    test = trainer.evaluate((x[-2000:], y[-2000:]), batch_size=1000)
    trainer.close()
    total, digest = checksum(trainer.get_weights())
    return {
        "task": task_name(strategy),
        "chief": is_chief(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "epochs": len(history.epochs),
        "steps": trainer.global_step,
        "restored_from": trainer.restored_from,
        "loss": history["loss"][-1] if history.epochs else float("nan"),
        "val_acc": history["val_acc"][-1] if history.epochs else float("nan"),
        "test_acc": test["acc"],
        "test_loss": test["loss"],
        "weight_sum": total,
        "sha256": digest,
        "seconds": time.perf_counter() - started,
    }


def describe(result: dict) -> str:
    return (
        f"final loss {result['loss']:.4f}, val_acc {result['val_acc']:.3f} | test acc "
        f"{result['test_acc']:.3f}, test loss {result['test_loss']:.4f} | weights: sum "
        f"{result['weight_sum']:.6f}, sha256 {result['sha256']}"
    )


def run_mirrored(args: argparse.Namespace) -> int:
    """MirroredStrategy over ``--devices`` logical CPUs of this process."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.devices)]
    )  # must happen before TensorFlow initialises (nothing has run yet)
    devices = [f"/cpu:{i}" for i in range(args.devices)]
    strategy = tf.distribute.MirroredStrategy(devices)
    if not args.resume:  # a fresh run replaces the previous run's logs and checkpoints
        shutil.rmtree(args.logdir, ignore_errors=True)
    per = args.batch_size / args.devices
    print(
        f"MirroredStrategy over {args.devices} logical CPU devices ({', '.join(devices)}): "
        f"{strategy.num_replicas_in_sync} replicas, global batch {args.batch_size} = "
        f"{args.devices} x {per:g}; logs and checkpoints in {args.logdir}"
    )
    result = train(strategy, args)
    if result["restored_from"]:
        print(f"resumed from {result['restored_from']}")
    print(
        f"done: {result['epochs']} epochs, {result['steps']} steps in {result['seconds']:.1f} s"
        f" on {result['replicas']} replicas | {describe(result)}"
    )
    print(logs_hint(args.logdir))
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """One worker of the ``TF_CONFIG`` cluster (the same program runs in every worker)."""
    if "TF_CONFIG" not in os.environ:
        print(
            "--worker needs the TF_CONFIG environment variable (the cluster and this worker's "
            "task; see the module docstring), but it is not set. Set it on every host, or use "
            "--workers N to start N local workers.",
            file=sys.stderr,
        )
        return 2
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: before any other TF op
    chief = is_chief(strategy)
    if chief and not args.resume:  # before the model is built: the other workers wait for it
        shutil.rmtree(args.logdir, ignore_errors=True)
    if chief:
        workers = json.loads(os.environ["TF_CONFIG"])["cluster"].get("worker", [])
        print(
            f"MultiWorkerMirroredStrategy over {len(workers)} workers ({', '.join(workers)}): "
            f"{strategy.num_replicas_in_sync} replicas, global batch {args.batch_size}; "
            f"chief logs and checkpoints in {args.logdir}"
        )
    result = train(strategy, args)
    if args.result_file:
        Path(args.result_file.format(task=os.environ.get("TAPEKIT_WORKER_INDEX", "0"))).write_text(
            json.dumps(result)
        )
    else:
        print(f"{result['task']}: {describe(result)}")
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    """Start ``--workers`` local processes of this script in worker mode and compare them."""
    print(f"starting {args.workers} local workers (TF_CONFIG on 127.0.0.1 free ports)")
    started = time.perf_counter()
    options = ["epochs", "batch_size", "lr", "examples", "hidden", "seed", "logdir"]
    command = [sys.executable, os.path.abspath(__file__), "--worker"]
    for name in options:
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    command += ["--resume"] if args.resume else []
    with tempfile.TemporaryDirectory(prefix="tapekit-10-") as tmp:
        result_file = os.path.join(tmp, "worker-{task}.json")
        runs = run_local_workers(
            [*command, "--result-file", result_file], args.workers, echo=0, timeout=600
        )
        failed = [r for r in runs if r.returncode != 0]
        for r in failed:
            print(f"worker {r.index} failed (exit code {r.returncode}):\n{r.output[-3000:]}")
        if failed:
            return 1
        results = [
            json.loads(Path(result_file.format(task=i)).read_text()) for i in range(len(runs))
        ]
    if results[0]["restored_from"]:
        print(f"resumed from {results[0]['restored_from']}")
    for r in results:
        name = f"{r['task']}{' (chief)' if r['chief'] else ''}"
        print(f"{name:18} {describe(r)}")
    same = len({r["sha256"] for r in results}) == 1
    print(
        f"done: {results[0]['epochs']} epochs, {results[0]['steps']} steps on "
        f"{results[0]['replicas']} replicas in {time.perf_counter() - started:.1f} s | all "
        f"{len(results)} workers hold identical weights: {'yes' if same else 'NO'}"
    )
    print(logs_hint(args.logdir))
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.workers:
        return run_cluster(args)
    return run_mirrored(args)


if __name__ == "__main__":
    raise SystemExit(main())
