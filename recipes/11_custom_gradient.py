"""Custom gradients: a numerically stable softplus with tf.custom_gradient, verified by check_grads.

softplus(x) = log(1 + exp(x)) written naively overflows: exp(100) is inf in float32, so the value
is inf and the gradient exp(x) / (1 + exp(x)) is inf/inf = NaN. Guarding it with `tf.where` fixes
the value but not the gradient (the unused branch's NaN still leaks through: 0 * NaN = NaN).
`tf.custom_gradient` lets us compute the value stably and give the gradient in closed form,
sigmoid(x), which never overflows. `tapekit.check_grads` then compares it (and the second
derivative) with float64 finite differences, and catches a deliberately wrong gradient. Check in
reverse mode: TensorFlow's forward mode differentiates the ops inside a custom-gradient function
and ignores the gradient you wrote.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse

import numpy as np
import tensorflow as tf

import tapekit

from _common import logs_hint, open_writer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/11_custom_gradient")
    parser.add_argument("--points", type=int, default=201, help="points in [-limit, limit] to log")
    parser.add_argument("--limit", type=float, default=120.0, help="range of x for the curves")
    return parser.parse_args(argv)


def naive_softplus(x: tf.Tensor) -> tf.Tensor:
    return tf.math.log(1 + tf.exp(x))


def guarded_softplus(x: tf.Tensor) -> tf.Tensor:
    """Right values, wrong gradients: tf.where differentiates both branches."""
    return tf.where(x > 30, x, tf.math.log(1 + tf.exp(x)))


@tf.custom_gradient
def softplus(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """log(1 + exp(x)) computed as max(x, 0) + log1p(exp(-|x|)), with gradient sigmoid(x)."""
    value = tf.maximum(x, 0) + tf.math.log1p(tf.exp(-tf.abs(x)))

    def grad(upstream: tf.Tensor) -> tf.Tensor:
        # Built from TensorFlow ops, so it can be differentiated again (second derivatives).
        return upstream * tf.sigmoid(x)

    return value, grad


@tf.custom_gradient
def buggy_softplus(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """The same value with a sign slip in the gradient: sigmoid(-x) instead of sigmoid(x)."""
    value = tf.maximum(x, 0) + tf.math.log1p(tf.exp(-tf.abs(x)))
    return value, lambda upstream: upstream * tf.sigmoid(-x)


def listing(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    probe = tf.constant([-100.0, 0.0, 100.0])
    print(f"x = {probe.numpy().tolist()}  (float32)")
    rows = []
    for name, fn in [
        ("naive", naive_softplus),
        ("tf.where", guarded_softplus),
        ("custom", softplus),
    ]:
        value, g = tapekit.value_and_grad(lambda x, fn=fn: tf.reduce_sum(fn(x)))(probe)
        del value
        values = fn(probe).numpy()
        rows.append((name, values, g.numpy()))
        print(f"  {name:<9} softplus(x) = {listing(values):<22} d/dx = {listing(g.numpy())}")
    print(f"  {'exact':<9} softplus(x) = {'[0, 0.6931, 100]':<22} d/dx = [0, 0.5, 1] = sigmoid(x)")

    points = tf.constant([-30.0, -2.0, -0.5, 0.0, 0.5, 2.0, 30.0, 300.0], tf.float64)
    # Reverse mode only: TensorFlow's forward mode (ForwardAccumulator) differentiates the ops
    # inside a tf.custom_gradient function and never calls its gradient function.
    tapekit.check_grads(softplus, (points,), order=2, modes=("rev",))
    print(f"check_grads(softplus, order=2, modes=('rev',)) at {points.numpy().tolist()}: ok")
    try:
        tapekit.check_grads(buggy_softplus, (points,), modes=("rev",))
    except AssertionError as exc:
        first_line = str(exc).strip().splitlines()[0]
        print(f"check_grads(buggy_softplus) catches the sign slip:\n  {first_line}")
    else:
        raise RuntimeError("check_grads should have rejected buggy_softplus")

    writer = open_writer(args.logdir)
    xs = tf.linspace(-args.limit, args.limit, args.points)
    with writer.as_default():
        # Curves over x (step i <-> x = -limit + i * 2 * limit / (points - 1)).
        for name, fn in [
            ("naive", naive_softplus),
            ("tf_where", guarded_softplus),
            ("custom", softplus),
        ]:
            g = tapekit.grad(lambda x, fn=fn: tf.reduce_sum(fn(x)))(xs)
            v = fn(xs)
            for i in range(args.points):
                tf.summary.scalar(f"{name}/softplus", v[i], step=i)
                tf.summary.scalar(f"{name}/derivative", g[i], step=i)
        table = "| version | value at x=100 | derivative at x=100 |\n|---|---|---|\n" + "\n".join(
            f"| {name} | {v[-1]:g} | {d[-1]:g} |" for name, v, d in rows
        )
        tf.summary.text("softplus_at_100", table, step=0)
    writer.close()
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
