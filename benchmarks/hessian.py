"""Hessian benchmark: warm ``tapekit.hessian(f)(x)`` against hand-written TensorFlow, JAX, PyTorch.

    f(x) = sum(tanh(A x)²) + sum(x⁴),   x ∈ R^n, float32,   n = 64, 256, 1024

Compared in one run, interleaved round by round (other processes share the CPU, so the median
and minimum over rounds are printed, and ratios use medians):

    tapekit              tapekit.hessian(f)(x), built anew on each call, from eager code
    tapekit jit          tapekit.hessian(f, jit_compile=True)(x)
    (a) eager tapes      two hand-nested tf.GradientTape, outer.jacobian(inner.gradient), eager
    (b) tf.function      the same nested tapes inside one tf.function
    (c) jax.jit          jax.jit(jax.hessian(f))                 (skipped if JAX is not installed)
    (d) torch.func       torch.func.hessian(f)                   (skipped if PyTorch is missing)

Targets at n = 256: tapekit >= 50x faster than (a); <= 2.0x the time of (c) by default and
<= 1.3x with jit_compile=True; faster than (d). It also prints the peak memory TensorFlow's CPU
allocator reports for one warm n = 1024 Hessian with and without ``chunk_size``.

    .venv/bin/python benchmarks/hessian.py [--sizes 64 256 1024] [--rounds 30]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

tf.get_logger().setLevel("ERROR")  # the eager baseline retraces pfor on every call and says so

try:
    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402
except ImportError:  # a peer that is not installed is skipped
    jax = None
try:
    import torch  # noqa: E402
    import torch.func  # noqa: E402
except ImportError:
    torch = None


def problem(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    a = (rng.normal(size=(n, n)) / np.sqrt(n)).astype(np.float32)
    return a, rng.normal(size=n).astype(np.float32)


def candidates(a_np: np.ndarray, x_np: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a call computing the Hessian and returning it as a NumPy array."""
    a, x = tf.constant(a_np), tf.constant(x_np)

    def f(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.tanh(tf.linalg.matvec(a, x)) ** 2) + tf.reduce_sum(x**4)

    def nested_tapes(x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = f(x)
            g = inner.gradient(y, x)
        return outer.jacobian(g, x)

    compiled = tf.function(nested_tapes)
    out: dict[str, Callable[[], np.ndarray]] = {
        "tapekit": lambda: tapekit.hessian(f)(x).numpy(),
        "tapekit jit": lambda: tapekit.hessian(f, jit_compile=True)(x).numpy(),
        "(a) eager tapes": lambda: nested_tapes(x).numpy(),
        "(b) tf.function": lambda: compiled(x).numpy(),
    }
    if jax is not None:
        aj, xj = jnp.asarray(a_np), jnp.asarray(x_np)
        jh = jax.jit(jax.hessian(lambda x: jnp.sum(jnp.tanh(aj @ x) ** 2) + jnp.sum(x**4)))
        out["(c) jax.jit"] = lambda: np.asarray(jh(xj).block_until_ready())
    if torch is not None:
        at, xt = torch.from_numpy(a_np), torch.from_numpy(x_np)
        th = torch.func.hessian(lambda x: torch.sum(torch.tanh(at @ x) ** 2) + torch.sum(x**4))
        out["(d) torch.func"] = lambda: th(xt).numpy()
    return out


def measure(calls: dict[str, Callable[[], np.ndarray]], rounds: int, budget: float) -> dict:
    """Median/min seconds per call; candidates interleaved in a shuffled order each round."""
    reference = calls["tapekit"]()
    times: dict[str, list[float]] = {name: [] for name in calls}
    errors: dict[str, float] = {}
    limit: dict[str, int] = {}
    for name, call in calls.items():
        result = call()  # warm-up: traces, compiles
        start = time.perf_counter()
        call()
        warm = time.perf_counter() - start
        errors[name] = float(np.max(np.abs(result - reference)) / np.max(np.abs(reference)))
        # slow candidates (the eager tapes) get fewer rounds so the run stays short
        limit[name] = max(3, min(rounds, int(budget / max(warm, 1e-9))))
    order = list(calls)
    shuffle = np.random.default_rng(0).shuffle
    for r in range(rounds):
        shuffle(order)
        gc.collect()  # collect between rounds, never inside a timed call
        gc.disable()
        try:
            for name in order:
                if r < limit[name]:
                    start = time.perf_counter()
                    calls[name]()
                    times[name].append(time.perf_counter() - start)
        finally:
            gc.enable()
    return {name: (statistics.median(t), min(t), errors[name]) for name, t in times.items()}


def peak_memory(a_np: np.ndarray, x_np: np.ndarray, chunk_size: int | None) -> float:
    """Peak MB held by TensorFlow's CPU allocator during one warm tapekit.hessian call."""
    a, x = tf.constant(a_np), tf.constant(x_np)

    def f(x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.tanh(tf.linalg.matvec(a, x)) ** 2) + tf.reduce_sum(x**4)

    h = tapekit.hessian(f, chunk_size=chunk_size)
    h(x).numpy()  # trace and warm up
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    h(x).numpy()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per slow candidate")
    args = parser.parse_args()
    print(
        f"TensorFlow {tf.__version__}, JAX {getattr(jax, '__version__', 'not installed')}, "
        f"PyTorch {getattr(torch, '__version__', 'not installed')}, {os.cpu_count()} CPUs"
    )
    summary = {}
    for n in args.sizes:
        a_np, x_np = problem(n)
        res = measure(candidates(a_np, x_np), args.rounds, args.budget)
        base = res["tapekit"][0]
        print(f"\nn = {n}   (ratio = time / tapekit's time; rel.err vs tapekit)")
        print(f"  {'':18s} {'median ms':>10s} {'min ms':>9s} {'ratio':>8s} {'rel.err':>9s}")
        for name, (med, low, err) in res.items():
            print(f"  {name:18s} {med * 1e3:10.3f} {low * 1e3:9.3f} {med / base:8.2f} {err:9.1e}")
        summary[n] = res
    if 256 in summary:
        res = summary[256]
        tk, tkj = res["tapekit"][0], res["tapekit jit"][0]
        print("\ntargets at n = 256:")
        speedup = res["(a) eager tapes"][0] / tk
        print(
            f"  vs eager nested tapes: {speedup:7.1f}x faster   (target >= 50x)  "
            f"{'MET' if speedup >= 50 else 'MISSED'}"
        )
        if "(c) jax.jit" in res:
            jx = res["(c) jax.jit"][0]
            print(
                f"  vs jax.jit(hessian):   {tk / jx:7.2f}x the time (target <= 2.0)   "
                f"{'MET' if tk / jx <= 2.0 else 'MISSED'}"
            )
            print(
                f"  jit_compile=True:      {tkj / jx:7.2f}x the time (target <= 1.3)   "
                f"{'MET' if tkj / jx <= 1.3 else 'MISSED'}"
            )
        if "(d) torch.func" in res:
            th = res["(d) torch.func"][0]
            print(
                f"  vs torch.func.hessian: {th / tk:7.1f}x faster   (target > 1x)    "
                f"{'MET' if th > tk else 'MISSED'}"
            )
    n = max(args.sizes)
    a_np, x_np = problem(n)
    print(
        f"\npeak TensorFlow CPU-allocator memory of one warm hessian at n = {n} "
        f"(the result alone is {n * n * 4 / 2**20:.1f} MB):"
    )
    for chunk in (None, 256, 64):
        label = "chunk_size=None" if chunk is None else f"chunk_size={chunk}"
        print(f"  {label:16s} {peak_memory(a_np, x_np, chunk):8.1f} MB")


if __name__ == "__main__":
    main()
