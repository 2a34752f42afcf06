"""Persistent tapes: several gradients and a Jacobian from one recording; why gradients go missing.

A `tf.GradientTape` may be asked once; `persistent=True` keeps its recording so one forward pass
can give the gradient of several losses and a Jacobian. `tapekit.Tape` is the same context
manager with deterministic clean-up (`tape.release()`) and, instead of TensorFlow's silent `None`,
an error that names the source and the cause. The second half makes the common mistakes on
purpose and prints what each tape answers.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import textwrap
from collections.abc import Callable

import numpy as np
import tensorflow as tf

import tapekit

from _common import logs_hint, open_writer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/04_persistent_tape")
    parser.add_argument("--steps", type=int, default=50, help="gradient-descent steps (default 50)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate")
    parser.add_argument("--penalty", type=float, default=0.1, help="weight of the L2 penalty")
    return parser.parse_args(argv)


def twice(tape_cls: Callable) -> object:
    x = tf.Variable(2.0)
    with tape_cls() as tape:
        y = x * x
    tape.gradient(y, x)
    return tape.gradient(y, x)  # a second question to a non-persistent tape


def unwatched(tape_cls: Callable) -> object:
    x = tf.constant(2.0)  # a tensor, not a variable: nothing watches it
    with tape_cls() as tape:
        y = x * x
    return tape.gradient(y, x)


def replaced(tape_cls: Callable) -> object:
    x = tf.Variable(2.0)
    x = x + 1.0  # rebinds x to a new *tensor*; use x.assign_add(1.0) to keep the variable
    with tape_cls() as tape:
        y = x * x
    return tape.gradient(y, x)


def through_numpy(tape_cls: Callable) -> object:
    x = tf.Variable(2.0)
    with tape_cls() as tape:
        y = tf.constant(np.square(x.numpy()))  # the value left TensorFlow
    return tape.gradient(y, x)


def integer(tape_cls: Callable) -> object:
    x = tf.Variable(2)  # int32: integers have no gradient
    with tape_cls() as tape:
        y = x * x
    return tape.gradient(y, x)


def computed_outside(tape_cls: Callable) -> object:
    x = tf.Variable(2.0)
    y = x * x  # recorded by no tape
    with tape_cls() as tape:
        z = y + 1.0
    return tape.gradient(z, x)


MISTAKES = [
    ("asking a non-persistent tape twice", twice),
    ("a tf.constant that was never watched", unwatched),
    ("a variable replaced by a tensor (x = x + 1)", replaced),
    ("the value went through NumPy", through_numpy),
    ("an integer variable", integer),
    ("the loss computed before the `with` block", computed_outside),
]


def tf_answer(case: Callable) -> str:
    try:
        return repr(case(tf.GradientTape))
    except RuntimeError as exc:
        return f"RuntimeError: {str(exc).splitlines()[0]}"


def tapekit_answer(case: Callable) -> str:
    try:
        case(tapekit.Tape)
    except (tapekit.DisconnectedGradientError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise RuntimeError(f"{case.__name__}: tapekit.Tape should have raised")


def listing(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(32, 3)), tf.float32)
    targets = features @ tf.constant([[1.0], [-2.0], [0.5]]) + 0.1 * rng.normal(size=(32, 1))
    w = tf.Variable(tf.zeros((3, 1)), name="w")

    print("1. One persistent recording, several questions")
    with tapekit.Tape(persistent=True) as tape:
        residuals = features @ w - targets
        fit = tf.reduce_mean(residuals**2)
        penalty = args.penalty * tf.reduce_sum(w**2)
        loss = fit + penalty
    g_fit, g_penalty, g_loss = (tape.gradient(t, w) for t in (fit, penalty, loss))
    jac = tape.jacobian(residuals, w)
    tape.release()  # frees the recording now, not whenever Python collects the tape
    same = np.allclose(g_fit + g_penalty, g_loss)
    print(f"   d(fit)/dw + d(penalty)/dw == d(loss)/dw: {same}")
    print(f"   jacobian(residuals, w): shape {tuple(jac.shape)} = residuals.shape + w.shape")
    print(f"   d residual_i / d w_j == features[i, j]: {np.allclose(jac[:, 0, :, 0], features)}")
    print(f"   after release: {tape!r}")

    writer = open_writer(args.logdir)
    with writer.as_default():
        for step in range(args.steps):
            with tapekit.Tape(persistent=True) as tape:
                fit = tf.reduce_mean((features @ w - targets) ** 2)
                penalty = args.penalty * tf.reduce_sum(w**2)
                loss = fit + penalty
            g_fit, g_penalty = tape.gradient(fit, w), tape.gradient(penalty, w)
            tape.release()
            tf.summary.scalar("loss/fit", fit, step=step)
            tf.summary.scalar("loss/penalty", penalty, step=step)
            tf.summary.scalar("gradient_norm/w", tf.norm(g_fit + g_penalty), step=step)
            tf.summary.scalar("gradient_parts/fit", tf.norm(g_fit), step=step)
            tf.summary.scalar("gradient_parts/penalty", tf.norm(g_penalty), step=step)
            w.assign_sub(args.lr * (g_fit + g_penalty))
    print(f"   {args.steps} descent steps, both gradient parts logged: loss {float(loss):.4f}")
    print(
        f"   w = {listing(w.numpy()[:, 0])}  (data made with [1, -2, 0.5]; the penalty shrinks w)"
    )

    print("2. Common mistakes: what tf.GradientTape answers, and what tapekit.Tape says")
    rows = []
    for what, case in MISTAKES:
        plain, explained = tf_answer(case), tapekit_answer(case)
        print(f"-- {what}\n   tf.GradientTape: {plain}\n   tapekit.Tape:")
        lines = explained.splitlines()
        if len(lines) > 1:  # DisconnectedGradientError: the headline and one line per source
            lines = [lines[0]] + [
                line.strip() for line in lines[1:] if line.strip().startswith("-")
            ]
        for line in lines:
            print(textwrap.fill(line, 100, initial_indent="     ", subsequent_indent="       "))
        rows.append(f"| {what} | {plain} | {explained.replace(chr(10), '<br>')} |")
    print(
        "   (each DisconnectedGradientError ends: to accept missing gradients, pass "
        "unconnected='zero' or 'none')"
    )
    with writer.as_default():
        tf.summary.text(
            "missing_gradients",
            "| mistake | tf.GradientTape | tapekit.Tape |\n|---|---|---|\n" + "\n".join(rows),
            step=0,
        )
    writer.close()
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
