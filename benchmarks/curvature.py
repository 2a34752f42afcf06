"""Benchmark: the cost of curvature measurements, in gradients and in training time.

The MLP of ``benchmarks/training.py`` (784-256-256-10, 270k parameters, batch 128, Adam), one
process. Everything is a ratio to a baseline measured in the same run, configurations
alternating round by round; medians (and minima, the least disturbed runs) are reported. Other
jobs share the CPUs, so single figures are noisy.

1. one ``tapekit.hvp`` against one gradient of the same loss (a ``tf.function`` over a
   ``tf.GradientTape``, the baseline; ``tapekit.grad`` shown too) (target <= 3x);
2. ``tapekit.curvature.top_eigenvalues(k=1, tol=1e-3)`` from a random start, in gradient-times
   (target <= 60);
3. ``Trainer.fit`` with ``CurvatureMonitor(every=100, k=1)`` against the same fit without it
   (target <= 10% more time), and the plain Trainer at 1 step per call, which is what a step
   callback costs by itself; also the Lanczos iterations (Hessian-vector products) per
   measurement and what they alone cost, and what ending the compiled calls where the monitor
   does (for its one-step update ratio) costs alone;
4. default logging (``log_every=10``, ``histogram_every=100``) against logging off (issue 14
   asks <= 3%; this only measures it).

    python benchmarks/curvature.py              # about 3 minutes
    python benchmarks/curvature.py --rounds 4   # quicker, noisier
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from training import BATCH, STEPS, loss_fn, make_data, make_model  # noqa: E402

import tapekit  # noqa: E402
from tapekit import curvature  # noqa: E402


def _alternate(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _line(name: str, t: list[float], base: list[float], unit: float, label: str) -> str:
    med, low = statistics.median(t), min(t)
    return (
        f"{name:44s} {med * unit:9.2f} {low * unit:9.2f}   {label} "
        f"{med / statistics.median(base):6.2f} (median) {low / min(base):6.2f} (min)"
    )


def hvp_and_eigenvalue(ds: tf.data.Dataset, rounds: int) -> None:
    model = make_model()
    batch = next(iter(ds))
    fn, primals = curvature.model_loss(model, loss_fn, batch)
    grad_fn = tapekit.grad(fn)
    variables = model.trainable_variables

    @tf.function
    def tape_grad() -> list[tf.Tensor]:  # the plain TensorFlow baseline
        with tf.GradientTape() as tape:
            loss = fn(variables)
        return tape.gradient(loss, variables)

    tangents = ([tf.random.normal(v.shape) for v in primals[0]],)

    def grad_once() -> None:
        [g.numpy() for g in grad_fn(*primals)]

    def tape_once() -> None:
        [g.numpy() for g in tape_grad()]

    def hvp_once() -> None:
        [t.numpy() for t in tapekit.hvp(fn, primals, tangents)[0]]

    grad_once(), tape_once(), hvp_once()  # tracing
    reps = 20
    times = _alternate(
        {
            "tf.function + GradientTape (one gradient)": lambda: [tape_once() for _ in range(reps)],
            "tapekit.grad (one gradient)": lambda: [grad_once() for _ in range(reps)],
            "hvp (one Hessian-vector product)": lambda: [hvp_once() for _ in range(reps)],
        },
        rounds,
    )
    times = {k: [t / reps for t in v] for k, v in times.items()}
    base = times["tf.function + GradientTape (one gradient)"]
    print(f"\n1. hvp vs grad, MLP 784-256-256-10, batch {BATCH} (ms per call)")
    print(f"{'':44s} {'median':>9s} {'min':>9s}")
    for name, t in times.items():
        print(_line(name, t, base, 1e3, "x grad"))

    with warnings.catch_warnings():  # tracing the compiled Lanczos loop, as for hvp above
        warnings.simplefilter("ignore", RuntimeWarning)
        curvature.top_eigenvalues(fn, primals, k=1, max_iters=2, seed=0)
    eig_times, values = [], []
    for r in range(max(3, rounds // 2)):
        grad_start = time.perf_counter()
        [tape_once() for _ in range(reps)]
        grad_time = (time.perf_counter() - grad_start) / reps
        start = time.perf_counter()
        vals, _ = curvature.top_eigenvalues(fn, primals, k=1, tol=1e-3, seed=r)
        eig_times.append((time.perf_counter() - start) / grad_time)
        values.append(float(vals[0]))
    print("\n2. top_eigenvalues(k=1, tol=1e-3) from a random start, in gradient-times")
    print(
        f"   median {statistics.median(eig_times):.1f}, min {min(eig_times):.1f}, max "
        f"{max(eig_times):.1f} (target <= 60); sharpness {np.median(values):.4f} "
        f"(spread over seeds {np.ptp(values) / np.median(values):.1e} relative)"
    )


def _trainer(ds: tf.data.Dataset, callbacks: list | None = None, **kw) -> Callable[[int], None]:
    kw.setdefault("logdir", False)
    trainer = tapekit.Trainer(
        make_model(),
        loss_fn,
        optimizer=keras.optimizers.Adam(1e-3),
        callbacks=callbacks or [],
        **kw,
    )
    return lambda epochs: trainer.fit(ds, epochs=trainer.epoch + epochs, verbose=0)


class _Counted:
    """Counts the Hessian-vector products of the monitor's Lanczos runs (the benchmark only:
    it wraps the Lanczos run ``tapekit.curvature`` calls and sums the iterations)."""

    def __init__(self) -> None:
        self.products = 0
        self._lanczos = curvature.lanczos

    def __enter__(self) -> _Counted:
        counted, lanczos = self, self._lanczos

        def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            run = lanczos(*args, **kwargs)
            counted.products += len(run.alpha)
            return run

        curvature.lanczos = counting
        return self

    def __exit__(self, *exc: object) -> None:
        curvature.lanczos = self._lanczos


def _iteration_ms(batch: object) -> float:
    """The median time of one Lanczos iteration (a Hessian-vector product of the benchmark
    model's loss on ``batch`` and the reorthogonalisation, in the compiled loop) (ms)."""
    fn, primals = curvature.model_loss(make_model(), loss_fn, batch)
    iterations, times = 16, []
    with warnings.catch_warnings():  # tol=1e-12: run all iterations
        warnings.simplefilter("ignore", RuntimeWarning)
        for seed in range(11):
            start = time.perf_counter()
            curvature.top_eigenvalues(fn, primals, max_iters=iterations, tol=1e-12, seed=seed)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / iterations * 1e3  # times[0]: tracing


class _EndsCalls(tapekit.Callback):
    """Ends the Trainer's compiled calls where ``CurvatureMonitor(every=100)`` does (the step
    before each multiple of 100, and that step) and does nothing else: what those call ends
    cost by themselves."""

    def next_step_end(self, step: int) -> int | None:
        due = (step // 100 + 1) * 100
        return due - 1 if step < due - 1 else due


def training_overheads(ds: tf.data.Dataset, rounds: int, epochs: int) -> None:
    batch = next(iter(ds))
    logdir = tempfile.mkdtemp(prefix="tapekit-bench-curv-")
    monitor = tapekit.CurvatureMonitor(batch, every=100, k=1)
    configs = {
        "Trainer (default steps per call)": lambda: _trainer(ds),
        "Trainer steps_per_execution=1": lambda: _trainer(ds, steps_per_execution=1),
        "Trainer + CurvatureMonitor(every=100, k=1)": lambda: _trainer(ds, [monitor]),
        "Trainer + only the monitor's call ends": lambda: _trainer(ds, [_EndsCalls()]),
        "Trainer + logging (log_every=10, hist 100)": lambda: _trainer(ds, logdir=logdir),
    }
    runners = {}
    for name, make in configs.items():
        runners[name] = make()
        runners[name](1)  # warm-up: tracing
    measured = len(monitor.history["curvature/top_eigenvalue"])
    with _Counted() as counted:
        times = _alternate({n: (lambda r=r: r(epochs)) for n, r in runners.items()}, rounds)
    measured = len(monitor.history["curvature/top_eigenvalue"]) - measured
    base = times["Trainer (default steps per call)"]
    steps = epochs * STEPS
    print(
        f"\n3./4. Trainer.fit of {epochs} epochs ({steps} steps, batch {BATCH}), {rounds} "
        f"alternating rounds (ms per step)"
    )
    print(f"{'':44s} {'median':>9s} {'min':>9s}")
    for name, t in times.items():
        print(_line(name, t, base, 1e3 / steps, "x default"))
    med = {n: statistics.median(t) for n, t in times.items()}
    b = med["Trainer (default steps per call)"]
    overhead = med["Trainer + CurvatureMonitor(every=100, k=1)"] / b - 1
    one_step = med["Trainer steps_per_execution=1"] / b - 1
    ends = med["Trainer + only the monitor's call ends"] / b - 1
    logging = med["Trainer + logging (log_every=10, hist 100)"] / b - 1
    print(
        f"CurvatureMonitor overhead: {overhead:+.1%} (target <= 10%); 1 step/call: {one_step:+.1%}"
    )
    per = counted.products / max(measured, 1)
    iteration = _iteration_ms(batch)
    step_ms = b / steps * 1e3
    print(
        f"  {measured} measurements, {per:.1f} Lanczos iterations each (tol 1e-2, warm-started); "
        f"one iteration {iteration:.2f} ms = {iteration / step_ms:.2f} training steps: the "
        f"iterations alone cost {per * iteration / (100 * step_ms):+.1%}"
    )
    print(f"  ending the calls where the monitor does, alone: {ends:+.1%}")
    print(f"default logging overhead: {logging:+.1%} (issue target <= 3%)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (>= 10)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit measurement")
    parser.add_argument("--skip-training", action="store_true", help="only parts 1 and 2")
    parser.add_argument("--only-training", action="store_true", help="only parts 3 and 4")
    args = parser.parse_args(argv)
    ds = make_data()
    if not args.only_training:
        hvp_and_eigenvalue(ds, args.rounds)
    if not args.skip_training:
        training_overheads(ds, args.rounds, args.epochs)


if __name__ == "__main__":
    main()
