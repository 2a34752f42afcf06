"""Curvature of a loss: top Hessian eigenvalues, the Hessian trace and its spectral density.

All three only multiply by the Hessian through Hessian-vector products, never forming the
matrix. A Lanczos run (or all of a trace's samples) is one compiled call, cached per function,
whose products are reverse passes over the gradient computed once before its loop (see
:mod:`tapekit._lanczos`); the small tridiagonal eigenproblems are solved in float64.

* :func:`top_eigenvalues`: Lanczos with full reorthogonalisation, one run per eigenvalue with
  the ones found before deflated (locked), so repeated eigenvalues are found as often as they
  occur. The largest eigenvalue of a training loss is its *sharpness*.
* :func:`trace`: Hutchinson's estimator ``E[zᵀHz]`` over random sign vectors, with its
  standard error.
* :func:`density`: stochastic Lanczos quadrature (Ghorbani, Krishnan and Xiao, 2019; the
  ``density`` of PyHessian): each run's Lanczos nodes and weights, smoothed by a Gaussian.

For a Keras model, :func:`model_loss` makes the function of the trainable variables that these
take: the loss of the model on one batch, in inference mode.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from . import _compile, _lanczos
from ._lanczos import HessianOperator, lanczos, tridiagonal_eigh
from .errors import describe_received

__all__ = ["density", "model_loss", "top_eigenvalues", "trace"]

_WHICH = ("algebraic", "magnitude")


def _check_count(value: Any, name: str, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{what} needs `{name}` to be an int >= {minimum}, but received "
            f"{describe_received(value)}."
        )
    return int(value)


def top_eigenvalues(
    fn: Callable,
    primals: Sequence[Any],
    k: int = 1,
    *,
    which: str = "algebraic",
    max_iters: int = 100,
    tol: float = 1e-3,
    seed: int | None = None,
    init: Any = None,
) -> tuple[tf.Tensor, tuple[Any, ...]]:
    """The ``k`` largest eigenvalues of the Hessian of a scalar ``fn``, and their eigenvectors.

    Lanczos with full reorthogonalisation over :func:`tapekit.hvp`: each eigenvalue is one
    Lanczos run in the space orthogonal to the eigenvectors already found (so an eigenvalue of
    multiplicity 2 is returned twice). A run stops when the residual ``|H y - θ y|`` of its Ritz
    pair is at most ``tol · |θ|``, which bounds the eigenvalue's relative error by ``tol``.
    The Hessian is never formed: memory is ``max_iters`` vectors of the size of ``primals``.

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a float scalar.
        primals: The point, a tuple with one entry per argument of ``fn`` (tensors, arrays,
            variables or nests of them); all are differentiated.
        k: How many eigenvalues.
        which: ``"algebraic"`` (the largest values, e.g. the sharpness) or ``"magnitude"``
            (the largest in absolute value, negative ones included).
        max_iters: At most this many Hessian-vector products per eigenvalue.
        tol: Relative accuracy of each eigenvalue.
        seed: Seeds the random starting vectors (None: a fresh random start).
        init: Optional starting vectors, shaped like ``vectors`` (a leading axis of at most
            ``k``), e.g. the eigenvectors of the previous training step: fewer iterations.

    Returns:
        ``(values, vectors)``: ``values`` of shape ``(k,)`` in descending order (of value, or of
        absolute value for ``"magnitude"``) and the dtype of the primals; ``vectors`` a tuple
        shaped like ``primals`` whose leaves have a leading ``k`` axis: unit eigenvectors
        (jointly over all leaves), ``vectors[..][i]`` belonging to ``values[i]``.

    Raises:
        TypeError: If ``fn`` is not callable, ``primals`` is not a tuple or not floating point.
        ValueError: If ``k`` exceeds the number of parameters, if ``which``, ``max_iters`` or
            ``tol`` are invalid, or if ``init`` is not shaped like the primals.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> f = lambda x: x[0] ** 2 + 3.0 * x[1] ** 2 - 0.5 * x[2] ** 2  # H = diag(2, 6, -1)
        >>> values, (vectors,) = tapekit.curvature.top_eigenvalues(
        ...     f, (tf.constant([1.0, 1.0, 1.0], tf.float64),), k=2, seed=0)
        >>> values.numpy().round(6), abs(vectors.numpy()).round(3)
        (array([6., 2.]), array([[0., 1., 0.],
               [1., 0., 0.]]))
    """
    values, vectors, _ = top_eigenpairs(fn, primals, k, which, max_iters, tol, seed, init)
    return values, vectors


def top_eigenpairs(
    fn: Callable,
    primals: Sequence[Any],
    k: int,
    which: str,
    max_iters: int,
    tol: float,
    seed: int | None,
    init: Any,
) -> tuple[tf.Tensor, tuple[Any, ...], np.ndarray]:
    """:func:`top_eigenvalues` (same arguments, internal), and the norms of the gradient at
    the point, one per leaf of the primals: the Lanczos loop computes the gradient anyway
    (``CurvatureMonitor`` logs them)."""
    op = HessianOperator(fn, primals, "top_eigenvalues")
    k = _check_count(k, "k", "top_eigenvalues")
    max_iters = _check_count(max_iters, "max_iters", "top_eigenvalues")
    if which not in _WHICH:
        raise ValueError(
            f"top_eigenvalues needs `which` in {_WHICH}, but received {which!r}: 'algebraic' "
            f"gives the largest eigenvalues, 'magnitude' the largest in absolute value."
        )
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"top_eigenvalues needs 0 < tol < 1, but received {tol!r}.")
    if k > op.n:
        raise ValueError(
            f"top_eigenvalues: k={k} exceeds the number of parameters ({op.n}) of `primals`; "
            f"the Hessian has only {op.n} eigenvalues. Ask for k <= {op.n}."
        )
    starts = op.starts(init, k)  # zero rows: random starts
    rng = np.random.default_rng(seed)
    locked, values, found_leaves = None, [], []
    worst, norms = 0.0, None
    for run in range(k):
        # a warm start (normalised in the loop) with a little of a random vector, so that no
        # direction is missing, or a random one
        found = lanczos(
            op,
            max_iters,
            seed=rng,
            init=starts,
            run=run,
            noise=0.01,
            locked=locked,
            tol=tol,
            which=which,
            capacity=k - 1,
        )
        worst = max(worst, found.residual / max(abs(found.value), np.finfo(np.float64).tiny))
        values.append(found.value)
        found_leaves.append(found.leaves)
        if run < k - 1:  # the next runs are kept orthogonal to it
            row = found.vector[None]
            locked = row if locked is None else tf.concat([locked, row], 0)
        norms = found.gradient_norms if norms is None else norms
    if worst > tol:
        warnings.warn(
            f"top_eigenvalues did not reach tol={tol} in max_iters={max_iters} Hessian-vector "
            f"products per eigenvalue (relative residual {worst:.2e}). Raise max_iters or tol.",
            RuntimeWarning,
            stacklevel=3,
        )
    key = np.array(values) if which == "algebraic" else np.abs(values)
    order = np.argsort(-key, kind="stable")
    vals = tf.constant(np.array(values)[order], dtype=op.dtype)
    if k == 1:
        leaves = found_leaves[0]
    else:
        leaves = [tf.concat([found_leaves[i][j] for i in order], 0) for j in range(len(op.shapes))]
    return vals, tuple(tf.nest.pack_sequence_as(op.primals, leaves)), norms


def trace(
    fn: Callable,
    primals: Sequence[Any],
    *,
    samples: int = 64,
    seed: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Hutchinson's estimate of the trace of the Hessian of a scalar ``fn``, with its error.

    ``tr H = E[zᵀ H z]`` for random sign vectors ``z``; the estimate is the mean over
    ``samples`` such products (one Hessian-vector product each, all in one compiled call, the
    loss and gradient computed once) and the standard error is their
    standard deviation over ``sqrt(samples)``: the error shrinks like ``1/sqrt(samples)``.
    The trace is the sum of all curvatures (the Laplacian of the loss); a large trace with a
    small top eigenvalue means many moderately curved directions.

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a float scalar.
        primals: The point, a tuple with one entry per argument (nests allowed).
        samples: Random vectors (>= 2).
        seed: Seeds the random vectors.

    Returns:
        ``(estimate, standard_error)``: two scalars in the dtype of the primals.

    Raises:
        TypeError: If ``fn`` is not callable, ``primals`` is not a tuple or not floating point.
        ValueError: If ``samples`` is not an int >= 2.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> f = lambda x: tf.reduce_sum(x ** 2)  # H = 2 I: every zᵀHz is exactly 2 n
        >>> est, err = tapekit.curvature.trace(f, (tf.ones([5]),), samples=8, seed=0)
        >>> float(est), float(err)
        (10.0, 0.0)
    """
    op = HessianOperator(fn, primals, "trace")
    samples = _check_count(samples, "samples", "trace", minimum=2)
    quads = _lanczos.quadratic_forms(op, samples, np.random.default_rng(seed))
    error = quads.std(ddof=1) / np.sqrt(samples)
    return tf.constant(quads.mean(), op.dtype), tf.constant(error, op.dtype)


