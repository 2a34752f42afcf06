"""Benchmark: ms/step of tapekit.Trainer.fit against keras Model.fit and a hand-written loop.

MLP 784-256-256-10, batch 128, Adam, 16,384 synthetic float32 examples (128 steps per epoch),
all fed the same cached ``tf.data`` pipeline, in one process. Each measurement is one ``fit``
call of ``--epochs`` epochs after a warm-up (tracing) epoch; configurations are interleaved over
``--rounds`` rounds (default 10); the figures are medians over the rounds (the project's rule),
with the minima (the least disturbed runs) beside. Ratios are against ``keras fit`` measured in
the same run.

    python benchmarks/training.py            # full run (about a minute)
    python benchmarks/training.py --rounds 3   # quicker, noisier

Targets (issue 4): Trainer <= 0.80 x fit's time per step and no slower than the hand loop;
(issue 5): logging with default settings at most 5% slower than logging off;
(issue 12): the verbose=1 progress bar (drawn on a real pseudo-terminal) costs at most 2%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

N, BATCH, STEPS = 16384, 128, 16384 // 128


def make_data() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 784)).astype("float32")
    y = rng.integers(0, 10, size=N).astype("int64")
    # tf.data's autotuning off, for every configuration alike: on this 2-vCPU VM it puts some
    # iterators into a mode of exactly 5 ms per step (keras fit and Trainer alike, 10-40% of
    # fits), and a Trainer keeps its iterator from one fit to the next, so such a mode would
    # weigh on one configuration for a whole run. Measured: not slower with it off.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().prefetch(2)
    return ds.with_options(options)


def make_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def loss_fn(model: keras.Model, batch: tuple) -> tf.Tensor:
    x, y = batch
    logits = model(x, training=True)
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def keras_fit(ds: tf.data.Dataset, jit: bool | str) -> Callable[[int], None]:
    model = make_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return lambda epochs: model.fit(ds, epochs=epochs, verbose=0)


def hand_loop(ds: tf.data.Dataset) -> Callable[[int], None]:
    model, opt = make_model(), keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(model, (x, y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    def run(epochs: int) -> None:
        for _ in range(epochs):
            for x, y in ds:
                train_step(x, y)

    return run


def trainer_fit(ds: tf.data.Dataset, verbose: int = 0, **kw) -> Callable[[int], None]:
    kw.setdefault("logdir", False)
    trainer = tapekit.Trainer(make_model(), loss_fn, optimizer=keras.optimizers.Adam(1e-3), **kw)
    run = lambda epochs: trainer.fit(ds, epochs=trainer.epoch + epochs, verbose=verbose)  # noqa: E731
    return on_terminal(run) if verbose else run


def on_terminal(run: Callable[[int], None]) -> Callable[[int], None]:
    """``run`` with sys.stdout on a real pseudo-terminal (drained by a thread), so the
    progress bar of verbose=1 is drawn as on a console."""
    master, slave = os.openpty()
    terminal = os.fdopen(slave, "w", buffering=1)

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()

    def wrapped(epochs: int) -> None:
        saved, sys.stdout = sys.stdout, terminal
        try:
            run(epochs)
        finally:
            sys.stdout = saved

    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved repetitions")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    args = parser.parse_args(argv)
    ds = make_data()
    logdir = tempfile.mkdtemp(prefix="tapekit-bench-")
    configs = {
        "keras fit (jit_compile=False)": lambda: keras_fit(ds, False),
        "keras fit (default jit 'auto')": lambda: keras_fit(ds, "auto"),
        "hand-written tf.function loop": lambda: hand_loop(ds),
        "Trainer.fit steps_per_execution=1": lambda: trainer_fit(ds, steps_per_execution=1),
        "Trainer.fit (default steps per call)": lambda: trainer_fit(ds),
        "Trainer.fit steps_per_execution=16": lambda: trainer_fit(ds, steps_per_execution=16),
        "Trainer.fit jit_compile=True": lambda: trainer_fit(ds, jit_compile=True),
        "Trainer.fit logging on (defaults)": lambda: trainer_fit(ds, logdir=logdir),
        "Trainer.fit verbose=1 bar on a tty": lambda: trainer_fit(ds, verbose=1),
        "Trainer.fit spe=1 verbose=1 bar": lambda: trainer_fit(
            ds, verbose=1, steps_per_execution=1
        ),
    }
    runners = {}
    for name, make in configs.items():
        runners[name] = make()
        runners[name](1)  # warm-up: tracing, XLA compilation, dataset cache
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(args.epochs)
            times[name].append((time.perf_counter() - start) / (args.epochs * STEPS) * 1e3)
    best = {name: statistics.median(t) for name, t in times.items()}
    low = {name: min(t) for name, t in times.items()}
    base, hand = best["keras fit (jit_compile=False)"], best["hand-written tf.function loop"]
    base_low = low["keras fit (jit_compile=False)"]
    print(f"MLP 784-256-256-10, batch {BATCH}, Adam, {N} examples, {STEPS} steps/epoch")
    print(
        f"{'configuration':40s} {'median ms':>9s} {'vs fit':>7s} {'vs hand':>8s} "
        f"{'min ms':>7s} {'vs fit':>7s}"
    )
    for name, ms in best.items():
        lo = low[name]
        print(
            f"{name:40s} {ms:9.3f} {ms / base:7.2f} {ms / hand:8.2f} {lo:7.3f} {lo / base_low:7.2f}"
        )
    on, off = (
        best["Trainer.fit logging on (defaults)"],
        best["Trainer.fit (default steps per call)"],
    )
    print(f"logging overhead (on/off): {on / off - 1:+.1%}")
    ours = "Trainer.fit (default steps per call)"
    print(f"Trainer / keras fit (minima): {low[ours] / base_low:.2f}")
    print(f"Trainer / keras fit: {best[ours] / base:.2f}")
    bar, bar1 = best["Trainer.fit verbose=1 bar on a tty"], best["Trainer.fit spe=1 verbose=1 bar"]
    one = best["Trainer.fit steps_per_execution=1"]
    print(f"progress bar overhead (bar/none): {bar / off - 1:+.1%}")
    print(f"progress bar overhead at steps_per_execution=1: {bar1 / one - 1:+.1%}")


if __name__ == "__main__":
    main()
