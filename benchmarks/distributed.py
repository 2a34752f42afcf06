"""Benchmark: ms/step of tapekit.Trainer under MirroredStrategy (2 logical CPUs): costs of options.

MLP 784-256-256-10 (270k parameters), global batch 256, Adam, 16,384 synthetic examples (64
steps per epoch), one process. Configurations, each measured as one ``fit`` epoch after a
warm-up epoch, interleaved over ``--rounds`` rounds; the minimum is reported (other jobs share
the CPUs) with its ratio to the plain ``Trainer`` under the same strategy (the baseline):

* ``Trainer``: no clipping, no logging: Keras' optimizer all-reduces the gradient once.
* ``Trainer + logging``: ``log_every=10``: the gradient is all-reduced a second time only on
  the steps that log it.
* ``Trainer + clip_norm``: clipping needs the aggregated gradient: tapekit all-reduces it, and
  Keras 3's optimizer, which has no way to skip its own aggregation, all-reduces it again.
* ``Trainer, 1 device``: the default strategy, for scale (on 2 logical devices of the same
  CPU, data parallelism gains nothing; it shows the strategy's own overhead).
* ``keras fit``: ``Model.fit`` under the same strategy, for reference (with its default
  ``steps_per_execution=1``: larger values fail under MirroredStrategy in Keras 3.15).

    python benchmarks/distributed.py             # about a minute
    python benchmarks/distributed.py --rounds 2  # quicker, noisier
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from training import loss_fn, make_model  # noqa: E402  (the same MLP as benchmarks/training.py)

import tapekit  # noqa: E402

N, BATCH = 16384, 256
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 784)).astype("float32"), rng.integers(0, 10, size=N)


def keras_fit(data: tuple) -> Callable[[], None]:
    with STRATEGY.scope():
        model = make_model()
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    ds = tf.data.Dataset.from_tensor_slices(data).batch(BATCH).cache()
    return lambda: model.fit(ds, epochs=1, verbose=0, shuffle=False)


def trainer_fit(data: tuple, strategy: tf.distribute.Strategy | None, **kw) -> Callable:
    kw.setdefault("logdir", False)
    trainer = tapekit.Trainer(make_model, loss_fn, strategy=strategy, seed=0, **kw)
    return lambda: trainer.fit(data, batch_size=BATCH, epochs=trainer.epoch + 1, verbose=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    data = make_data()
    with tempfile.TemporaryDirectory() as logs:
        configs = {
            "Trainer": trainer_fit(data, STRATEGY),
            "Trainer + logging": trainer_fit(data, STRATEGY, logdir=logs, histogram_every=0),
            "Trainer + clip_norm": trainer_fit(data, STRATEGY, clip_norm=1.0),
            "Trainer, 1 device": trainer_fit(data, None),
            "keras fit": keras_fit(data),
        }
        for run in configs.values():  # warm-up: tracing
            run()
        best = dict.fromkeys(configs, float("inf"))
        for _ in range(args.rounds):
            for name, run in configs.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], (time.perf_counter() - start) / (N // BATCH))
    base = best["Trainer"]
    print(f"MirroredStrategy over 2 logical CPUs, global batch {BATCH}, min of {args.rounds}")
    for name, seconds in best.items():
        print(f"{name:22} {1000 * seconds:7.2f} ms/step   {seconds / base:5.2f} x Trainer")


if __name__ == "__main__":
    main()
