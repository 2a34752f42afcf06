"""Physics-informed network: solve u'' = -pi^2 sin(pi x), u(0) = u(1) = 0, using u'' from autodiff.

A physics-informed neural network (PINN) learns the solution u(x) of a differential equation
without ever seeing it: its loss is the equation's residual u''(x) + pi^2 sin(pi x) at random points
plus the boundary values u(0)^2 + u(1)^2. The residual needs the *second derivative of the
network with respect to its input*, here `tapekit.derivative(u, 2)` (two nested tapes), and
training differentiates that once more w.r.t. the weights. The exact solution is u = sin(pi x),
so the recipe prints the largest error of the trained network against it.

The loop is a custom step on `tapekit.Trainer` (`fit(None, ...)`: the collocation points are
sampled inside the step from `ctx.rng`), so it has checkpoints and resume (`--checkpoint-dir`,
`--resume`), NaN protection, the progress line and gradient logging; the last line is the
sha256 of the trained weights, equal for an uninterrupted and a killed-and-resumed run.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import math
import time

import keras
import numpy as np
import tensorflow as tf

import tapekit

import _custom_loop
from _common import logs_hint, new_figure

PI = math.pi


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/07_physics_informed")
    _custom_loop.add_run_arguments(parser, 3000, "training steps")
    parser.add_argument("--points", type=int, default=64, help="collocation points per step")
    parser.add_argument("--width", type=int, default=32, help="hidden units per layer")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial Adam learning rate")
    parser.add_argument("--log-every", type=int, default=100, help="log interval (steps)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build(width: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(width, activation="tanh"),
            keras.layers.Dense(1),
        ],
        name="pinn",
    )


def make_step(points: int):
    """The PINN step: sample points, residual of u'' = -pi^2 sin(pi x) plus boundary values."""
    boundary = tf.constant([[0.0], [1.0]])

    def pinn_step(ctx: tapekit.StepContext, batch: None) -> dict[str, tf.Tensor]:
        u = ctx.model
        # u acts row by row (point by point), so derivative() gives u''(x) at every point.
        u_xx = tapekit.derivative(lambda x: u(x), 2)
        x = ctx.rng.uniform((points, 1))
        with tf.GradientTape() as tape:
            residual = u_xx(x) + PI**2 * tf.sin(PI * x)
            pde_loss = tf.reduce_mean(residual**2) / PI**4  # scaled so both terms are O(1)
            bc_loss = tf.reduce_mean(u(boundary) ** 2)
            loss = pde_loss + bc_loss
        ctx.minimize("model", loss, tape)  # differentiates u'' once more, w.r.t. the weights
        return {"loss": loss, "pde_residual": pde_loss, "boundary": bc_loss}

    return pinn_step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    schedule = keras.optimizers.schedules.ExponentialDecay(args.lr, args.steps, 0.05)
    logdir = _custom_loop.fresh_logdir(args.logdir, args.resume)
    x_test = np.linspace(0.0, 1.0, 201, dtype=np.float32)[:, None]
    exact = np.sin(PI * x_test[:, 0])
    evals = tapekit.board.RunWriters(logdir)

    class MaxError(tapekit.Callback):
        """Logs the largest error against the exact solution at every epoch end."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            error = float(np.abs(trainer.model(x_test).numpy()[:, 0] - exact).max())
            evals.scalars("eval", {"max_error_vs_exact": error}, self.trainer.global_step)

    trainer = tapekit.Trainer(
        lambda: build(args.width),
        step=make_step(args.points),
        optimizer=keras.optimizers.Adam(schedule),
        seed=args.seed,
        logdir=logdir,
        log_every=args.log_every,
        callbacks=[MaxError()],
        name="07_physics_informed",
        **_custom_loop.checkpoint_options(args),
    )
    per_epoch, epochs = _custom_loop.epochs_of(args.steps, 5 * args.log_every)
    print(f"PINN 1-{args.width}-{args.width}-1 (tanh), {args.points} random points per step")
    start = time.perf_counter()
    trainer.fit(None, steps_per_epoch=per_epoch, epochs=epochs)
    if trainer.restored_from:
        print(f"resumed from {trainer.restored_from}")
    trainer.close()
    u_end = trainer.model(x_test).numpy()[:, 0]
    fig = new_figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x_test[:, 0], exact, color="0.6", lw=4, label="exact sin(πx)")
    ax.plot(x_test[:, 0], u_end, color="tab:red", lw=1.5, label="network u(x)")
    ax.set(
        xlabel="x",
        ylabel="u",
        title=f"PINN solution of u'' = -π² sin(πx), step {trainer.global_step}",
    )
    ax.legend()
    tapekit.board.log_figure(
        "solution",
        fig,
        trainer.global_step,
        writer=evals.writer("eval"),
        description="The trained network against the exact solution on [0, 1].",
    )
    evals.close()
    error = float(np.abs(u_end - exact).max())
    print(f"trained in {time.perf_counter() - start:.1f} s")
    print(f"max |u(x) - sin(pi x)| on [0, 1] = {error:.2e}")
    print(f"u(0.5) = {u_end[100]:.4f} (exact 1), u(0) = {u_end[0]:.1e}, u(1) = {u_end[-1]:.1e}")
    print(logs_hint(logdir))
    print(f"weights sha256: {_custom_loop.weights_digest(trainer.trainable_variables)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
