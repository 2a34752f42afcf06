"""Per-example gradients: find mislabelled examples by the size of their gradient.

A classifier is trained for a few epochs on synthetic data in which a few percent of the labels
were flipped to a wrong class. An example the model disagrees with pulls hard on the weights,
so its own gradient (not the batch mean) is large. `tapekit.per_example_grad_norms(loss, model)`
computes the norm of every example's gradient in one vectorized pass (what JAX writes as
`jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))`), and the examples with the largest norms are
flagged. The script prints the precision among the top k (k = the number of flipped labels)
against the k / n a random pick would get, and checks `tapekit.per_example_grads` against a
plain loop of one tape per example on a few of them.

TensorBoard (`python3 dev.py board logs/12_per_example_gradients`): histograms of the gradient
norms of all, clean and flipped examples (Histograms / Distributions), the precision (Scalars),
and the flagged indices with their norms as a table (Text).
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

from _common import logs_hint

CLASSES, FEATURES = 5, 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=4000, help="training examples")
    parser.add_argument("--flip", type=float, default=0.03, help="fraction of flipped labels")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs before ranking")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step")
    parser.add_argument("--chunk", type=int, default=500, help="examples per gradient-norm call")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and shuffle")
    parser.add_argument("--logdir", default="logs/12_per_example_gradients", help="run directory")
    return parser.parse_args(argv)


def noisy_data(n: int, flip: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable clouds around class centres; ``flip`` of the labels moved to another class.

    Returns ``(features, labels as given, indices of the flipped examples)``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(CLASSES, FEATURES))
    truth = rng.integers(0, CLASSES, size=n)
    x = centres[truth] + rng.normal(size=(n, FEATURES))
    flipped = np.sort(rng.choice(n, size=int(round(flip * n)), replace=False))
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, CLASSES, size=len(flipped))) % CLASSES
    return x.astype("float32"), labels.astype("int64"), flipped


def build_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(CLASSES, name="logits"),
        ],
        name="classifier",
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    for own in ("train", "per_example"):  # a rerun replaces its own runs, nothing else
        shutil.rmtree(Path(args.logdir) / own, ignore_errors=True)
    x, y, flipped = noisy_data(args.examples, args.flip, args.seed)
    k = len(flipped)
    print(f"{args.examples} examples, {CLASSES} classes, {k} labels flipped ({args.flip:.0%})")

    keras.utils.set_random_seed(args.seed)
    model = build_model()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def loss_fn(model: keras.Model, batch: tuple) -> tf.Tensor:
        xb, yb = batch
        return tf.reduce_mean(ce(yb, model(xb, training=True)))

    trainer = tapekit.Trainer(
        model,
        loss_fn,
        optimizer=keras.optimizers.Adam(3e-3),
        seed=args.seed,
        logdir=args.logdir,  # the Trainer writes its run to <logdir>/train
        histogram_every=0,
        name="12_per_example_gradients",
    )
    trainer.fit((x, y), epochs=args.epochs, batch_size=args.batch_size, verbose=0)
    trainer.close()

    # One loss per example (no reduction): the function per_example_grad_norms differentiates.
    def per_example_loss(xb: tf.Tensor, yb: tf.Tensor) -> tf.Tensor:
        return ce(yb, model(xb, training=False))

    norms_of = tapekit.per_example_grad_norms(per_example_loss, model)
    norms = np.concatenate(
        [
            norms_of(x[i : i + args.chunk], y[i : i + args.chunk]).numpy()
            for i in range(0, len(x), args.chunk)
        ]
    )
    top = np.argsort(-norms)[:k]
    hits = np.isin(top, flipped)
    precision = float(hits.mean())
    print(
        f"precision among the top {k} gradient norms: {precision:.3f} "
        f"(random pick: {k / len(x):.3f})"
    )
    clean = np.setdiff1d(np.arange(len(x)), flipped)
    print(
        f"median gradient norm: flipped {np.median(norms[flipped]):.3f}, "
        f"clean {np.median(norms[clean]):.4f}"
    )

    # per_example_grads against one tape per example, on the first 8 examples
    grads = tapekit.per_example_grads(per_example_loss, model)(x[:8], y[:8])
    worst = 0.0
    for i in range(8):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(per_example_loss(x[i : i + 1], y[i : i + 1]))
        for g, want in zip(grads, tape.gradient(loss, model.trainable_variables)):
            worst = max(worst, float(np.max(np.abs(g[i].numpy() - want.numpy()))))
    print(f"per_example_grads vs a loop of tapes (8 examples): max |difference| = {worst:.1e}")

    writer = tf.summary.create_file_writer(str(Path(args.logdir) / "per_example"))
    with writer.as_default():
        tf.summary.histogram("gradient_norm/all", norms, step=0, buckets=40)
        tf.summary.histogram("gradient_norm/clean", norms[clean], step=0, buckets=40)
        tf.summary.histogram("gradient_norm/flipped", norms[flipped], step=0, buckets=40)
        tf.summary.scalar("precision_at_k", precision, step=0)
        rows = [
            f"| {rank + 1} | {int(i)} | {norms[i]:.3f} | {'yes' if hit else 'no'} |"
            for rank, (i, hit) in enumerate(zip(top, hits))
        ]
        table = "| rank | example | gradient norm | flipped |\n|---|---|---|---|\n" + "\n".join(
            rows
        )
        tf.summary.text("flagged_examples", table, step=0)
    writer.close()
    print(f"done in {time.perf_counter() - started:.1f} s")
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
