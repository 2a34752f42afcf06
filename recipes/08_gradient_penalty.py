"""Gradient penalty (WGAN-GP on 2-D data): a loss containing a gradient, trained by its gradient.

A Wasserstein GAN's critic D must be 1-Lipschitz. WGAN-GP enforces it softly by adding
lambda * (|grad_x D(x_hat)| - 1)^2 at points x_hat between real and generated samples. That
penalty is itself built from a gradient (w.r.t. the *input*, here `tapekit.grad`), and training
the critic takes its gradient w.r.t. the weights: a gradient of a gradient, recorded by an outer
tape around tapekit's inner one. The generator learns a ring of eight Gaussians; the recipe prints
the sliced Wasserstein distance between generated and real samples before and after training,
and the critic's input-gradient norm, which the penalty pulls towards 1.
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/08_gradient_penalty")
    parser.add_argument("--steps", type=int, default=1500, help="generator steps (default 1500)")
    parser.add_argument(
        "--critic-steps", type=int, default=5, help="critic steps per generator step"
    )
    parser.add_argument("--batch", type=int, default=256, help="samples per batch")
    parser.add_argument(
        "--penalty", type=float, default=10.0, help="gradient-penalty weight lambda"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--log-every", type=int, default=50, help="log interval (generator steps)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def open_writer(logdir: str) -> tf.summary.SummaryWriter:
    """A summary writer for ``logdir``; a rerun replaces the event files of the previous one."""
    for old in Path(logdir).glob("events.out.tfevents.*"):
        old.unlink()
    return tf.summary.create_file_writer(logdir)


def mlp(out: int, name: str) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(out),
        ],
        name=name,
    )


def real_samples(n: int, rng: tf.random.Generator) -> tf.Tensor:
    """n points from eight Gaussians (std 0.05) evenly spaced on a circle of radius 2."""
    angle = tf.cast(rng.uniform((n,), 0, 8, dtype=tf.int32), tf.float32) * (2 * math.pi / 8)
    centres = 2.0 * tf.stack([tf.cos(angle), tf.sin(angle)], axis=1)
    return centres + 0.05 * rng.normal((n, 2))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 64) -> float:
    """Average 1-D Wasserstein distance between a and b along random directions."""
    theta = np.random.default_rng(0).uniform(0, np.pi, projections)
    dirs = np.stack([np.cos(theta), np.sin(theta)])
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    return float(np.abs(pa - pb).mean())


def scatter(
    points: list[tuple[np.ndarray, tuple[float, float, float]]], size: int = 256
) -> np.ndarray:
    """Plot 2-D point sets in [-3, 3]^2 as coloured pixels on white paper."""
    img = np.ones((size, size, 3), np.float32)
    for xy, color in points:
        cols = np.clip(((xy[:, 0] + 3) / 6 * (size - 1)).round().astype(int), 0, size - 1)
        rows = np.clip(((3 - xy[:, 1]) / 6 * (size - 1)).round().astype(int), 0, size - 1)
        img[rows, cols] = color
    return img


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = tf.random.Generator.from_seed(args.seed)
    generator, critic = mlp(2, "generator"), mlp(1, "critic")
    g_opt = keras.optimizers.Adam(args.lr, beta_1=0.5, beta_2=0.9)
    c_opt = keras.optimizers.Adam(args.lr, beta_1=0.5, beta_2=0.9)

    def critic_sum(x: tf.Tensor) -> tf.Tensor:
        # Samples are independent, so the gradient of the sum holds each sample's grad_x D(x).
        return tf.reduce_sum(critic(x))

    input_gradient = tapekit.grad(critic_sum)

    @tf.function
    def critic_step() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        real = real_samples(args.batch, rng)
        fake = generator(rng.normal((args.batch, 2)))
        eps = rng.uniform((args.batch, 1))
        x_hat = eps * real + (1 - eps) * fake
        with tf.GradientTape() as tape:
            wasserstein = tf.reduce_mean(critic(real)) - tf.reduce_mean(critic(fake))
            norms = tf.norm(input_gradient(x_hat), axis=1)  # the inner gradient, recorded here
            penalty = tf.reduce_mean((norms - 1.0) ** 2)
            loss = -wasserstein + args.penalty * penalty
        grads = tape.gradient(loss, critic.trainable_variables)  # gradient of a gradient
        c_opt.apply_gradients(zip(grads, critic.trainable_variables))
        return wasserstein, penalty, tf.reduce_mean(norms), tf.linalg.global_norm(grads)

    @tf.function
    def generator_step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(critic(generator(rng.normal((args.batch, 2)))))
        grads = tape.gradient(loss, generator.trainable_variables)
        g_opt.apply_gradients(zip(grads, generator.trainable_variables))
        return tf.linalg.global_norm(grads)

    reference = real_samples(1000, rng).numpy()
    noise = rng.normal((1000, 2))

    def distance() -> float:
        return sliced_wasserstein(generator(noise).numpy(), reference)

    def log_samples(tag: str, step: int) -> None:
        picture = scatter(
            [(reference, (0.6, 0.6, 0.6)), (generator(noise).numpy(), (0.85, 0.1, 0.1))]
        )
        description = "grey: data, red: generated, in the square [-3, 3]^2"
        tf.summary.image(tag, picture[None], step=step, description=description)

    before = distance()
    print(f"WGAN-GP on 8 Gaussians, lambda = {args.penalty:g}, {args.critic_steps} critic steps")
    print(f"before training: sliced Wasserstein distance to the data {before:.3f}")
    writer = open_writer(args.logdir)
    start = time.perf_counter()
    with writer.as_default():
        log_samples("samples/start", step=0)
        for step in range(1, args.steps + 1):
            for _ in range(args.critic_steps):
                wasserstein, penalty, norm, c_norm = critic_step()
            g_norm = generator_step()
            if step % args.log_every == 0 or step == args.steps:
                tf.summary.scalar("critic/wasserstein_estimate", wasserstein, step=step)
                tf.summary.scalar("critic/gradient_penalty", penalty, step=step)
                tf.summary.scalar("critic/input_gradient_norm", norm, step=step)
                tf.summary.scalar("gradient_norm/critic", c_norm, step=step)
                tf.summary.scalar("gradient_norm/generator", g_norm, step=step)
                tf.summary.scalar("sliced_wasserstein_distance", distance(), step=step)
            if step % (args.log_every * 6) == 0 or step == args.steps:
                print(
                    f"step {step:>5}/{args.steps} | W estimate {float(wasserstein):.3f} | "
                    f"penalty {float(penalty):.4f} | |grad_x D| {float(norm):.3f}"
                )
        log_samples("samples/end", step=args.steps)
    writer.close()
    after = distance()
    print(f"trained in {time.perf_counter() - start:.1f} s")
    print(
        f"after training: sliced Wasserstein distance to the data {after:.3f} (before {before:.3f})"
    )
    print(
        f"critic input-gradient norm at interpolates: {float(norm):.3f} (the penalty's target: 1)"
    )
    print(f"Logs: tapekit inspect {args.logdir}   or   tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
