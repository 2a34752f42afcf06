"""Physics-informed network: solve u'' = -pi^2 sin(pi x), u(0) = u(1) = 0, using u'' from autodiff.

A physics-informed neural network (PINN) learns the solution u(x) of a differential equation
without ever seeing it: its loss is the equation's residual u''(x) + pi^2 sin(pi x) at random points
plus the boundary values u(0)^2 + u(1)^2. The residual needs the *second derivative of the
network with respect to its input*, here `tapekit.derivative(u, 2)` (two nested tapes), and
training differentiates that once more w.r.t. the weights. The exact solution is u = sin(pi x),
so the recipe prints the largest error of the trained network against it.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tapekit._quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # hide TensorFlow's C++ start-up messages (errors still raise)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

PI = math.pi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/07_physics_informed")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--points", type=int, default=64, help="collocation points per step")
    parser.add_argument("--width", type=int, default=32, help="hidden units per layer")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate")
    parser.add_argument("--log-every", type=int, default=100, help="log and print interval")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def open_writer(logdir: str) -> tf.summary.SummaryWriter:
    """A summary writer for ``logdir``; a rerun replaces the event files of the previous one."""
    for old in Path(logdir).glob("events.out.tfevents.*"):
        old.unlink()
    return tf.summary.create_file_writer(logdir)


def plot(
    curves: list[tuple[np.ndarray, tuple[float, float, float]]], height: int = 200
) -> np.ndarray:
    """Draw curves sampled at the same evenly spaced x as lines in an RGB image (white paper)."""
    width = len(curves[0][0])
    lo = min(float(c.min()) for c, _ in curves)
    hi = max(float(c.max()) for c, _ in curves)
    img = np.ones((height, width, 3), np.float32)
    for values, color in curves:
        rows = np.round((hi - values) / max(hi - lo, 1e-12) * (height - 1)).astype(int)
        for j in range(width):
            a, b = sorted((rows[j], rows[max(j - 1, 0)]))
            img[max(a - 1, 0) : b + 2, j] = color
    return img


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    net = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(args.width, activation="tanh"),
            keras.layers.Dense(args.width, activation="tanh"),
            keras.layers.Dense(1),
        ],
        name="pinn",
    )

    def u(x: tf.Tensor) -> tf.Tensor:
        """The candidate solution at points x of shape (n, 1)."""
        return net(x)

    # u acts row by row (point by point), so derivative() gives u''(x) at every point.
    u_xx = tapekit.derivative(u, 2)
    schedule = keras.optimizers.schedules.ExponentialDecay(args.lr, args.steps, 0.05)
    optimizer = keras.optimizers.Adam(schedule)
    points = tf.random.Generator.from_seed(args.seed)
    boundary = tf.constant([[0.0], [1.0]])

    @tf.function
    def train_step() -> tuple[tf.Tensor, ...]:
        x = points.uniform((args.points, 1))
        with tf.GradientTape() as tape:
            residual = u_xx(x) + PI**2 * tf.sin(PI * x)
            pde_loss = tf.reduce_mean(residual**2) / PI**4  # scaled so both terms are O(1)
            bc_loss = tf.reduce_mean(u(boundary) ** 2)
            loss = pde_loss + bc_loss
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return pde_loss, bc_loss, grads

    x_test = np.linspace(0.0, 1.0, 201, dtype=np.float32)[:, None]
    exact = np.sin(PI * x_test[:, 0])

    def max_error() -> float:
        return float(np.abs(net(x_test).numpy()[:, 0] - exact).max())

    writer = open_writer(args.logdir)
    names = [v.path for v in net.trainable_variables]
    print(f"PINN 1-{args.width}-{args.width}-1 (tanh), {args.points} random points per step")
    start = time.perf_counter()
    with writer.as_default():
        for step in range(1, args.steps + 1):
            pde_loss, bc_loss, grads = train_step()
            if step % args.log_every == 0 or step == args.steps:
                error = max_error()
                tf.summary.scalar("loss/pde_residual", pde_loss, step=step)
                tf.summary.scalar("loss/boundary", bc_loss, step=step)
                tf.summary.scalar("max_error_vs_exact", error, step=step)
                tf.summary.scalar("gradient_norm/global", tf.linalg.global_norm(grads), step=step)
                for name, g in zip(names, grads):
                    tf.summary.scalar(f"gradient_norm/{name}", tf.norm(g), step=step)
                if step % (args.log_every * 5) == 0 or step == args.steps:
                    print(
                        f"step {step:>5}/{args.steps} | pde {float(pde_loss):.2e} | "
                        f"boundary {float(bc_loss):.2e} | max error {error:.2e}"
                    )
        u_end = net(x_test).numpy()[:, 0]
        image = plot([(exact, (0.6, 0.6, 0.6)), (u_end, (0.85, 0.1, 0.1))])
        tf.summary.image(
            "solution",
            image[None],
            step=args.steps,
            description="grey: exact sin(pi x); red: the network, on [0, 1]",
        )
    writer.close()
    error = max_error()
    print(f"trained in {time.perf_counter() - start:.1f} s")
    print(f"max |u(x) - sin(pi x)| on [0, 1] = {error:.2e}")
    print(f"u(0.5) = {u_end[100]:.4f} (exact 1), u(0) = {u_end[0]:.1e}, u(1) = {u_end[-1]:.1e}")
    print(f"Logs: tapekit inspect {args.logdir}   or   tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
