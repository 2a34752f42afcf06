"""Rematerialization benchmark: peak memory and time of a gradient with and without checkpoint.

    loss(W) = mean(MLP(x)²),  32 Dense layers of 512 (tanh), batch 256, float32

The gradient w.r.t. all 32 kernels and biases is taken in a ``tf.function`` three ways:

    plain            no checkpointing: every layer's activations stay alive for the backward pass
    checkpoint/4     tapekit.checkpoint around each group of 4 layers (8 checkpointed segments)
    checkpoint/1     tapekit.checkpoint around every layer

Memory is the peak TensorFlow's CPU allocator reports during one warm call
(``tf.config.experimental.get_memory_info("CPU:0")`` after ``reset_memory_stats``), minus what
was allocated before it (weights, input). The returned gradients (as large as the weights) are
part of every peak; the "held" column subtracts them, leaving what the backward pass keeps.
Time is the median over interleaved rounds in the same run (the CPU is shared, so figures are
noisy). Targets: checkpoint peak <= 0.5x plain at <= 1.5x the time.

    .venv/bin/python benchmarks/remat.py [--layers 32] [--width 512] [--batch 256] [--rounds 15]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

tf.get_logger().setLevel("ERROR")  # six tf.functions from one code location: TF says so


def make_model(layers: int, width: int) -> keras.Sequential:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((width,))]
        + [keras.layers.Dense(width, activation="tanh") for _ in range(layers)]
    )
    return model


def gradient_fn(model: keras.Sequential, group: int | None, sgd: bool) -> Callable:
    """A compiled gradient of the loss, checkpointing ``group`` layers at a time (or none).

    With ``sgd`` each gradient is consumed by an SGD update as soon as it is computed (a
    training step; returns the loss), otherwise the gradients are returned.
    """
    layers = model.layers
    if group is None:
        blocks = layers
    else:

        def segment(chunk: list) -> Callable:
            def run(h: tf.Tensor) -> tf.Tensor:
                for layer in chunk:
                    h = layer(h)
                return h

            return tapekit.checkpoint(run)

        blocks = [segment(layers[i : i + group]) for i in range(0, len(layers), group)]
    variables = model.trainable_variables

    @tf.function
    def step(x: tf.Tensor) -> tf.Tensor | list:
        with tf.GradientTape() as tape:
            h = x
            for block in blocks:
                h = block(h)
            loss = tf.reduce_mean(h**2)
        grads = tape.gradient(loss, variables)
        if not sgd:
            return grads
        for v, g in zip(variables, grads):
            v.assign_sub(1e-6 * g)
        return loss

    return step


def peak_mb(fn: Callable, x: tf.Tensor) -> float:
    fn(x)  # trace and warm up
    gc.collect()
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    out = fn(x)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    del out
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    model = make_model(args.layers, args.width)
    x = tf.random.normal([args.batch, args.width])
    groups = {"plain": None, "checkpoint/4": 4, "checkpoint/1": 1}
    returning = {name: gradient_fn(model, g, sgd=False) for name, g in groups.items()}
    fns = {name: gradient_fn(model, g, sgd=True) for name, g in groups.items()}
    reference = [g.numpy() for g in returning["plain"](x)]
    for name, fn in returning.items():
        err = max(float(np.max(np.abs(a.numpy() - b))) for a, b in zip(fn(x), reference))
        assert err < 1e-5, f"{name} differs from the plain gradient by {err}"
    grads_mb = sum(v.numpy().nbytes for v in model.trainable_variables) / 2**20
    peaks = {name: peak_mb(fn, x) for name, fn in fns.items()}
    peaks_returned = {name: peak_mb(fn, x) for name, fn in returning.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for _ in range(args.rounds):
        np.random.default_rng().shuffle(order)
        for name in order:
            start = time.perf_counter()
            fns[name](x).numpy()  # wait for the result
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"gradient of a {args.layers}x{args.width} tanh MLP, batch {args.batch}, float32 "
        f"(gradients themselves: {grads_mb:.1f} MB); {args.rounds} interleaved rounds"
    )
    print(
        f"{'':14s} {'step peak MB':>13s} {'x plain':>8s} {'ms':>8s} {'x plain':>8s}   "
        f"{'grads returned: peak MB':>24s}"
    )
    for name in fns:
        print(
            f"{name:14s} {peaks[name]:13.1f} {peaks[name] / peaks['plain']:8.2f} "
            f"{med[name] * 1e3:8.1f} {med[name] / med['plain']:8.2f}   "
            f"{peaks_returned[name]:24.1f}"
        )


if __name__ == "__main__":
    main()
