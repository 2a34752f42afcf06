"""Higher-order derivatives: tanh and its f', f'', f''', a Hessian, an HVP, and Newton's method.

`tapekit.derivative(f, k)` differentiates an elementwise function k times (nested tapes inside);
for tanh the results are checked against the closed forms f' = 1 - t^2, f'' = -2 t (1 - t^2) and
f''' = (6 t^2 - 2)(1 - t^2) with t = tanh(x), and logged as curves. `tapekit.hessian` gives the
matrix of second partials of the Rosenbrock function, `tapekit.hvp` a Hessian-vector product
without forming the matrix, and Newton's method x <- x - H^-1 grad f uses both to reach the
minimum at (1, 1) in a handful of steps, where gradient descent needs thousands.
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
    parser.add_argument("--logdir", default="logs/03_higher_order")
    parser.add_argument("--points", type=int, default=161, help="points in [-4, 4] for the curves")
    parser.add_argument("--newton-steps", type=int, default=6, help="Newton iterations (default 6)")
    parser.add_argument("--start", type=float, nargs=2, default=(-1.2, 1.0), metavar=("X", "Y"))
    return parser.parse_args(argv)


def rosenbrock(p: tf.Tensor) -> tf.Tensor:
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)."""
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_hessian(p: np.ndarray) -> np.ndarray:
    x, y = p
    return np.array([[2 - 400 * (y - x**2) + 800 * x**2, -400 * x], [-400 * x, 200.0]])


def tanh_derivatives(xs: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """tanh and its first three derivatives by autodiff, and by their closed forms."""
    by_autodiff = [tapekit.derivative(tf.tanh, k)(xs) for k in range(4)]
    t = tf.tanh(xs)
    exact = [t, 1 - t**2, -2 * t * (1 - t**2), (6 * t**2 - 2) * (1 - t**2)]
    return by_autodiff, exact


def matrix(a: np.ndarray) -> str:
    """A small array on one line."""
    return np.array2string(a, precision=1, separator=", ", floatmode="fixed").replace("\n", "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    writer = open_writer(args.logdir)

    xs = tf.linspace(tf.constant(-4.0, tf.float64), 4.0, args.points)
    by_autodiff, exact = tanh_derivatives(xs)
    print(f"tanh on {args.points} points in [-4, 4] (float64): derivative(tf.tanh, k)")
    names = ["f", "f'", "f''", "f'''"]
    tags = ["tanh/f", "tanh/d1f", "tanh/d2f", "tanh/d3f"]
    with writer.as_default():
        for name, tag, got, want in zip(names, tags, by_autodiff, exact):
            error = float(tf.reduce_max(tf.abs(got - want)))
            print(f"  {name:<5} max |autodiff - closed form| = {error:.1e}")
            # A curve per derivative: step i <-> x = -4 + 8 i / (points - 1).
            for i in range(args.points):
                tf.summary.scalar(tag, got[i], step=i)

    p0 = tf.constant(args.start, tf.float64)
    h = tapekit.hessian(rosenbrock)(p0).numpy()
    print(f"Rosenbrock f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 at {tuple(args.start)}:")
    print(f"  hessian(f)          = {matrix(h)}")
    print(f"  closed form         = {matrix(rosenbrock_hessian(p0.numpy()))}")
    v = tf.constant([1.0, -1.0], tf.float64)
    (hv,) = tapekit.hvp(rosenbrock, (p0,), (v,))
    print(f"  hvp(f, v = [1, -1]) = {matrix(hv.numpy())}   (H @ v = {matrix(h @ v.numpy())})")

    print("Newton's method: p <- p - solve(H, grad f)")
    gradient, hessian = tapekit.grad(rosenbrock), tapekit.hessian(rosenbrock)
    p = p0
    with writer.as_default():
        for step in range(args.newton_steps + 1):
            value, g = float(rosenbrock(p)), gradient(p)
            tf.summary.scalar("newton/f", value, step=step)
            tf.summary.scalar("newton/x", p[0], step=step)
            tf.summary.scalar("newton/y", p[1], step=step)
            tf.summary.scalar("newton/gradient_norm", tf.norm(g), step=step)
            print(
                f"  step {step}: p = ({float(p[0]):+.6f}, {float(p[1]):+.6f})  f = {value:.3e}"
                f"  |grad| = {float(tf.norm(g)):.2e}"
            )
            if step < args.newton_steps:
                p = p - tf.linalg.solve(hessian(p), g[:, None])[:, 0]
    writer.close()
    print(f"Newton's minimum: ({float(p[0]):.6f}, {float(p[1]):.6f}), exact (1, 1)")
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
