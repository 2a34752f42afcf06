"""Cost of tapekit.board.GradientLogger inside a compiled training step.

A small MLP is trained with a hand-written tf.function step, three ways interleaved in one
process: no logging (the baseline), GradientLogger with the Trainer's defaults (norms every step,
histograms every 100 steps) and with norms every 10 steps. The printed figure is the ratio of
median (and minimum) step times against the baseline, for a tiny step where fixed costs dominate
and a medium one. Target (issue 5): <= 1.05 with the defaults for realistic steps.

    python benchmarks/gradient_logger.py [--repeats 15] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tapekit.board import GradientLogger  # noqa: E402


def make_step(logger: GradientLogger | None, width: int = 128, batch: int = 256):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 32)), tf.float32)
    y = tf.constant(rng.integers(0, 10, size=batch))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if logger is not None:
            logger(step, grads, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        step.assign_add(1)
        return loss

    return train_step


def time_steps(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    float(fn())  # wait for the last step
    return (time.perf_counter() - start) / (steps + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    logdir = tempfile.mkdtemp(prefix="tapekit-bench-")
    sizes = {
        "small MLP (128 wide, batch 256)": (128, 256, args.steps),
        "medium MLP (512 wide, batch 2048)": (512, 2048, max(10, args.steps // 10)),
    }
    for label, (width, batch, steps) in sizes.items():
        writers = [
            tf.summary.create_file_writer(os.path.join(logdir, f"{width}_{i}")) for i in (0, 1)
        ]
        variants = {
            "no logging": make_step(None, width, batch),
            "defaults (norms 1, hist 100)": make_step(
                GradientLogger(writers[0], histogram_every=100, norms_every=1), width, batch
            ),
            "norms every 10, hist 100": make_step(
                GradientLogger(writers[1], histogram_every=100, norms_every=10), width, batch
            ),
        }
        for fn in variants.values():
            fn()  # trace
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
            for name, fn in variants.items():
                times[name].append(time_steps(fn, steps))
        print(label)
        base, base_min = statistics.median(times["no logging"]), min(times["no logging"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(
                f"  {name:<30} {med * 1e3:7.3f} ms/step   ratio median {med / base:5.3f}"
                f"   min {min(ts) / base_min:5.3f}"
            )
        for w in writers:
            w.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
