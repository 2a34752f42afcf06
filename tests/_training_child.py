"""Child process for the kill-and-resume test of tapekit.Trainer (tests/test_checkpoints.py).

    python _training_child.py CHECKPOINT_DIR OUT.npz [--kill-at STEP | --signal-at STEP]
                              [--logdir DIR]

Trains a small seeded MLP for 3 epochs with a checkpoint every 4 steps. With ``--kill-at``, it
writes ``CHECKPOINT_DIR/../reached`` when that step is done and then waits to be killed. With
``--signal-at``, it writes ``reached`` and waits until the parent has sent a signal (SIGTERM or
SIGINT) and written ``CHECKPOINT_DIR/../go``, then carries on (and meets the stop request).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402


class WaitForSignal(tapekit.Callback):
    def __init__(self, step: int, marker: str, go: str) -> None:
        self.step, self.marker, self.go = step, marker, go

    def on_step_end(self, step, logs=None):
        if step == self.step:
            with open(self.marker, "w") as f:
                f.write(str(step))
            while not os.path.exists(self.go):  # the parent signals, then writes `go`
                time.sleep(0.05)


class Stall(tapekit.Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_step_end(self, step, logs=None):
        if step == self.step:
            with open(self.marker, "w") as f:
                f.write(str(step))
            while True:  # the parent sends SIGKILL
                time.sleep(0.05)


def build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3),
        ]
    )


def loss_fn(model, batch):
    x, y = batch
    logits = model(x, training=True)
    noise = 1e-3 * tapekit_trainer.rng.normal([])  # uses the checkpointed RNG
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    return loss + noise


def main() -> None:
    global tapekit_trainer
    parser = argparse.ArgumentParser()
    parser.add_argument("ckpt")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--signal-at", type=int, default=None)
    parser.add_argument("--logdir", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    callbacks = []
    if args.kill_at is not None:
        marker = os.path.join(os.path.dirname(args.ckpt.rstrip("/")), "reached")
        callbacks.append(Stall(args.kill_at, marker))
    if args.signal_at is not None:
        run = os.path.dirname(args.ckpt.rstrip("/"))
        marker, go = os.path.join(run, "reached"), os.path.join(run, "go")
        callbacks.append(WaitForSignal(args.signal_at, marker, go))
    tapekit_trainer = tapekit.Trainer(
        build,
        loss_fn,
        optimizer="adam",
        seed=3,
        checkpoint_dir=args.ckpt,
        checkpoint_every=4,
        callbacks=callbacks,
        logdir=args.logdir or False,
        log_every=1,
        metrics=["sparse_categorical_accuracy"],
    )
    history = tapekit_trainer.fit((x, y), epochs=3, batch_size=16, verbose=0)
    np.savez(
        args.out,
        *[v.numpy() for v in tapekit_trainer.variables],  # with the dropout seed state
        step=tapekit_trainer.global_step,
        loss=np.array(history["loss"]),
    )


tapekit_trainer = None

if __name__ == "__main__":
    main()
