"""The tape's three steps (variables, recording, .gradient() outside) beside tapekit.grad.

TensorFlow computes derivatives with a tape: you (1) make `tf.Variable`s, (2) run the computation
inside `with tf.GradientTape() as tape:` so it is recorded, and (3) call `tape.gradient(...)` after
the block. tapekit wraps the same tape in functions you call directly: `grad`, `value_and_grad`,
`partials`, and `check_grads` to compare with finite differences.

Run it with `python3 dev.py run 01`, then look at the logs with
`python3 dev.py inspect logs/01_gradients` or `python3 dev.py board logs/01_gradients`.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import textwrap

import tensorflow as tf

import tapekit
import tapekit.board

from _common import logs_hint, open_writer


def f(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """The classic two-variable example: f(x, y) = x²y + y + 2."""
    return x**2 * y + y + 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--logdir", default="logs/01_gradients", help="where to write TensorBoard logs"
    )
    parser.add_argument("--x", type=float, default=3.0, help="point x (default 3)")
    parser.add_argument("--y", type=float, default=4.0, help="point y (default 4)")
    parser.add_argument("--steps", type=int, default=25, help="gradient-descent steps on y = x²")
    parser.add_argument("--lr", type=float, default=0.1, help="gradient-descent learning rate")
    return parser.parse_args(argv)


def tape_three_steps(x0: float, y0: float) -> tuple[float, list[float]]:
    """dy/dx of y = x² and ∇f(x, y) with a plain tf.GradientTape."""
    # Step 1: variables (the tape watches trainable variables it sees being read).
    x = tf.Variable(x0)
    # Step 2: record the computation inside the tape's context.
    with tf.GradientTape() as tape:
        y = x**2
    # Step 3: ask for the gradient *after* the block.
    dy_dx = tape.gradient(y, x)

    xv, yv = tf.Variable(x0), tf.Variable(y0)
    with tf.GradientTape() as tape:
        z = f(xv, yv)
    dz = tape.gradient(z, [xv, yv])
    return float(dy_dx), [float(g) for g in dz]


def unwatched_constant(x0: float) -> object:
    """The classic pitfall: a tf.constant is not watched, so the tape answers None."""
    c = tf.constant(x0)
    with tf.GradientTape() as tape:
        y = c**2
    return tape.gradient(y, c)


def descend(x0: float, steps: int, lr: float, writer: tf.summary.SummaryWriter) -> float:
    """Use the gradient: plain gradient descent on y = x², logging x, y and dy/dx each step."""
    x = tf.Variable(x0, name="x")
    with writer.as_default():
        for step in range(steps):
            with tf.GradientTape() as tape:
                y = x**2
            g = tape.gradient(y, x)
            tf.summary.scalar("descent/x", x, step=step)
            tf.summary.scalar("descent/y", y, step=step)
            tf.summary.scalar("gradient_norm/x", tf.abs(g), step=step)
            x.assign_sub(lr * g)
    return float(x)


def show(label: str, result: str) -> None:
    """Print one aligned line: what was called, and what it returned."""
    print(f"   {label:<36} -> {result}" if result else f"   {label}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x0, y0 = args.x, args.y

    print("1. The tape's three steps: y = x**2")
    dy_dx, (dfx, dfy) = tape_three_steps(x0, y0)
    show(f"x = tf.Variable({x0}); with tf.GradientTape() as tape: y = x**2", "")
    show("tape.gradient(y, x)", f"{dy_dx:g}   (2x = {2 * x0:g})")
    print(f"2. Two variables: f(x, y) = x**2*y + y + 2 at x={x0}, y={y0}")
    closed = f"(2xy = {2 * x0 * y0:g}, x**2 + 1 = {x0**2 + 1:g})"
    show("tape.gradient(f, [x, y])", f"[{dfx:g}, {dfy:g}]   {closed}")
    show("the same with a tf.constant", f"{unwatched_constant(x0)}   (never watched: silent None)")

    print("3. The same with tapekit: plain numbers in, no context, never None")
    g = tapekit.grad(lambda x: x**2)(x0)
    show(f"grad(lambda x: x**2)({x0})", f"{float(g):g}")
    value, (gx, gy) = tapekit.value_and_grad(f, argnums=(0, 1))(x0, y0)
    show(
        f"value_and_grad(f, (0, 1))({x0}, {y0})",
        f"{float(value):g}, ({float(gx):g}, {float(gy):g})",
    )
    parts = {k: float(v) for k, v in tapekit.partials(f)(x0, y0).items()}
    show(f"partials(f)({x0}, {y0})", str(parts))
    point = (tf.constant(x0, tf.float64), tf.constant(y0, tf.float64))
    tapekit.check_grads(f, point, order=2)
    show("check_grads(f, (x, y), order=2)", "ok (1st and 2nd derivatives = finite differences)")

    writer = open_writer(args.logdir, runs=("f_gradients", "explain_f"))
    x_end = descend(x0, args.steps, args.lr, writer)
    print(
        f"4. Gradient descent on y = x**2 from x={x0}, lr={args.lr}: "
        f"x = {x_end:.4f} after {args.steps} steps"
    )

    with writer.as_default():
        table = (
            "| quantity | tape | tapekit | closed form |\n|---|---|---|---|\n"
            f"| dy/dx of x² at {x0:g} | {dy_dx:g} | {float(g):g} | {2 * x0:g} |\n"
            f"| ∂f/∂x | {dfx:g} | {parts['x']:g} | {2 * x0 * y0:g} |\n"
            f"| ∂f/∂y | {dfy:g} | {parts['y']:g} | {x0**2 + 1:g} |\n"
        )
        tf.summary.text("results", table, step=0)
    writer.close()

    # The graph of f and of its gradient (Graphs dashboard, run f_gradients), and the chain rule
    # spelled out: every node, every edge's local derivative (run explain_f).
    tapekit.board.log_graph(f, x0, y0, logdir=args.logdir, gradients=True)
    explanation = tapekit.explain(f, x0, y0)
    explanation.log(args.logdir)
    print("5. The chain rule behind the gradient, tapekit.explain(f, x, y):")
    print(textwrap.indent(str(explanation), "   "))
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
