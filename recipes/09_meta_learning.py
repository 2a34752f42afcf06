"""Meta-learning (MAML) on sine waves: second-order gradients through an inner gradient step.

Each task is a sine wave y = A sin(x + phase) with random amplitude and phase, seen through only
K points. MAML looks for weights theta from which ONE gradient step on a task's K points,
theta' = theta - alpha * grad L_task(theta), already fits that task. The meta-loss is the loss of
theta' on fresh points of the task, so its gradient w.r.t. theta passes through the inner
gradient: a second-order derivative (the inner `tapekit.grad` is recorded by the outer tape).
The recipe prints the loss on unseen tasks before and after adaptation.

The loop is a custom step on `tapekit.Trainer` (`fit(None, ...)`: the tasks are sampled inside
the step from `ctx.rng`), so it has checkpoints and resume (`--checkpoint-dir`, `--resume`),
NaN protection, the progress line and gradient logging; the last line is the sha256 of the
trained weights, equal for an uninterrupted and a killed-and-resumed run.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import tapekit

import _custom_loop
from _common import logs_hint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/09_meta_learning")
    _custom_loop.add_run_arguments(parser, 5000, "meta-training steps")
    parser.add_argument("--tasks", type=int, default=10, help="tasks per meta-batch")
    parser.add_argument("--shots", type=int, default=10, help="K: points seen per task")
    parser.add_argument("--inner-lr", type=float, default=0.01, help="alpha, the inner step size")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate for theta")
    parser.add_argument("--hidden", type=int, default=40, help="hidden units (two layers)")
    parser.add_argument("--test-tasks", type=int, default=200, help="unseen tasks to evaluate on")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sample_tasks(rng: tf.random.Generator, tasks: int, points: int) -> tuple[tf.Tensor, tf.Tensor]:
    """x and y of shape (tasks, points, 1) for random sine waves A sin(x + phase)."""
    amplitude = rng.uniform((tasks, 1, 1), 0.1, 5.0)
    phase = rng.uniform((tasks, 1, 1), 0.0, np.pi)
    x = rng.uniform((tasks, points, 1), -5.0, 5.0)
    return x, amplitude * tf.sin(x + phase)


def init_params(hidden: int) -> list[tf.Variable]:
    """theta: a 1-hidden-hidden-1 ReLU network as plain variables (so copies are easy to make)."""
    init = keras.initializers.GlorotUniform()
    shapes = [(1, hidden), (1, hidden), (hidden, hidden), (1, hidden), (hidden, 1), (1, 1)]
    names = ["w1", "b1", "w2", "b2", "w3", "b3"]
    return [
        tf.Variable(init(s) if n.startswith("w") else tf.zeros(s), name=n)
        for n, s in zip(names, shapes)
    ]


def forward(params: list[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """The network on x of shape (tasks, points, 1). Params are shared, or have a task axis."""
    w1, b1, w2, b2, w3, b3 = params
    h = tf.nn.relu(x @ w1 + b1)
    h = tf.nn.relu(h @ w2 + b2)
    return h @ w3 + b3


def task_losses(params: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean squared error of each task, shape (tasks,)."""
    return tf.reduce_mean((forward(params, x) - y) ** 2, axis=[1, 2])


def summed_loss(params: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(task_losses(params, x, y))


# With one copy of theta per task (a leading task axis), the gradient of the summed loss holds
# every task's own gradient: task t's loss only touches copy t.
per_task_gradient = tapekit.grad(summed_loss)


def adapt(params: list[tf.Tensor], x: tf.Tensor, y: tf.Tensor, lr: float, steps: int = 1) -> list:
    """theta' = theta - lr * grad L_task(theta), for every task at once (``steps`` times)."""
    tasks = x.shape[0]
    fast = [tf.repeat(p[None], tasks, axis=0) for p in params]  # differentiable copies
    for _ in range(steps):
        grads = per_task_gradient(fast, x, y)
        fast = [p - lr * g for p, g in zip(fast, grads)]
    return fast


def make_step(tasks: int, k: int, inner_lr: float):
    """The MAML step: sample tasks, adapt on K points, meta-loss on K fresh points."""

    def maml_step(ctx: tapekit.StepContext, batch: None) -> dict[str, tf.Tensor]:
        theta = ctx.model
        x, y = sample_tasks(ctx.rng, tasks, 2 * k)  # K points to adapt on, K to evaluate on
        x_train, y_train, x_eval, y_eval = x[:, :k], y[:, :k], x[:, k:], y[:, k:]
        with tf.GradientTape() as tape:
            pre = tf.reduce_mean(task_losses(theta, x_eval, y_eval))
            fast = adapt(theta, x_train, y_train, inner_lr)
            post = tf.reduce_mean(task_losses(fast, x_eval, y_eval))
        ctx.minimize("model", post, tape)  # differentiates through the inner gradient
        return {"loss_before_adaptation": pre, "loss_after_adaptation": post}

    return maml_step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    logdir = _custom_loop.fresh_logdir(args.logdir, args.resume)
    k = args.shots
    trainer = tapekit.Trainer(
        lambda: init_params(args.hidden),
        step=make_step(args.tasks, k, args.inner_lr),
        optimizer=keras.optimizers.Adam(args.meta_lr),
        seed=args.seed,
        logdir=logdir,
        log_every=args.log_every,
        name="09_meta_learning",
        **_custom_loop.checkpoint_options(args),
    )
    theta = trainer.model
    test_rng = tf.random.Generator.from_seed(args.seed + 1)
    x_test, y_test = sample_tasks(test_rng, args.test_tasks, 2 * k)

    def evaluate(steps: int) -> float:
        fast = adapt(theta, x_test[:, :k], y_test[:, :k], args.inner_lr, steps)
        return float(tf.reduce_mean(task_losses(fast, x_test[:, k:], y_test[:, k:])))

    print(f"MAML, sine waves, {k}-shot, {args.tasks} tasks per step, inner lr {args.inner_lr:g}")
    print(
        f"before meta-training: unseen-task loss {evaluate(0):.3f}, after 1 step {evaluate(1):.3f}"
    )
    per_epoch, epochs = _custom_loop.epochs_of(args.steps, 5 * args.log_every)
    start = time.perf_counter()
    trainer.fit(None, steps_per_epoch=per_epoch, epochs=epochs)
    if trainer.restored_from:
        print(f"resumed from {trainer.restored_from}")
    trainer.close()
    results = {n: evaluate(n) for n in (0, 1, 10)}
    with tapekit.board.RunWriters(logdir) as evals:
        for n, value in results.items():
            evals.scalars("eval", {"meta_test/loss_vs_adaptation_steps": value}, n)
    print(f"meta-trained in {time.perf_counter() - start:.1f} s")
    print(f"meta-test on {args.test_tasks} unseen tasks ({k} points each to adapt on):")
    print(f"  pre-adaptation loss  {results[0]:.3f}")
    print(f"  post-adaptation loss {results[1]:.3f} (1 step), {results[10]:.3f} (10 steps)")
    print(logs_hint(logdir))
    print(f"weights sha256: {_custom_loop.weights_digest(trainer.trainable_variables)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
