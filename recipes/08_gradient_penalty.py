"""Gradient penalty (WGAN-GP on 2-D data): a loss containing a gradient, trained by its gradient.

A Wasserstein GAN's critic D must be 1-Lipschitz. WGAN-GP enforces it softly by adding
lambda * (|grad_x D(x_hat)| - 1)^2 at points x_hat between real and generated samples. That
penalty is itself built from a gradient (w.r.t. the *input*, here `tapekit.grad`), and training
the critic takes its gradient w.r.t. the weights: a gradient of a gradient, recorded by an outer
tape around tapekit's inner one. The generator learns a ring of eight Gaussians; the recipe prints
the sliced Wasserstein distance between generated and real samples before and after training,
and the critic's input-gradient norm, which the penalty pulls towards 1.

The loop is a custom step on `tapekit.Trainer` with two named models and optimizers (five
critic updates, then one generator update, per step; samples and noise from `ctx.rng`), so it
has checkpoints and resume (`--checkpoint-dir`, `--resume`), NaN protection, the progress line
and per-optimizer gradient logging; the last line is the sha256 of the trained weights, equal
for an uninterrupted and a killed-and-resumed run.
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
from _common import logs_hint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/08_gradient_penalty")
    _custom_loop.add_run_arguments(parser, 1500, "generator steps")
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


def make_step(batch: int, critic_steps: int, penalty: float):
    """The WGAN-GP step: ``critic_steps`` critic updates with the penalty, one generator update."""

    def wgan_step(ctx: tapekit.StepContext, data: None) -> dict[str, tf.Tensor]:
        generator, critic = ctx.models["generator"], ctx.models["critic"]
        # Samples are independent, so the gradient of the sum holds each sample's grad_x D(x).
        input_gradient = tapekit.grad(lambda x: tf.reduce_sum(critic(x)))
        for _ in range(critic_steps):
            real = real_samples(batch, ctx.rng)
            fake = generator(ctx.rng.normal((batch, 2)))
            eps = ctx.rng.uniform((batch, 1))
            x_hat = eps * real + (1 - eps) * fake
            with tf.GradientTape() as tape:
                wasserstein = tf.reduce_mean(critic(real)) - tf.reduce_mean(critic(fake))
                norms = tf.norm(input_gradient(x_hat), axis=1)  # the inner gradient, recorded
                gp = tf.reduce_mean((norms - 1.0) ** 2)
                loss = -wasserstein + penalty * gp
            ctx.minimize("critic", loss, tape)  # a gradient of a gradient
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(critic(generator(ctx.rng.normal((batch, 2)))))
        ctx.minimize("generator", g_loss, tape)
        return {
            "wasserstein_estimate": wasserstein,
            "gradient_penalty": gp,
            "input_gradient_norm": tf.reduce_mean(norms),
            "generator_loss": g_loss,
        }

    return wgan_step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    logdir = _custom_loop.fresh_logdir(args.logdir, args.resume)
    rng = np.random.default_rng(args.seed)
    angle = rng.integers(0, 8, size=1000) * (2 * math.pi / 8)
    reference = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.05 * rng.normal(
        size=(1000, 2)
    )
    noise = rng.normal(size=(1000, 2)).astype(np.float32)
    evals = tapekit.board.RunWriters(logdir)

    def adam() -> keras.optimizers.Optimizer:
        return keras.optimizers.Adam(args.lr, beta_1=0.5, beta_2=0.9)

    trainer = tapekit.Trainer(
        models={"generator": lambda: mlp(2, "generator"), "critic": lambda: mlp(1, "critic")},
        step=make_step(args.batch, args.critic_steps, args.penalty),
        optimizers={"generator": adam(), "critic": adam()},
        seed=args.seed,
        logdir=logdir,
        log_every=args.log_every,
        name="08_gradient_penalty",
        **_custom_loop.checkpoint_options(args),
    )
    generator = trainer.models["generator"]

    def distance() -> float:
        return sliced_wasserstein(generator(noise).numpy(), reference)

    def log_samples(tag: str, step: int) -> None:
        picture = scatter(
            [(reference, (0.6, 0.6, 0.6)), (generator(noise).numpy(), (0.85, 0.1, 0.1))]
        )
        with evals.writer("eval").as_default(step=step):
            description = "grey: data, red: generated, in the square [-3, 3]^2"
            tf.summary.image(tag, picture[None], description=description)

    class Distance(tapekit.Callback):
        """Logs the sliced Wasserstein distance of the generated samples at every epoch end."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            evals.scalars("eval", {"sliced_wasserstein_distance": distance()}, trainer.global_step)

    trainer.callbacks.append(Distance())
    before = distance()  # the untrained generator (or the restored one, when resuming)
    print(f"WGAN-GP on 8 Gaussians, lambda = {args.penalty:g}, {args.critic_steps} critic steps")
    print(f"before training: sliced Wasserstein distance to the data {before:.3f}")
    log_samples("samples/start", step=0)
    per_epoch, epochs = _custom_loop.epochs_of(args.steps, 6 * args.log_every)
    start = time.perf_counter()
    history = trainer.fit(None, steps_per_epoch=per_epoch, epochs=epochs)
    if trainer.restored_from:
        print(f"resumed from {trainer.restored_from}")
    trainer.close()
    log_samples("samples/end", step=trainer.global_step)
    evals.close()
    after = distance()
    norm = history["input_gradient_norm"][-1] if history.epochs else float("nan")
    print(f"trained in {time.perf_counter() - start:.1f} s")
    print(
        f"after training: sliced Wasserstein distance to the data {after:.3f} (before {before:.3f})"
    )
    print(f"critic input-gradient norm at interpolates: {norm:.3f} (the penalty's target: 1)")
    print(logs_hint(logdir))
    print(f"weights sha256: {_custom_loop.weights_digest(trainer.trainable_variables)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
