"""Linear regression twice: a hand-written loop with tapekit.grad, then the same with Trainer.

The data come from a known line, y = X·w + b + noise with w = [2, -3.4] and b = 4.2, so we can
check that training recovers the true parameters. Part 1 is the loop every TensorFlow course
writes: `tf.Variable`s, mini-batches, the gradient (here from `tapekit.grad`, which records the
loss on a `tf.GradientTape` for you) and the update `w -= lr * dw`. Part 2 gives the same
variables, loss and optimizer to `tapekit.Trainer`, which compiles the loop, averages the loss
per epoch, prints one line per epoch and logs to TensorBoard.

Run it with `python3 dev.py run 05`, then look at the logs with
`python3 dev.py board logs/05_linear_regression`.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tapekit

from _common import line_data, logs_hint

TRUE_W = np.array([2.0, -3.4], "float32")
TRUE_B = 4.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    parser.add_argument("--lr", type=float, default=0.03, help="SGD learning rate (default 0.03)")
    parser.add_argument("--batch-size", type=int, default=10, help="examples per step")
    parser.add_argument("--examples", type=int, default=1000, help="size of the data set")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and shuffling")
    parser.add_argument(
        "--logdir", default="logs/05_linear_regression", help="TensorBoard run directory"
    )
    return parser.parse_args(argv)


def new_params() -> dict[str, tf.Variable]:
    """The model is just its variables: w ~ N(0, 0.01²), b = 0."""
    w = tf.Variable(tf.random.normal([2, 1], stddev=0.01, seed=1), name="w")
    return {"w": w, "b": tf.Variable(0.0, name="b")}


def squared_loss(params: dict[str, tf.Variable], batch: tuple) -> tf.Tensor:
    """Mean of ½(ŷ - y)² over the batch."""
    x, y = batch
    y_hat = tf.matmul(x, params["w"]) + params["b"]
    return tf.reduce_mean(0.5 * (y_hat - y) ** 2)


def hand_loop(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, tf.Variable]:
    """Part 1: mini-batch SGD written out by hand, gradients from tapekit.grad."""
    params = new_params()
    grad_fn = tapekit.grad(squared_loss)  # d loss / d params, same dict structure
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), args.batch_size):
            idx = order[start : start + args.batch_size]
            grads = grad_fn(params, (x[idx], y[idx]))
            for name, variable in params.items():
                variable.assign_sub(args.lr * grads[name])
        loss = float(squared_loss(params, (x, y)))
        print(f"hand loop  epoch {epoch + 1}/{args.epochs} | loss {loss:.6f}")
    return params


def with_trainer(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict:
    """Part 2: the same variables, loss and SGD through tapekit.Trainer."""
    params = new_params()
    for run in ("train", "validation"):  # a rerun replaces its own runs, nothing else in logdir
        shutil.rmtree(Path(args.logdir) / run, ignore_errors=True)
    trainer = tapekit.Trainer(
        params,
        squared_loss,
        optimizer=keras.optimizers.SGD(args.lr),
        seed=args.seed,
        logdir=args.logdir,
        name="05_linear_regression",
    )
    trainer.fit((x, y), epochs=args.epochs, batch_size=args.batch_size)
    trainer.close()
    return params


def report(label: str, params: dict[str, tf.Variable]) -> float:
    w, b = params["w"].numpy()[:, 0], float(params["b"].numpy())
    err = max(float(np.abs(w - TRUE_W).max()), abs(b - TRUE_B))
    print(f"{label:8s} w = [{w[0]:.4f}, {w[1]:.4f}]  b = {b:.4f}   max error {err:.4f}")
    return err


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x, y = line_data(args.examples, args.seed, TRUE_W, TRUE_B)
    print(f"true     w = [{TRUE_W[0]:.4f}, {TRUE_W[1]:.4f}]  b = {TRUE_B:.4f}")
    print("\nPart 1: variables + a hand-written loop with tapekit.grad")
    err_hand = report("hand", hand_loop(x, y, args))
    print("\nPart 2: the same with tapekit.Trainer")
    err_trainer = report("Trainer", with_trainer(x, y, args))
    ok = max(err_hand, err_trainer) < 0.01
    print(f"\nBoth recover the true parameters: {'yes' if ok else 'NO'}.")
    print(logs_hint(args.logdir))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
