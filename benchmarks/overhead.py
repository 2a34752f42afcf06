"""Overhead of tapekit.grad against the same hand-written tf.GradientTape code.

Both run the same small functions, eagerly and inside tf.function, interleaved in one process;
the printed figure is the ratio of median times (tapekit / hand-written). Targets: <= 1.10 eager,
<= 1.02 inside tf.function.

    python benchmarks/overhead.py [--repeats 30] [--number 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit as tk  # noqa: E402

A = tf.constant(np.random.default_rng(0).normal(size=(16, 16)), tf.float32)


def quadratic(x):
    return tf.reduce_sum(x * x)


def mlp_like(x):
    return tf.reduce_sum(tf.tanh(tf.linalg.matvec(A, x)) ** 2) + tf.reduce_sum(x**4)


def two_args(x, y):
    return tf.reduce_sum(tf.sin(x) * y)


def by_hand(f, argnums):
    def g(*args):
        sources = [args[i] for i in argnums]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            y = f(*args)
        grads = tape.gradient(y, sources)
        return grads[0] if len(grads) == 1 else tuple(grads)

    return g


def timeit(fn, args, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn(*args)
    return (time.perf_counter() - start) / number


def compare(name, manual, ours, args, repeats: int, number: int) -> float:
    manual(*args), ours(*args)  # warm up (and trace, for tf.function)
    tm, to = [], []
    for _ in range(repeats):  # interleaved, so drift and neighbours hit both alike
        tm.append(timeit(manual, args, number))
        to.append(timeit(ours, args, number))
    m, o = statistics.median(tm), statistics.median(to)
    ratio = o / m
    print(f"{name:<34} by hand {m * 1e6:8.1f} us   tapekit {o * 1e6:8.1f} us   ratio {ratio:5.3f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--number", type=int, default=200)
    opts = parser.parse_args(argv)

    x = tf.constant(np.linspace(-1, 1, 16), tf.float32)
    y = tf.constant(np.linspace(0, 2, 16), tf.float32)
    cases = [
        ("quadratic", quadratic, (0,), (x,)),
        ("mlp_like", mlp_like, (0,), (x,)),
        ("two_args argnums=(0, 1)", two_args, (0, 1), (x, y)),
    ]
    results = {"eager": [], "tf.function": []}
    for label, f, argnums, args in cases:
        manual = by_hand(f, argnums)
        ours = tk.grad(f, argnums=argnums if len(argnums) > 1 else argnums[0])
        results["eager"].append(
            compare(f"eager {label}", manual, ours, args, opts.repeats, opts.number)
        )
        results["tf.function"].append(
            compare(
                f"tf.function {label}",
                tf.function(manual),
                tf.function(ours),
                args,
                opts.repeats,
                opts.number,
            )
        )
    targets = {"eager": 1.10, "tf.function": 1.02}
    print()
    for mode, ratios in results.items():
        worst = max(ratios)
        verdict = "meets" if worst <= targets[mode] else "MISSES"
        print(f"{mode:<12} worst ratio {worst:5.3f}  (target <= {targets[mode]:.2f}: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
