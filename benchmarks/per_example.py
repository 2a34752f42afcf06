"""Per-example gradients benchmark: tapekit vmap(grad) and per_example_grads vs a loop and JAX.

    MLP 784-256-256-10 (relu), softmax cross-entropy, batch 128, float32

Compared in one run, interleaved round by round (the CPU is shared, so medians are printed and
ratios use them):

    vmap(grad)           tapekit.vmap(tapekit.grad(loss), in_axes=(None, 0, 0))(params, x, y)
    per_example_grads    tapekit.per_example_grads(per_example_loss, model)(x, y), Keras model
    ..._grad_norms       tapekit.per_example_grad_norms: only each example's gradient norm
    tf.vectorized_map    a bare tf.vectorized_map over a GradientTape, in one tf.function
    loop of grad         128 calls of tf.function(tapekit.grad(loss)), one example each
    jax.jit(vmap(grad))  jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))   (if installed)

Targets: tapekit >= 5x faster than the loop and <= 0.8x JAX's time. Every candidate's result is
checked against the loop's before timing.

    .venv/bin/python benchmarks/per_example.py [--batch 128] [--rounds 20]
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tapekit  # noqa: E402

try:
    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402
except ImportError:  # a peer that is not installed is skipped
    jax = None

SIZES = (784, 256, 256, 10)


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for i, (m, n) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        params[f"w{i}"] = (rng.normal(size=(m, n)) * np.sqrt(2 / m)).astype(np.float32)
        params[f"b{i}"] = np.zeros(n, np.float32)
    return params


def tf_loss(params: dict, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of one example (x: (784,), y: int label)."""
    h = x[None]
    for i in range(len(SIZES) - 1):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < len(SIZES) - 2:
            h = tf.nn.relu(h)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y[None], h)[0]


def candidates(params_np: dict, x_np: np.ndarray, y_np: np.ndarray) -> dict[str, Callable]:
    """name -> a call returning the per-example gradients as {name: (B, ...) array}."""
    params = {k: tf.constant(v) for k, v in params_np.items()}
    x, y = tf.constant(x_np), tf.constant(y_np)
    names = sorted(params)
    calls: dict[str, Callable] = {}

    pe_vmap = tapekit.vmap(tapekit.grad(tf_loss), in_axes=(None, 0, 0))
    calls["vmap(grad)"] = lambda: {k: v.numpy() for k, v in pe_vmap(params, x, y).items()}

    model = keras.Sequential(
        [keras.Input((SIZES[0],))]
        + [keras.layers.Dense(n, activation="relu") for n in SIZES[1:-1]]
        + [keras.layers.Dense(SIZES[-1])]
    )
    for i, layer in enumerate(model.layers):
        layer.kernel.assign(params_np[f"w{i}"])
        layer.bias.assign(params_np[f"b{i}"])
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    pe_keras = tapekit.per_example_grads(lambda xb, yb: ce(yb, model(xb)), model)
    order = [f"{p}{i}" for i in range(len(SIZES) - 1) for p in ("w", "b")]  # kernel, bias, ...

    def keras_call() -> dict:
        return {k: g.numpy() for k, g in zip(order, pe_keras(x, y))}

    calls["per_example_grads"] = keras_call
    norms = tapekit.per_example_grad_norms(lambda xb, yb: ce(yb, model(xb)), model)
    calls["per_example_grad_norms"] = lambda: {"norm": norms(x, y).numpy()}

    @tf.function
    def bare(params: dict, x: tf.Tensor, y: tf.Tensor) -> dict:
        def one(xy: tuple) -> dict:
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = tf_loss(params, xy[0], xy[1])
            return tape.gradient(loss, params)

        return tf.vectorized_map(one, (x, y))

    calls["tf.vectorized_map"] = lambda: {k: v.numpy() for k, v in bare(params, x, y).items()}

    one_grad = tf.function(tapekit.grad(tf_loss))

    def loop() -> dict:
        rows = [one_grad(params, x[i], y[i]) for i in range(len(x_np))]
        return {k: np.stack([r[k].numpy() for r in rows]) for k in names}

    calls["loop of grad"] = loop

    if jax is not None:

        def jax_loss(p: dict, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
            h = x
            for i in range(len(SIZES) - 1):
                h = h @ p[f"w{i}"] + p[f"b{i}"]
                if i < len(SIZES) - 2:
                    h = jax.nn.relu(h)
            return -jax.nn.log_softmax(h)[y]

        jp = {k: jnp.asarray(v) for k, v in params_np.items()}
        jx, jy = jnp.asarray(x_np), jnp.asarray(y_np)
        jitted = jax.jit(jax.vmap(jax.grad(jax_loss), in_axes=(None, 0, 0)))

        def jax_call() -> dict:
            out = jitted(jp, jx, jy)
            return {k: np.asarray(v.block_until_ready()) for k, v in out.items()}

        calls["jax.jit(vmap(grad))"] = jax_call
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    params = make_params()
    x = rng.normal(size=(args.batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=args.batch).astype(np.int32)
    calls = candidates(params, x, y)
    reference = calls["loop of grad"]()
    reference["norm"] = np.sqrt(
        sum(np.sum(g.reshape(args.batch, -1) ** 2, 1) for g in reference.values())
    )
    for name, call in calls.items():
        got = call()  # warm-up: traces, compiles
        err = max(
            float(np.max(np.abs(got[k] - reference[k])) / (np.max(np.abs(reference[k])) + 1e-12))
            for k in got
        )
        assert err < 1e-4, f"{name} differs from the loop by {err:.1e} (relative)"
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for _ in range(args.rounds):
        np.random.default_rng().shuffle(order)
        gc.collect()
        gc.disable()
        try:
            for name in order:
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
        finally:
            gc.enable()
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"per-example gradients, MLP {'-'.join(map(str, SIZES))}, batch {args.batch}, float32; "
        f"median of {args.rounds} interleaved rounds (2 shared CPU cores: noisy)"
    )
    jax_time = med.get("jax.jit(vmap(grad))")
    print(f"{'':22s} {'ms':>9s} {'loop / this':>12s} {'this / jax':>11s}")
    for name, t in med.items():
        vs_jax = f"{t / jax_time:11.2f}" if jax_time else f"{'-':>11s}"
        print(f"{name:22s} {t * 1e3:9.2f} {med['loop of grad'] / t:12.1f} {vs_jax}")


if __name__ == "__main__":
    main()
