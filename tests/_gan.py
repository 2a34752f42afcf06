"""A tiny WGAN-GP used by the custom-step tests (tests/test_custom_step.py, _gan_child.py).

Two named models and optimizers; each step runs two critic updates with a gradient penalty and
one generator update. The noise comes from ``ctx.rng`` (the checkpointed generator) or, for the
replica-equality test, from the batch (per-example noise that does not depend on the replica).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import tapekit

CRITIC_STEPS = 2
PENALTY = 5.0


def mlp(out: int, name: str) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(8, activation="tanh", name="hidden"),
            keras.layers.Dense(out, name="out"),
        ],
        name=name,
    )


def models(seed: int = 0) -> dict:
    def generator() -> keras.Model:
        keras.utils.set_random_seed(seed)
        return mlp(2, "generator")

    def critic() -> keras.Model:
        keras.utils.set_random_seed(seed + 1)
        return mlp(1, "critic")

    return {"generator": generator, "critic": critic}


def optimizers() -> dict:
    return {
        "generator": keras.optimizers.Adam(1e-2, beta_1=0.5),
        "critic": keras.optimizers.Adam(1e-2, beta_1=0.5),
    }


def real_data(n: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle = rng.integers(0, 4, size=n) * (np.pi / 2)
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1) * 2.0
    return (x + 0.05 * rng.normal(size=x.shape)).astype("float32")


def noisy_data(n: int = 96, seed: int = 0) -> dict:
    """Real samples with their per-example noise (z for each critic step and the generator)."""
    rng = np.random.default_rng(seed + 10)
    return {
        "real": real_data(n, seed),
        "z": rng.normal(size=(n, CRITIC_STEPS + 1, 2)).astype("float32"),
        "eps": rng.uniform(size=(n, CRITIC_STEPS, 1)).astype("float32"),
    }


def make_step(noise: str = "rng", nan_at: int | None = None):
    """The WGAN-GP step; ``noise`` is "rng" (ctx.rng) or "batch"; NaN critic loss at a step."""

    def wgan_step(ctx, batch):
        def g(z):  # float32 outputs under mixed precision too
            return tf.cast(ctx.models["generator"](z), tf.float32)

        def c(x):
            return tf.cast(ctx.models["critic"](x), tf.float32)

        real = batch["real"] if isinstance(batch, dict) else batch
        n = tf.shape(real)[0]
        critic_input_grad = tapekit.grad(lambda x: tf.reduce_sum(c(x)))
        for i in range(CRITIC_STEPS):
            if noise == "rng":
                z, eps = ctx.rng.normal([n, 2]), ctx.rng.uniform([n, 1])
            else:
                z, eps = batch["z"][:, i], batch["eps"][:, i]
            fake = g(z)
            x_hat = eps * real + (1 - eps) * fake
            with tf.GradientTape() as tape:
                w = tf.reduce_mean(c(real)) - tf.reduce_mean(c(fake))
                norms = tf.norm(critic_input_grad(x_hat), axis=1)
                penalty = tf.reduce_mean((norms - 1.0) ** 2)
                critic_loss = -w + PENALTY * penalty
                if nan_at is not None:
                    factor = tf.where(tf.equal(ctx.step, nan_at), np.nan, 1.0)
                    critic_loss = critic_loss * factor  # NaN loss and gradients at that step
            ctx.minimize("critic", critic_loss, tape)
        z = ctx.rng.normal([n, 2]) if noise == "rng" else batch["z"][:, CRITIC_STEPS]
        with tf.GradientTape() as tape:
            gen_loss = -tf.reduce_mean(c(g(z)))
        ctx.minimize("generator", gen_loss, tape)
        return {"critic_loss": critic_loss, "wasserstein": w, "generator_loss": gen_loss}

    return wgan_step


def trainer(noise: str = "rng", nan_at: int | None = None, **kw) -> tapekit.Trainer:
    kw.setdefault("logdir", False)
    kw.setdefault("seed", 3)
    with (kw.get("strategy") or tf.distribute.get_strategy()).scope():
        opts = optimizers()
    return tapekit.Trainer(models=models(), step=make_step(noise, nan_at), optimizers=opts, **kw)
