"""Train an MLP classifier with tapekit.Trainer: metrics, validation, checkpoints, TensorBoard.

The main job of the README. The data are synthetic (nothing is downloaded): 10 classes, each a
cloud of points around its own centre in a 32-dimensional space, seen through a fixed random
non-linear map, so a linear model cannot separate them but a small MLP can. The script shows
what a training run with tapekit looks like:

* a model factory, so the Trainer builds it in its distribution strategy's scope;
* a `loss_fn(model, batch)` that also hands `y_true`/`y_pred` to the Keras accuracy metric
  (no second forward pass);
* validation after every epoch, early stopping that restores the best weights;
* checkpoints in `<logdir>/checkpoints` (`--resume` continues an interrupted run);
* TensorBoard logs in `<logdir>`: loss, accuracy, learning rate, steps/s, gradient norms and
  histograms, and the graph of the compiled train step.

Run it with `python3 dev.py demo` or `python3 dev.py run 06`, then open the logs with
`python3 dev.py board logs/06_mlp_classifier`.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tapekit

from _common import classification_data, logs_hint

CLASSES, FEATURES = 10, 32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12, help="maximum epochs (default 12)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--examples", type=int, default=24000, help="training examples")
    parser.add_argument("--hidden", type=int, default=128, help="units per hidden layer")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffle")
    parser.add_argument("--logdir", default="logs/06_mlp_classifier", help="run directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in <logdir>/checkpoints instead of starting afresh",
    )
    parser.add_argument(
        "--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"], default=None
    )
    return parser.parse_args(argv)


def build_model(hidden: int) -> keras.Model:
    """A 32-h-h-10 MLP with dropout; called by the Trainer inside its strategy scope."""
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden_1"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(hidden, activation="relu", name="hidden_2"),
            keras.layers.Dense(CLASSES, name="logits"),
        ],
        name="mlp",
    )


def loss_fn(model: keras.Model, batch: tuple, training: bool) -> tuple[tf.Tensor, dict]:
    """Mean cross-entropy; y_true/y_pred feed the accuracy metric from this same forward pass."""
    x, y = batch
    logits = tf.cast(model(x, training=training), tf.float32)
    loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return tf.reduce_mean(loss), {"y_true": y, "y_pred": logits}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    ckpt_dir = Path(args.logdir) / "checkpoints"
    if not args.resume:  # a fresh run replaces its own runs and checkpoints, nothing else
        for own in ("train", "validation", "checkpoints"):
            shutil.rmtree(Path(args.logdir) / own, ignore_errors=True)
    x, y = classification_data(args.examples + 4000, args.seed, CLASSES, FEATURES)
    train, val = (x[:-4000], y[:-4000]), (x[-4000:-2000], y[-4000:-2000])
    test = (x[-2000:], y[-2000:])
    print(
        f"{args.examples} training / 2000 validation / 2000 test examples, {FEATURES} features, "
        f"{CLASSES} classes; logs and checkpoints in {args.logdir}"
    )

    trainer = tapekit.Trainer(
        lambda: build_model(args.hidden),
        loss_fn,
        optimizer=keras.optimizers.Adam(args.lr),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        clip_norm=5.0,
        mixed_precision=args.mixed_precision,
        checkpoint_dir=ckpt_dir,
        callbacks=[tapekit.EarlyStopping("val_acc", patience=3, restore_best=True)],
        seed=args.seed,
        logdir=args.logdir,
        name="06_mlp_classifier",
    )
    history = trainer.fit(
        train, epochs=args.epochs, batch_size=args.batch_size, validation_data=val
    )
    result = trainer.evaluate(test, batch_size=1000)
    trainer.close()

    if trainer.restored_from:
        print(f"resumed from {trainer.restored_from}")
    if not history.epochs:
        print(f"nothing to do: the checkpoint is already at epoch {trainer.epoch}")
    else:
        best = int(np.argmax(history["val_acc"]))
        print(
            f"done: {len(history.epochs)} epochs, {history.step} steps in "
            f"{time.perf_counter() - started:.1f} s | best val_acc {history['val_acc'][best]:.3f}"
            f" (epoch {history.epochs[best] + 1}) | test acc {result['acc']:.3f}, "
            f"test loss {result['loss']:.3f}"
        )
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
