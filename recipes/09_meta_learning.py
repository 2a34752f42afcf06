"""Meta-learning (MAML) on sine waves: second-order gradients through an inner gradient step.

Each task is a sine wave y = A sin(x + phase) with random amplitude and phase, seen through only
K points. MAML looks for weights theta from which ONE gradient step on a task's K points,
theta' = theta - alpha * grad L_task(theta), already fits that task. The meta-loss is the loss of
theta' on fresh points of the task, so its gradient w.r.t. theta passes through the inner
gradient: a second-order derivative (the inner `tapekit.grad` is recorded by the outer tape).
The recipe prints the loss on unseen tasks before and after adaptation.
"""

from __future__ import annotations

import argparse
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/09_meta_learning")
    parser.add_argument(
        "--steps", type=int, default=5000, help="meta-training steps (default 5000)"
    )
    parser.add_argument("--tasks", type=int, default=10, help="tasks per meta-batch")
    parser.add_argument("--shots", type=int, default=10, help="K: points seen per task")
    parser.add_argument("--inner-lr", type=float, default=0.01, help="alpha, the inner step size")
    parser.add_argument("--meta-lr", type=float, default=1e-3, help="Adam learning rate for theta")
    parser.add_argument("--hidden", type=int, default=40, help="hidden units (two layers)")
    parser.add_argument("--test-tasks", type=int, default=200, help="unseen tasks to evaluate on")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def open_writer(logdir: str) -> tf.summary.SummaryWriter:
    """A summary writer for ``logdir``; a rerun replaces the event files of the previous one."""
    for old in Path(logdir).glob("events.out.tfevents.*"):
        old.unlink()
    return tf.summary.create_file_writer(logdir)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = tf.random.Generator.from_seed(args.seed)
    theta = init_params(args.hidden)
    optimizer = keras.optimizers.Adam(args.meta_lr)
    k = args.shots

    @tf.function
    def meta_step() -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        x, y = sample_tasks(rng, args.tasks, 2 * k)  # K points to adapt on, K to evaluate on
        x_train, y_train, x_eval, y_eval = x[:, :k], y[:, :k], x[:, k:], y[:, k:]
        with tf.GradientTape() as tape:
            pre = tf.reduce_mean(task_losses(theta, x_eval, y_eval))
            fast = adapt(theta, x_train, y_train, args.inner_lr)
            post = tf.reduce_mean(task_losses(fast, x_eval, y_eval))
        grads = tape.gradient(post, theta)  # differentiates through the inner gradient
        optimizer.apply_gradients(zip(grads, theta))
        return pre, post, grads

    test_rng = tf.random.Generator.from_seed(args.seed + 1)
    x_test, y_test = sample_tasks(test_rng, args.test_tasks, 2 * k)

    def evaluate(steps: int) -> float:
        fast = adapt(theta, x_test[:, :k], y_test[:, :k], args.inner_lr, steps)
        return float(tf.reduce_mean(task_losses(fast, x_test[:, k:], y_test[:, k:])))

    print(f"MAML, sine waves, {k}-shot, {args.tasks} tasks per step, inner lr {args.inner_lr:g}")
    print(
        f"before meta-training: unseen-task loss {evaluate(0):.3f}, after 1 step {evaluate(1):.3f}"
    )
    writer = open_writer(args.logdir)
    start = time.perf_counter()
    with writer.as_default():
        for step in range(1, args.steps + 1):
            pre, post, grads = meta_step()
            if step % args.log_every == 0 or step == args.steps:
                tf.summary.scalar("meta_train/loss_before_adaptation", pre, step=step)
                tf.summary.scalar("meta_train/loss_after_adaptation", post, step=step)
                tf.summary.scalar("gradient_norm/global", tf.linalg.global_norm(grads), step=step)
                for v, g in zip(theta, grads):
                    tf.summary.scalar(
                        f"gradient_norm/{v.name.split(':')[0]}", tf.norm(g), step=step
                    )
            if step % (args.log_every * 5) == 0 or step == args.steps:
                print(
                    f"step {step:>5}/{args.steps} | loss before adaptation {float(pre):.3f} | "
                    f"after {float(post):.3f}"
                )
        results = {n: evaluate(n) for n in (0, 1, 10)}
        for n, value in results.items():
            tf.summary.scalar("meta_test/loss_vs_adaptation_steps", value, step=n)
    writer.close()
    print(f"meta-trained in {time.perf_counter() - start:.1f} s")
    print(f"meta-test on {args.test_tasks} unseen tasks ({k} points each to adapt on):")
    print(f"  pre-adaptation loss  {results[0]:.3f}")
    print(f"  post-adaptation loss {results[1]:.3f} (1 step), {results[10]:.3f} (10 steps)")
    print(f"Logs: tapekit inspect {args.logdir}   or   tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
