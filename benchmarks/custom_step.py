"""Benchmark: a user-written step (recipe 08's WGAN-GP) through Trainer.fit vs hand-written loops.

One step = 5 critic updates with the gradient penalty (a gradient of a gradient) + 1 generator
update, batch 256, two Adam optimizers, samples and noise from a seeded ``tf.random.Generator``.
Configurations, all in one process and interleaved over ``--rounds`` rounds, each built
``--instances`` times (identical instances of one configuration differ by up to 5-10% on a
shared VM, run after run: memory placement, threads; one instance per configuration would
measure that luck); the figures are medians over the rounds (the project's rule) of the mean
over the instances, with the minima (the least disturbed runs) beside:

* hand-written, one ``tf.function`` call per step (the usual custom loop);
* hand-written, ``--steps`` steps inside one ``tf.function`` (a ``tf.range`` loop), also with
  each update waiting for a finiteness check, as the Trainer's default ``on_nonfinite="raise"``
  does (what the check itself costs, apart from the rest of the Trainer), and also averaging
  the four values the step returns, as the Trainer does for its console line and ``History``
  (what the rest of the Trainer costs, apart from what the step asks it to report);
* ``Trainer.fit(None, steps_per_epoch=...)`` with the same step, logging off (the default
  ``steps_per_execution``: about half a second of steps per call), with logging on, and with
  the check off (``on_nonfinite=None``, what the hand loops do).

The last line compares ``Trainer.fit`` (logging off, the default check on) with the FASTER of
the two hand loops (the ``tf.range`` loop): the median over rounds of the two times' ratio
within each round (measured seconds apart, so a machine that slows down for a while, as shared
VMs do, slows both). Target (issue 11): <= 1.05. The medians of the times themselves are
printed too, and the ratio per instance (its spread shows the instances' luck).

    python benchmarks/custom_step.py             # about five minutes
    python benchmarks/custom_step.py --rounds 5 --instances 1  # quicker, noisier
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


def hand_step(
    checked: bool = False, report: bool = False
) -> tuple[Callable[[], None], Callable[[tf.Tensor], None]]:
    """The step written by hand: ``(one_step, many_steps)``, both compiled; with ``checked``
    each update waits for a finiteness check (what the Trainer adds by default); with
    ``report`` the loop also averages the four values recipe 08's step returns, as the
    Trainer does for its console line and ``History`` (in variables, as ``keras.metrics.Mean``
    would)."""
    generator, critic = _models()
    g_opt, c_opt = _adam(), _adam()
    rng = tf.random.Generator.from_seed(0)
    input_gradient = tapekit.grad(lambda x: tf.reduce_sum(critic(x)))
    sums = [tf.Variable(0.0) for _ in range(5)]  # four values and the count (with report)

    def apply(opt, loss, grads, variables) -> None:
        if checked:
            _checked_apply(opt, loss, grads, variables)
        else:
            opt.apply(grads, variables)

    def step() -> None:
        wasserstein = norms = penalty = None
        for _ in range(CRITIC_STEPS):
            real = R08.real_samples(BATCH, rng)
            fake = generator(rng.normal((BATCH, 2)))
            eps = rng.uniform((BATCH, 1))
            x_hat = eps * real + (1 - eps) * fake
            with tf.GradientTape() as tape:
                wasserstein = tf.reduce_mean(critic(real)) - tf.reduce_mean(critic(fake))
                norms = tf.norm(input_gradient(x_hat), axis=1)
                penalty = tf.reduce_mean((norms - 1.0) ** 2)
                loss = -wasserstein + PENALTY * penalty
            grads = tape.gradient(loss, critic.trainable_variables)
            apply(c_opt, loss, grads, critic.trainable_variables)
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(critic(generator(rng.normal((BATCH, 2)))))
        grads = tape.gradient(g_loss, generator.trainable_variables)
        apply(g_opt, g_loss, grads, generator.trainable_variables)
        if report:
            for total, value in zip(
                sums, (wasserstein, penalty, tf.reduce_mean(norms), g_loss, tf.constant(1.0))
            ):
                total.assign_add(value)

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
    parser.add_argument("--rounds", type=int, default=15, help="interleaved repetitions")
    parser.add_argument("--instances", type=int, default=3, help="builds of each configuration")
    parser.add_argument("--steps", type=int, default=128, help="steps per measurement")
    args = parser.parse_args(argv)
    steps = args.steps
    n = tf.constant(steps, tf.int64)

    def fit(trainer: tapekit.Trainer) -> Callable[[], None]:
        return lambda: trainer.fit(None, steps_per_epoch=steps, epochs=trainer.epoch + 1, verbose=0)

    def one_per_step() -> Callable[[], None]:
        one = hand_step()[0]

        def run() -> None:
            for _ in range(steps):
                one()

        return run

    def in_one_call(checked: bool, report: bool = False) -> Callable[[], None]:
        many = hand_step(checked=checked, report=report)[1]
        return lambda: many(n)

    builders: dict[str, Callable[[], Callable[[], None]]] = {
        "hand-written, tf.function per step": one_per_step,
        "hand-written, tf.range loop in one call": lambda: in_one_call(False),
        "  the same, each update checked for NaN": lambda: in_one_call(True),
        "  the same, averaging the step's 4 values": lambda: in_one_call(False, report=True),
        "Trainer.fit, custom step, logging off": lambda: fit(trainer_fit()),
        "Trainer.fit, custom step, logging on": lambda: fit(
            trainer_fit(logdir=tempfile.mkdtemp(prefix="tapekit-bench-"))
        ),
        "Trainer.fit, logging off, on_nonfinite=None": lambda: fit(trainer_fit(on_nonfinite=None)),
    }
    names = list(builders)
    runs = []  # (name, instance, run), built in turns: no configuration is always built first
    for i in range(args.instances):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            runs.append((name, i, builders[name]()))
    for _, _, run in runs:
        run()  # warm-up: tracing
    each: dict[tuple[str, int], list[float]] = {(name, i): [] for name, i, _ in runs}
    for r in range(args.rounds):  # every other round in reverse order: no place is favoured
        for name, i, run in runs[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            run()
            each[(name, i)].append((time.perf_counter() - start) / steps * 1e3)
    times = {  # per round: the mean over the instances
        name: [statistics.fmean(t) for t in zip(*(each[(name, i)] for i in range(args.instances)))]
        for name in names
    }
    med = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}
    hands = ("hand-written, tf.function per step", "hand-written, tf.range loop in one call")
    hand, hand_low = min(med[h] for h in hands), min(low[h] for h in hands)
    print(
        f"WGAN-GP step: {CRITIC_STEPS} critic updates (gradient penalty) + 1 generator update, "
        f"batch {BATCH}; {args.rounds} alternating rounds of {steps} steps, "
        f"{args.instances} instance(s) of each configuration"
    )
    print(f"{'configuration':42s} {'median ms':>9s} {'vs hand':>8s} {'min ms':>8s} {'vs hand':>8s}")
    for name in times:
        m, lo = med[name], low[name]
        print(f"{name:42s} {m:9.3f} {m / hand:8.2f} {lo:8.3f} {lo / hand_low:8.2f}")
    ours = "Trainer.fit, custom step, logging off"
    checked = "  the same, each update checked for NaN"
    averaging = "  the same, averaging the step's 4 values"
    free, base = "Trainer.fit, logging off, on_nonfinite=None", hands[1]

    def paired(a: str, b: str) -> float:  # the median of the rounds' ratios
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    def instance(i: int) -> float:
        pairs = zip(each[(ours, i)], each[(base, i)], strict=True)
        return statistics.median(x / y for x, y in pairs)

    if args.instances > 1:
        spread = " ".join(f"{instance(i):.2f}" for i in range(args.instances))
        print(f"custom step / hand-written, per instance pair (per round): {spread}")
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
    print(
        f"custom step without the check / hand-written averaging the same values: "
        f"{paired(free, averaging):.2f} (per round)"
    )
    print(f"custom step / hand-written: {paired(ours, base):.2f}")


if __name__ == "__main__":
    main()
