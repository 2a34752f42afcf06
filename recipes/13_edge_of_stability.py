"""The edge of stability: full-batch gradient descent drives the sharpness up to 2/η and holds it.

Gradient descent with step size η on a quadratic with curvature λ diverges once λ > 2/η. Cohen
et al. (ICLR 2021) observed what happens in neural networks: with full-batch GD the sharpness
(the largest eigenvalue of the Hessian of the training loss) first rises ("progressive
sharpening") until it reaches about 2/η, and then hovers there while the loss keeps falling,
non-monotonically ("edge of stability"). This recipe reproduces it in seconds: a small tanh MLP
fitted to synthetic regression data (targets from a random tanh teacher), by plain full-batch GD
at two step sizes. The sharpness is `tapekit.curvature.top_eigenvalues` of the full-batch loss
(Lanczos over `tapekit.hvp`, warm-started from the previous eigenvector), measured every
`--every` steps.

Run it with `python3 dev.py run 13`, then `python3 dev.py board logs/13_edge_of_stability`: one run
per step size with `loss`, the sharpness (`curvature/top_eigenvalue`), `two_over_eta` and
`optimizer/learning_rate` (the Custom Scalars tab draws sharpness and 2/η of every run on one
chart; `python3 dev.py inspect` reports them).
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from tapekit import curvature
from tapekit.board.gradient_flow import write_layout

from _common import logs_hint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--eta", type=float, nargs="+", default=[0.3, 0.5], help="GD step sizes (0.3 0.5)"
    )
    parser.add_argument("--steps", type=int, default=2000, help="GD steps per step size")
    parser.add_argument("--every", type=int, default=50, help="steps between sharpness values")
    parser.add_argument("--examples", type=int, default=200, help="size of the data set")
    parser.add_argument("--width", type=int, default=64, help="units of the two tanh layers")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initial weights")
    parser.add_argument(
        "--logdir", default="logs/13_edge_of_stability", help="TensorBoard log directory"
    )
    return parser.parse_args(argv)


def teacher_data(n: int, seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``n`` inputs in R^10 and standardised targets of a random 16-unit tanh teacher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    y = np.tanh(x @ rng.normal(size=(10, 16)) / np.sqrt(10)) @ rng.normal(size=(16, 1))
    return tf.constant(x, tf.float32), tf.constant(y / y.std(), tf.float32)


def init_params(width: int, seed: int) -> list[tf.Variable]:
    """10-width-width-1 weights, N(0, 0.25/fan_in) (a small init: low starting sharpness)."""
    rng = np.random.default_rng(seed + 1)
    sizes, params = [10, width, width, 1], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = rng.normal(size=(fan_in, fan_out)) * 0.5 / np.sqrt(fan_in)
        params += [tf.Variable(w.astype("float32")), tf.Variable(tf.zeros([fan_out]))]
    return params


def make_loss(x: tf.Tensor, y: tf.Tensor):
    def loss(params: list[tf.Variable]) -> tf.Tensor:
        """Half the mean squared error of the MLP on the whole data set."""
        h = x
        for i in range(0, len(params) - 2, 2):
            h = tf.tanh(h @ params[i] + params[i + 1])
        return 0.5 * tf.reduce_mean((h @ params[-2] + params[-1] - y) ** 2)

    return loss


def gradient_descent(loss, params: list[tf.Variable], eta: float):
    """A compiled loop of ``n`` full-batch GD steps, returning the loss before each step."""

    @tf.function
    def run(n: tf.Tensor) -> tf.Tensor:
        losses = tf.TensorArray(tf.float32, size=n)
        for i in tf.range(n):
            with tf.GradientTape() as tape:
                value = loss(params)
            for p, g in zip(params, tape.gradient(value, params)):
                p.assign_sub(eta * g)
            losses = losses.write(i, value)
        return losses.stack()

    return run


def train(eta: float, args: argparse.Namespace, data: tuple) -> dict:
    loss = make_loss(*data)
    params = init_params(args.width, args.seed)
    run = gradient_descent(loss, params, eta)
    writer = tf.summary.create_file_writer(str(Path(args.logdir) / f"eta_{eta:g}"))
    vectors, sharpness, losses = None, [], []
    with writer.as_default():
        for start in range(0, args.steps + 1, args.every):
            values, vectors = curvature.top_eigenvalues(loss, (params,), init=vectors, seed=0)
            sharpness.append((start, float(values[0])))
            tf.summary.scalar("curvature/top_eigenvalue", values[0], step=start)
            tf.summary.scalar("two_over_eta", 2.0 / eta, step=start)
            tf.summary.scalar("optimizer/learning_rate", eta, step=start)  # `tapekit inspect`
            n = min(args.every, args.steps - start)
            if n <= 0:
                break
            for i, value in enumerate(run(tf.constant(n)).numpy()):
                losses.append(float(value))
                tf.summary.scalar("loss", value, step=start + i)
        final = float(loss(params))
        tf.summary.scalar("loss", final, step=args.steps)
    writer.close()
    return {"sharpness": sharpness, "loss": losses + [final]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for run in [f"eta_{eta:g}" for eta in args.eta] + ["layout"]:  # a rerun replaces its runs
        shutil.rmtree(Path(args.logdir) / run, ignore_errors=True)
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    layout = tf.summary.create_file_writer(str(Path(args.logdir) / "layout"))
    write_layout(
        layout,
        {
            "edge of stability": {
                "sharpness and 2/eta": ["curvature/top_eigenvalue", "two_over_eta"]
            }
        },
    )
    layout.close()
    data = teacher_data(args.examples, args.seed)
    print(f"full-batch GD, tanh MLP 10-{args.width}-{args.width}-1, {args.examples} examples")
    ok = True
    for eta in args.eta:
        out = train(eta, args, data)
        (_, start), (_, end) = out["sharpness"][0], out["sharpness"][-1]
        bumps = sum(b > a for a, b in zip(out["loss"][:-1], out["loss"][1:]))
        print(
            f"eta {eta:g} | 2/eta {2 / eta:.3f} | sharpness start {start:.3f} "
            f"({start * eta / 2:.2f} x 2/eta) -> end {end:.3f} ({end * eta / 2:.3f} x 2/eta) | "
            f"loss {out['loss'][0]:.4f} -> {out['loss'][-1]:.6f}, rose in {bumps} steps"
        )
        ok = ok and abs(end * eta / 2 - 1) <= 0.1 and start * eta / 2 < 0.5
    print(f"\nSharpness ends at 2/eta for every step size: {'yes' if ok else 'NO'}.")
    print(logs_hint(args.logdir))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