def _density_nodes(op: HessianOperator, steps: int, runs: int, seed: int | None) -> tuple:
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(runs):
        # random signs, as PyHessian: a lower-variance quadrature than Gaussian vectors
        found = lanczos(op, steps, seed=rng, signs=True)
        theta, s = tridiagonal_eigh(found.alpha, found.beta)
        nodes.append(theta)
        weights.append(s[0] ** 2 / runs)  # each run's weights sum to 1
    return np.concatenate(nodes), np.concatenate(weights)


def density(
    fn: Callable,
    primals: Sequence[Any],
    *,
    steps: int = 64,
    runs: int = 4,
    seed: int | None = None,
    grid_size: int = 1024,
    sigma: float | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The eigenvalue density of the Hessian of ``fn``, by stochastic Lanczos quadrature.

    Each of ``runs`` Lanczos runs of ``steps`` Hessian-vector products from a random vector
    gives nodes ``θ_j`` (Ritz values) and weights ``τ_j`` (squared first components of the
    tridiagonal eigenvectors, summing to 1); the density is their average, each node smoothed
    by a Gaussian of width ``sigma`` (Ghorbani et al., 2019). It shows the whole spectrum:
    the bulk near zero, outliers (one per class, typically) and negative curvature.

    Args:
        fn: A function of ``len(primals)`` positional arguments returning a float scalar.
        primals: The point, a tuple with one entry per argument (nests allowed).
        steps: Lanczos iterations per run (capped at the number of parameters).
        runs: Independent random starts averaged.
        seed: Seeds the random starts.
        grid_size: Points of the returned grid.
        sigma: Width of the Gaussian smoothing; None uses 1% of the spectrum's range.

    Returns:
        ``(grid, density)``: two vectors of length ``grid_size`` in the primals' dtype; the
        grid spans the extreme nodes plus 5 sigma on both sides, and ``density`` integrates
        to 1 over it (a probability density of the eigenvalues: multiply by the number of
        parameters for eigenvalues per unit).

    Raises:
        TypeError: If ``fn`` is not callable, ``primals`` is not a tuple or not floating point.
        ValueError: If ``steps``, ``runs``, ``grid_size`` or ``sigma`` are invalid.

    Example:
        >>> import numpy as np, tensorflow as tf, tapekit
        >>> f = lambda x: tf.reduce_sum(tf.constant([1.0, 1.0, 4.0], tf.float64) * x ** 2)
        >>> grid, dens = tapekit.curvature.density(f, (tf.ones([3], tf.float64),), seed=0)
        >>> round(float(np.trapezoid(dens, grid)), 4)  # eigenvalues 2, 2 and 8
        1.0
        >>> g = grid.numpy(); round(float(np.trapezoid(dens.numpy() * (g > 5), g)), 1)
        0.3
    """
    op = HessianOperator(fn, primals, "density")
    steps = _check_count(steps, "steps", "density")
    runs = _check_count(runs, "runs", "density")
    grid_size = _check_count(grid_size, "grid_size", "density", minimum=2)
    if sigma is not None and not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"density needs sigma > 0 or None, but received {sigma!r}.")
    nodes, weights = _density_nodes(op, steps, runs, seed)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 0.01 * max(abs(hi), 1.0)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    gauss = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)
    dens = gauss @ weights / (sigma * np.sqrt(2 * np.pi))
    return tf.constant(grid, op.dtype), tf.constant(dens, op.dtype)


def model_loss(
    model: Any, loss_fn: Callable, batch: Any
) -> tuple[Callable[[Any], tf.Tensor], tuple[Any, ...]]:
    """The loss of ``model`` on one ``batch`` in inference mode, as ``(fn, primals)``.

    ``fn(variables)`` calls ``loss_fn(model, batch)`` (with ``training=False`` if ``loss_fn``
    has a ``training`` parameter, as for :class:`tapekit.Trainer`) and returns the loss
    (the first element if it returns ``(loss, extras)``); ``primals`` is
    ``(model.trainable_variables,)``. Pass both to :func:`top_eigenvalues`, :func:`trace`,
    :func:`density` or :func:`tapekit.hvp`. Make the pair once and reuse it: a new ``fn``
    is compiled anew.

    Args:
        model: A Keras model (or layer, or ``tf.Module``) whose trainable variables are the
            parameters.
        loss_fn: ``loss_fn(model, batch) -> loss | (loss, extras)``, a float scalar.
        batch: The batch, e.g. ``(x, y)``, fixed for this ``fn``.

    Returns:
        ``(fn, primals)``.

    Raises:
        TypeError: If ``loss_fn`` is not callable.
        ValueError: If the model has no trainable variables (e.g. it is not built yet).

    Example:
        >>> import keras, numpy as np, tapekit
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
        >>> mse = lambda m, b: keras.ops.mean((m(b[0]) - b[1]) ** 2)
        >>> fn, primals = tapekit.curvature.model_loss(model, mse, (x, y))
        >>> values, _ = tapekit.curvature.top_eigenvalues(fn, primals, seed=0)
        >>> round(float(values[0]), 3)  # 2 * |(x, 1)|^2 / 1 for rows of ones
        8.0
    """
    if not callable(loss_fn):
        raise TypeError(
            f"model_loss needs a callable `loss_fn(model, batch)`, but received "
            f"{describe_received(loss_fn)}."
        )
    variables = list(getattr(model, "trainable_variables", []))
    if not variables:
        raise ValueError(
            f"model_loss needs a model with trainable variables, but {describe_received(model)} "
            f"has none. Build it first (call it on a batch, or give it a keras.Input)."
        )
    return _inference_loss(model, loss_fn, batch), (variables,)


def _inference_loss(model: Any, loss_fn: Callable, batch: Any) -> Callable[..., tf.Tensor]:
    """``fn(variables, batch=<the fixed batch>)``: ``loss_fn(model, batch)`` in inference mode,
    reading the parameters through ``model`` (``variables`` are only the watched sources)."""
    try:
        takes_training = "training" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        takes_training = False
    fixed = tf.nest.map_structure(tf.convert_to_tensor, batch)

    def loss_of_model(_variables: Any, batch: Any = None) -> tf.Tensor:
        batch = fixed if batch is None else batch
        # (traced: the user's Python control flow on tensors is converted, as in the Trainer)
        f = _compile.autographed(loss_fn)
        out = f(model, batch, training=False) if takes_training else f(model, batch)
        return out[0] if isinstance(out, (tuple, list)) else out

    return loss_of_model
