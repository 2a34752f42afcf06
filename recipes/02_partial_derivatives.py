"""Partial derivatives: df/dx, df/dy and mixed partials of f(x, y), and its gradient field.

For f(x, y) = x**2*y + y + 2 the partials are df/dx = 2xy and df/dy = x**2 + 1; the second
partials are d2f/dx2 = 2y, d2f/dy2 = 0 and the mixed d2f/dxdy = d2f/dydx = 2x (the order does not
matter for smooth f). `tapekit.partials` gives all first partials by parameter name and
`tapekit.partial(f, "x", "y")` any mixed or higher partial; the same with hand-nested tapes is
shown for comparison. Over a grid, the gradient field is logged as a figure: f, df/dx, df/dy, and
the gradient field (arrows over its size), each with axes, a title and a colour bar.
"""

from __future__ import annotations

import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's C++ start-up lines

import argparse
from typing import Any

import numpy as np
import tensorflow as tf

import tapekit
import tapekit.board

from _common import logs_hint, new_figure, open_writer


def f(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """f(x, y) = x²y + y + 2."""
    return x**2 * y + y + 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="logs/02_partial_derivatives")
    parser.add_argument("--x", type=float, default=3.0, help="point x (default 3)")
    parser.add_argument("--y", type=float, default=4.0, help="point y (default 4)")
    parser.add_argument("--grid", type=int, default=64, help="grid points per axis (default 64)")
    parser.add_argument("--extent", type=float, default=2.0, help="grid covers [-extent, extent]²")
    return parser.parse_args(argv)


def mixed_partial_with_tapes(x0: float, y0: float) -> float:
    """d2f/dxdy by hand: an outer tape for y around an inner tape for x."""
    x, y = tf.constant(x0), tf.constant(y0)
    with tf.GradientTape() as outer:
        outer.watch(y)
        with tf.GradientTape() as inner:
            inner.watch(x)
            z = f(x, y)
        dz_dx = inner.gradient(z, x)  # recorded by the outer tape, so it can be differentiated
    return float(outer.gradient(dz_dx, y))


def gradient_field(extent: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f, df/dx and df/dy on an n x n grid in one call.

    f acts pointwise, so the gradient of sum(f) w.r.t. the grid X holds df/dx at every point.
    """
    axis = tf.linspace(-extent, extent, n)
    ys, xs = tf.meshgrid(axis[::-1], axis, indexing="ij")  # row 0 at the top: y = +extent
    value, (dx, dy) = tapekit.value_and_grad(lambda x, y: tf.reduce_sum(f(x, y)), (0, 1))(xs, ys)
    del value
    return f(xs, ys).numpy(), dx.numpy(), dy.numpy()


def field_figure(values: np.ndarray, dx: np.ndarray, dy: np.ndarray, extent: float) -> Any:
    """f, df/dx, df/dy and the gradient field over the grid, with axes, titles and colour bars."""
    fig = new_figure(figsize=(10, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    box = (-extent, extent, -extent, extent)  # row 0 of the arrays is the top: y = +extent
    panels = [(values, "f(x, y) = x²y + y + 2"), (dx, "∂f/∂x = 2xy"), (dy, "∂f/∂y = x² + 1")]
    for ax, (data, title) in zip(axes.flat, panels):
        limit = max(float(np.abs(data).max()), 1e-12)  # white = 0, blue < 0 < red
        image = ax.imshow(data, extent=box, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set(title=title, xlabel="x", ylabel="y")
        fig.colorbar(image, ax=ax)
    ax = axes.flat[3]
    size = np.hypot(dx, dy)
    image = ax.imshow(size, extent=box, cmap="viridis")
    axis = np.linspace(-extent, extent, len(size))
    xs, ys = np.meshgrid(axis, axis[::-1])
    k = max(len(size) // 12, 1)  # about 12 arrows per side
    ax.quiver(xs[::k, ::k], ys[::k, ::k], dx[::k, ::k], dy[::k, ::k], color="white")
    ax.set(title="∇f: direction (arrows) and size |∇f| (colour)", xlabel="x", ylabel="y")
    fig.colorbar(image, ax=ax, label="|∇f|")
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x0, y0 = args.x, args.y
    print(f"f(x, y) = x**2*y + y + 2 at (x, y) = ({x0}, {y0}):  f = {float(f(x0, y0)):g}")

    first = {k: float(v) for k, v in tapekit.partials(f)(x0, y0).items()}
    closed = f"(2xy = {2 * x0 * y0:g}, x**2 + 1 = {x0**2 + 1:g})"
    print(f"  {'partials(f)':<26}-> {first}   {closed}")
    table = {
        ("x", "x"): 2 * y0,
        ("x", "y"): 2 * x0,
        ("y", "x"): 2 * x0,
        ("y", "y"): 0.0,
        ("x", "x", "y"): 2.0,
    }
    second = {}
    for wrt, exact in table.items():
        value = float(tapekit.partial(f, *wrt)(x0, y0))
        second[f"d{len(wrt)}f/" + "".join(f"d{w}" for w in wrt)] = value
        label = f"partial(f, {', '.join(repr(w) for w in wrt)})"
        print(f"  {label:<26}-> {value:g}   (closed form {exact:g})")
    by_hand = mixed_partial_with_tapes(x0, y0)
    print(f"  {'nested tapes for d2f/dxdy':<26}-> {by_hand:g}   (tf.GradientTape inside another)")

    values, dx, dy = gradient_field(args.extent, args.grid)
    rows = [f"| df/d{n} | {v:g} |" for n, v in first.items()]
    rows += [f"| {n} | {v:g} |" for n, v in second.items()]
    writer = open_writer(args.logdir, runs=("f_gradients", "explain_f"))
    with writer.as_default():
        tapekit.board.log_figure(
            "gradient_field",
            field_figure(values, dx, dy, args.extent),
            step=0,
            description="f, ∂f/∂x, ∂f/∂y and the gradient field over "
            f"[-{args.extent:g}, {args.extent:g}]²",
        )
        # A cut along y = y0 as curves: step i <-> x = -extent + i * 2 * extent / (grid - 1).
        xs = tf.linspace(-args.extent, args.extent, args.grid)
        ys = tf.fill(xs.shape, y0)
        cut = tapekit.partials(lambda x, y: tf.reduce_sum(f(x, y)))(xs, ys)
        for i in range(args.grid):
            tf.summary.scalar("cut_at_y0/f", f(xs[i], ys[i]), step=i)
            tf.summary.scalar("cut_at_y0/df_dx", cut["x"][i], step=i)
            tf.summary.scalar("cut_at_y0/df_dy", cut["y"][i], step=i)
        tf.summary.text("partials", "| partial | value |\n|---|---|\n" + "\n".join(rows), step=0)
    writer.close()
    magnitude = np.hypot(dx, dy)
    print(
        f"Gradient field on a {args.grid}x{args.grid} grid over "
        f"[-{args.extent:g}, {args.extent:g}]^2: |grad f| from {magnitude.min():.3g} to "
        f"{magnitude.max():.3g}, logged as a figure"
    )

    # The graph of f and its gradient (Graphs dashboard) and the chain-rule table (Text).
    tapekit.board.log_graph(f, x0, y0, logdir=args.logdir, gradients=True)
    tapekit.explain(f, x0, y0).log(args.logdir)
    print(logs_hint(args.logdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
