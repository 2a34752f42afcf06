"""Benchmark: a user-written step (recipe 08's WGAN-GP) through Trainer.fit vs hand-written loops.

One step = 5 critic updates with the gradient penalty (a gradient of a gradient) + 1 generator
update, batch 256, two Adam optimizers, samples and noise from a seeded ``tf.random.Generator``.
Configurations, all in one process and interleaved over ``--rounds`` rounds; the figures are
medians over the rounds (the project's rule), with the minima (the least disturbed runs) beside:

* hand-written, one ``tf.function`` call per step (the usual custom loop);
* hand-written, ``--steps`` steps inside one ``tf.function`` (a ``tf.range`` loop), also with
  each update waiting for a finiteness check, as the Trainer's default ``on_nonfinite="raise"``
  does (what the check itself costs, apart from the rest of the Trainer);
* ``Trainer.fit(None, steps_per_epoch=...)`` with the same step, logging off (the default
  ``steps_per_execution``: up to 64 steps per call), with logging on, and with the check off
  (``on_nonfinite=None``, what the hand loops do).

The last line compares ``Trainer.fit`` (logging off, the default check on) with the FASTER of
the two hand loops (the ``tf.range`` loop): the median over rounds of the two times' ratio
within each round (measured seconds apart, so a machine that slows down for a while, as shared
VMs do, slows both). Target (issue 11): <= 1.05. The medians of the times themselves are
printed too.

    python benchmarks/custom_step.py             # about two minutes
    python benchmarks/custom_step.py --rounds 5  # quicker, noisier
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

BATCH, CRITIC_STEPS, PENALTY = 256, 5, 10.0


def _recipe():
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    if str(recipes) not in sys.path:  # the recipe imports its helpers (_custom_loop, _common)
        sys.path.insert(0, str(recipes))
    path = recipes / "08_gradient_penalty.py"
    spec = importlib.util.spec_from_file_location("recipe_08", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R08 = _recipe()


def _models() -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(0)
    return R08.mlp(2, "generator"), R08.mlp(1, "critic")


def _adam() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(1e-3, beta_1=0.5, beta_2=0.9)


def _checked_apply(opt: keras.optimizers.Optimizer, loss: tf.Tensor, grads: list, variables: list):
    """``opt.apply`` only if the loss and the gradients are finite (the update waits for an
    Assert), as the Trainer's default ``on_nonfinite="raise"`` does."""
    finite = tf.logical_and(
        tf.math.is_finite(loss), tf.math.is_finite(tf.linalg.global_norm(grads))
    )
    check = tf.raw_ops.Assert(condition=finite, data=[tf.constant("non-finite update")])
    with tf.control_dependencies([check]):
        opt.apply(grads, variables)


def hand_step(checked: bool = False) -> tuple[Callable[[], None], Callable[[tf.Tensor], None]]:
    """The step written by hand: ``(one_step, many_steps)``, both compiled; with ``checked``
    each update waits for a finiteness check (what the Trainer adds by default)."""
    generator, critic = _models()
    g_opt, c_opt = _adam(), _adam()
    rng = tf.random.Generator.from_seed(0)
    input_gradient = tapekit.grad(lambda x: tf.reduce_sum(critic(x)))

    def apply(opt, loss, grads, variables) -> None:
        if checked:
            _checked_apply(opt, loss, grads, variables)
        else:
            opt.apply(grads, variables)

    def step() -> None:
        for _ in range(CRITIC_STEPS):
            real = R08.real_samples(BATCH, rng)
            fake = generator(rng.normal((BATCH, 2)))
            eps = rng.uniform((BATCH, 1))
            x_hat = eps * real + (1 - eps) * fake
            with tf.GradientTape() as tape:
                wasserstein = tf.reduce_mean(critic(real)) - tf.reduce_mean(critic(fake))
                norms = tf.norm(input_gradient(x_hat), axis=1)
                loss = -wasserstein + PENALTY * tf.reduce_mean((norms - 1.0) ** 2)
            grads = tape.gradient(loss, critic.trainable_variables)
            apply(c_opt, loss, grads, critic.trainable_variables)
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(critic(generator(rng.normal((BATCH, 2)))))
        grads = tape.gradient(g_loss, generator.trainable_variables)
        apply(g_opt, g_loss, grads, generator.trainable_variables)

    one = tf.function(step)

    @tf.function
    def many(n: tf.Tensor) -> None:
        for _ in tf.range(n):
            step()

    return one, many


def trainer_fit(**kw) -> tapekit.Trainer:
    kw.setdefault("logdir", False)
    generator, critic = _models()
    return tapekit.Trainer(
        models={"generator": generator, "critic": critic},
        step=R08.make_step(BATCH, CRITIC_STEPS, PENALTY),
        optimizers={"generator": _adam(), "critic": _adam()},
        seed=0,
        **kw,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=128, help="steps per measurement")
    args = parser.parse_args(argv)
    steps = args.steps
    one, many = hand_step()
    _, many_checked = hand_step(checked=True)
    n = tf.constant(steps, tf.int64)
    off, on = trainer_fit(), trainer_fit(logdir=tempfile.mkdtemp(prefix="tapekit-bench-"))
    unchecked = trainer_fit(on_nonfinite=None)

    def run_one() -> None:
        for _ in range(steps):
            one()

    def fit(trainer: tapekit.Trainer) -> Callable[[], None]:
        return lambda: trainer.fit(None, steps_per_epoch=steps, epochs=trainer.epoch + 1, verbose=0)

    runners = {
        "hand-written, tf.function per step": run_one,
        "hand-written, tf.range loop in one call": lambda: many(n),
        "  the same, each update checked for NaN": lambda: many_checked(n),
        "Trainer.fit, custom step, logging off": fit(off),
        "Trainer.fit, custom step, logging on": fit(on),
        "Trainer.fit, logging off, on_nonfinite=None": fit(unchecked),
    }
    for run in runners.values():
        run()  # warm-up: tracing
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):  # every other round in reverse order: no place is favoured
        for name, run in list(runners.items())[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}
    hands = ("hand-written, tf.function per step", "hand-written, tf.range loop in one call")
    hand, hand_low = min(med[h] for h in hands), min(low[h] for h in hands)
    print(
        f"WGAN-GP step: {CRITIC_STEPS} critic updates (gradient penalty) + 1 generator update, "
        f"batch {BATCH}; {args.rounds} alternating rounds of {steps} steps"
    )
    print(f"{'configuration':42s} {'median ms':>9s} {'vs hand':>8s} {'min ms':>8s} {'vs hand':>8s}")
    for name in times:
        m, lo = med[name], low[name]
        print(f"{name:42s} {m:9.3f} {m / hand:8.2f} {lo:8.3f} {lo / hand_low:8.2f}")
    ours = "Trainer.fit, custom step, logging off"
    checked = "  the same, each update checked for NaN"
    free, base = "Trainer.fit, logging off, on_nonfinite=None", hands[1]

    def paired(a: str, b: str) -> float:  # the median of the rounds' ratios
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    print(f"custom step / hand-written, medians of the times: {med[ours] / hand:.2f}")
    print(f"custom step / hand-written (minima): {low[ours] / hand_low:.2f}")
    print(
        f"custom step / hand-written with the same NaN check: {paired(ours, checked):.2f} "
        f"(per round)"
    )
    print(
        f"custom step without the check (on_nonfinite=None) / hand-written: "
        f"{paired(free, base):.2f} (per round); the check itself: {paired(ours, free):.2f}"
    )
    print(f"custom step / hand-written: {paired(ours, base):.2f}")


if __name__ == "__main__":
    main()
