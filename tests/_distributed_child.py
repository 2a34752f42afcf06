"""Worker process of the multi-worker tests of tapekit.Trainer (tests/test_distributed.py).

    python _distributed_child.py --out OUT --ckpt DIR --logdir DIR [--epochs N] [--clip-norm C]

Started by ``tapekit.training.cluster.run_local_workers``: ``TF_CONFIG`` describes the cluster
and ``TAPEKIT_WORKER_INDEX`` is this worker's index; ``{task}`` in a path is replaced by it. The
worker trains the model and data defined here (the test trains the same in one process) under
``MultiWorkerMirroredStrategy`` and saves weights, reported losses and metrics to ``OUT``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402  (importing tapekit must leave TF uninitialised for the strategy)

GLOBAL_BATCH = 16


def data(n: int = 70) -> tuple[np.ndarray, np.ndarray]:
    """70 examples: 4 full batches of 16 and a partial one of 6 per epoch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x @ np.arange(1.0, 5.0, dtype="float32") - 0.5)[:, None]


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def mse(model, batch):
    x, y = batch
    return tf.reduce_mean((model(x, training=True) - y) ** 2)


def trainer_kwargs(clip_norm: float | None) -> dict:
    """Trainer options shared by the workers and the single-process reference (call it inside
    the strategy's scope: it creates the optimizer). SGD, unlike Adam, shows any error in the
    gradient's scale, e.g. a gradient summed over the replicas twice."""
    return dict(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        metrics=["mae"],
        seed=0,
        clip_norm=clip_norm,
        log_every=1,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--clip-norm", type=float, default=None)
    args = parser.parse_args()
    task = os.environ["TAPEKIT_WORKER_INDEX"]
    # The strategy must exist before TensorFlow runs anything else.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        kwargs = trainer_kwargs(args.clip_norm)
    trainer = tapekit.Trainer(
        build,
        mse,
        strategy=strategy,
        checkpoint_dir=args.ckpt.format(task=task),
        logdir=args.logdir.format(task=task),
        **kwargs,
    )
    history = trainer.fit(data(), epochs=args.epochs, batch_size=GLOBAL_BATCH, shuffle=True)
    trainer.close()
    np.savez(
        args.out.format(task=task),
        *trainer.get_weights(),
        loss=np.array(history["loss"]),
        mae=np.array(history["mean_absolute_error"]),
        step=trainer.global_step,
        replicas=strategy.num_replicas_in_sync,
        restored=str(trainer.restored_from),
    )


if __name__ == "__main__":
    main()
