"""Compiled loops of Hessian-vector products: the Lanczos method and Hutchinson's samples.

:func:`lanczos` runs a whole Lanczos run in one compiled call (a ``tf.while_loop`` over the
Hessian-vector products of :func:`tapekit.hessians.hvp_at`, with full
reorthogonalisation and the convergence test in the graph), cached per function like
``hvp``: no host round trip per product, and no vector through NumPy (starts are made in the
call, results leave it shaped like the primals). :class:`HessianOperator` holds the point, its
shapes and dtypes; inside the loop, vectors are the primals flattened end to end in
``tf.nest.flatten`` order, each leaf padded to 64 bytes (:class:`_Layout`).
:func:`quadratic_forms` gives the Hutchinson samples ``zᵀHz`` the same way. Used by
:mod:`tapekit.curvature`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from . import _calls, _compile, _vectorize
from ._tensors import variable as _variable
from .errors import describe_received
from .hessians import dense_gradient, hvp_at, hvp_products

__all__ = ["HessianOperator", "Run", "lanczos", "quadratic_forms", "tridiagonal_eigh"]


def _leaf(value: Any) -> Any:
    """A differentiable leaf: a tf.Variable (or Keras variable) as it is, else a tensor."""
    if _variable(value) is not None:
        return value
    return tf.convert_to_tensor(value)


class HessianOperator:
    """The Hessian of scalar ``fn`` at ``primals``: the point, its sizes, dtypes and width.

    Args:
        fn: A function of ``len(primals)`` arguments returning a float scalar.
        primals: A tuple (or list) of arguments; entries may be nests.
        what: The public function name, for error messages.
    """

    def __init__(self, fn: Callable, primals: Sequence[Any], what: str) -> None:
        if not callable(fn):
            raise TypeError(f"{what} needs a callable `fn`, but received {describe_received(fn)}.")
        if not isinstance(primals, (tuple, list)):
            raise TypeError(
                f"{what} needs `primals` as a tuple with one entry per argument of fn, but "
                f"received {describe_received(primals)}. Wrap a single argument: (x,)."
            )
        self.fn, self.what = fn, what
        self.primals = tuple(tf.nest.map_structure(_leaf, tuple(primals)))
        leaves = tf.nest.flatten(self.primals)
        if not leaves:
            raise ValueError(f"{what} needs at least one value in `primals`; received none.")
        self.dtypes = [tf.as_dtype(leaf.dtype) for leaf in leaves]
        for i, dtype in enumerate(self.dtypes):
            if not dtype.is_floating:
                raise TypeError(
                    f"{what} differentiates every primal, but leaf {i} of `primals` has dtype "
                    f"{dtype.name}. Pass floating-point values (tf.cast(x, tf.float32))."
                )
        self.shapes = [tuple(int(d) for d in leaf.shape) for leaf in leaves]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.n = int(sum(self.sizes))
        widest = max(self.dtypes, key=lambda d: d.size)
        self.dtype = widest  # of the returned values
        # Lanczos vectors are stored at the primals' precision (halves memory for float32).
        self.store = np.float64 if widest.size >= 8 else np.float32
        self.width = sum(_aligned(size, self.store) for size in self.sizes)

    def starts(self, init: Any, k: int) -> list[tf.Tensor]:
        """``init`` (vectors shaped like the primals, optionally with a leading axis, or None)
        as one ``(k, *shape)`` tensor per leaf in the storage dtype: rows missing are zero
        (a random start), extra rows are dropped."""
        if init is None:
            return [tf.zeros((k, *shape), self.store) for shape in self.shapes]
        leaves = tf.nest.flatten(init)
        if len(leaves) != len(self.shapes):
            raise ValueError(
                f"{self.what} needs `init` shaped like `primals` ({len(self.shapes)} arrays), "
                f"but received {len(leaves)} arrays. Pass the vectors it returned before."
            )
        out = []
        for leaf, shape in zip(leaves, self.shapes):
            t = tf.cast(leaf, self.store)
            t = t[None] if t.shape.rank == len(shape) else t
            if tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"{self.what} needs each `init` array shaped like its primal {shape} "
                    f"(with an optional leading axis), but received shape {tuple(leaf.shape)}."
                )
            rows = int(t.shape[0])
            if rows < k:
                t = tf.concat([t, tf.zeros((k - rows, *shape), self.store)], 0)
            out.append(t[:k] if rows > k else t)
        return out

    def run(self, transform: str, core: Callable, extra: list[tf.Tensor]) -> Any:
        """``core(fn, call)`` at the point, with ``extra`` tensors, compiled and cached per
        function and ``transform`` (as ``hvp`` is)."""
        call = _calls.make_call(
            self.fn, self.primals, {}, tuple(range(len(self.primals))), self.what
        )
        call.extra.extend(extra)
        return _compile.run(self.fn, transform, (), core, call, compile=True, jit_compile=False)


def tridiagonal_eigh(alpha: Sequence[float], beta: Sequence[float]) -> tuple:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix."""
    m = len(alpha)
    t = np.diag(np.asarray(alpha, np.float64))
    if m > 1:
        off = np.asarray(beta[: m - 1], np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


class Run(NamedTuple):
    """One Lanczos run: the tridiagonal coefficients and the wanted Ritz pair.

    ``alpha`` (length m) and ``beta`` (length m, the last one the residual scale, 0 after a
    breakdown) define T; ``value`` and ``leaves`` are T's wanted Ritz pair: a unit vector,
    one ``(1, *shape)`` tensor per leaf of the primals in its dtype. ``vector`` is the same
    vector in the loop's layout (a row for ``locked``), ``residual`` is ``|H y - θ y|``, and
    ``gradient_norms`` are the gradient's norms at the point, one per leaf (the loop computes
    the gradient anyway).
    """

    alpha: np.ndarray
    beta: np.ndarray
    value: float
    leaves: list[tf.Tensor]
    vector: tf.Tensor
    residual: float
    gradient_norms: np.ndarray


def lanczos(
    op: HessianOperator,
    steps: int,
    *,
    seed: np.random.Generator,
    init: list[tf.Tensor] | None = None,
    run: int = 0,
    noise: float = 1.0,
    signs: bool = False,
    locked: tf.Tensor | None = None,
    tol: float = 0.0,
    which: str = "algebraic",
    capacity: int = 0,
) -> Run:
    """Lanczos with full reorthogonalisation over ``op``'s Hessian, in the complement of
    ``locked``, all in one compiled call (see :func:`_lanczos_loop`), the start included.

    Args:
        op: The Hessian operator (its function, point, sizes and storage dtype).
        steps: At most this many iterations (Hessian-vector products).
        seed: Draws the seed of the random part of the start (drawn in the graph).
        init: Starting directions from :meth:`HessianOperator.starts` (e.g. the previous
            eigenvectors; row ``run`` is used, normalised in the loop), or None.
        run: The row of ``init``.
        noise: The start is ``d / |d| + noise * u / sqrt(n)``, ``u`` uniform with unit
            variance; with no (or a zero) direction ``d``, the start is ``u``. A continuous
            distribution, not random signs: in few dimensions, sign vectors are orthogonal to
            an eigenvector such as (1, 1, 1, 1) with a large probability, and Lanczos would
            never see its eigenvalue.
        signs: Start from random signs instead (stochastic Lanczos quadrature).
        locked: Orthonormal rows (``Run.vector`` of earlier runs) the Krylov space is kept
            orthogonal to (deflation).
        tol: Stop once the wanted Ritz pair's residual is at most ``tol · |θ|``; 0 runs all
            ``steps`` (unless the Krylov space is exhausted).
        which: The wanted Ritz value: ``"algebraic"`` (largest) or ``"magnitude"``.
        capacity: Rows ``locked`` is padded to with zeros (harmless to orthogonalise against),
            so all runs of one ``top_eigenvalues`` call share one trace.

    Returns:
        A :class:`Run`.
    """
    rows = 0 if locked is None else int(locked.shape[0])
    steps = max(1, min(int(steps), op.n - rows))
    padded = tf.zeros((max(rows, capacity) - rows, op.width), op.store)
    if rows:
        padded = tf.concat([locked, padded], 0)
    init = op.starts(None, 1) if init is None else init
    out = op.run(
        "lanczos",
        _lanczos_core,
        [
            *init,
            tf.constant(run, tf.int32),
            tf.constant(seed.integers(0, 2**31 - 1, size=2), tf.int64),
            tf.constant(float(noise), tf.float64),
            tf.constant(bool(signs)),
            padded,
            tf.constant(steps, tf.int32),
            tf.constant(float(tol), tf.float64),
            tf.constant(which == "magnitude"),
        ],
    )
    alpha, beta, value, vector, residual, norms, *leaves = out
    return Run(
        alpha.numpy(), beta.numpy(), float(value), leaves, vector, float(residual), norms.numpy()
    )


def quadratic_forms(op: HessianOperator, samples: int, seed: np.random.Generator) -> np.ndarray:
    """``zᵀ H z`` for ``samples`` random sign vectors ``z``, drawn in the graph (stateless,
    seeded by ``seed``), in one compiled call over products of :func:`hvp_at` (the loss and
    gradient computed once), or of :func:`hvp_products` where that cannot be built.

    Returns:
        The ``samples`` values, float64.
    """
    extra = [
        tf.constant(seed.integers(0, 2**31 - 1, size=2), tf.int64),
        tf.constant(int(samples), tf.int32),
        tf.zeros([0], dtype=op.store),  # carries the storage dtype
    ]
    return op.run("quadratic_forms", _quadratic_core, extra).numpy()


def _with_products(fn: Callable, call: _calls.Call, loop: Callable[[Callable], Any]) -> Any:
    """``loop(multiply)`` over products of :func:`hvp_at` (the loss and gradient computed
    once, before the loop), or, where TensorFlow cannot differentiate the gradient in reverse
    mode, over :func:`hvp_products` (forward-over-reverse, repeated in the loop)."""
    return _vectorize.forward_or_reverse(  # (first, else second)
        lambda: loop(hvp_at(fn, call)), lambda: loop(lambda t: hvp_products(fn, call, t))
    )


def _quadratic_core(fn: Callable, call: _calls.Call) -> tf.Tensor:
    seed, samples, like = call.extra
    sources = call.sources

    def loop(multiply: Callable) -> tf.Tensor:
        def body(i: tf.Tensor, quads: tf.TensorArray) -> tuple:
            signs = [
                _signs(
                    source.shape,
                    tf.stack([seed[0] + tf.cast(i, tf.int64), seed[1] + k]),
                    source.dtype,
                )
                for k, source in enumerate(sources)
            ]
            products = multiply(signs)
            quad = tf.add_n(
                [
                    tf.reduce_sum(tf.cast(z, like.dtype) * tf.cast(p, like.dtype))
                    for z, p in zip(signs, products)
                ]
            )
            return i + 1, quads.write(i, tf.cast(quad, tf.float64))

        _, quads = tf.while_loop(
            lambda i, q: i < samples,
            body,
            (tf.constant(0), tf.TensorArray(tf.float64, size=samples)),
        )
        return quads.stack()

    return _with_products(fn, call, loop)


def _signs(shape: Any, seed: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Independent random signs (stateless, seeded by ``seed``)."""
    bits = tf.random.stateless_uniform(shape, seed)
    return tf.where(bits < 0.5, -tf.ones([], dtype), tf.ones([], dtype))


def _project_out(w: tf.Tensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``w`` minus its projection on the orthonormal ``rows``, and the coefficients ``rows·w``
    (one classical Gram-Schmidt pass; ``tensordot`` is a matrix product, faster here than
    ``matvec`` with a transpose). Two passes ("twice is enough") keep float32 orthogonal."""
    c = tf.tensordot(rows, w, 1)
    return w - tf.tensordot(c, rows, 1), c


def _aligned(size: int, store: Any) -> int:
    """``size`` elements of ``store`` rounded up to a multiple of 64 bytes."""
    align = 64 // np.dtype(store).itemsize
    return -(-size // align) * align


class _Layout:
    """The loop's vectors: the sources flattened end to end, each padded with zeros to a
    multiple of 64 bytes. Then every row of the basis starts on an aligned address, so
    slicing its first rows and splitting a vector into the sources' parts are views, not
    copies (TensorFlow copies unaligned slices); the zeros stay zero under the recurrence."""

    def __init__(self, sources: Sequence[tf.Tensor], store: tf.DType) -> None:
        self.sources, self.store = list(sources), store
        self.sizes = [int(source.shape.num_elements()) for source in self.sources]
        self.widths = [_aligned(size, store.as_numpy_dtype) for size in self.sizes]
        self.width = sum(self.widths)

    def pad(self, flat: tf.Tensor) -> tf.Tensor:
        """A flat vector (``tf.nest.flatten`` order) in this layout."""
        pieces = tf.split(flat, self.sizes)
        return tf.concat([tf.pad(p, [[0, w - s]]) for p, s, w in self._zip(pieces)], 0)

    def tangents(self, vector: tf.Tensor) -> list[tf.Tensor]:
        """A vector of this layout as tensors shaped (and typed) like the sources."""
        pieces = tf.split(vector, self.widths)
        return [
            tf.cast(tf.reshape(p if s == w else p[:s], source.shape), source.dtype)
            for (p, s, w), source in zip(self._zip(pieces), self.sources)
        ]

    def vector(self, tensors: Sequence[tf.Tensor]) -> tf.Tensor:
        """Tensors shaped like the sources as one vector of this layout."""
        parts = []
        for t, s, w in self._zip(tensors):
            parts.append(tf.reshape(tf.cast(t, self.store), [-1]))
            if w > s:
                parts.append(tf.zeros([w - s], self.store))
        return tf.concat(parts, 0)

    def _zip(self, items: Sequence[Any]) -> Any:
        return zip(items, self.sizes, self.widths)


def _basis_with_row(basis: tf.Tensor, j: tf.Tensor, q: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
    """``basis`` (rows ``< j`` in use) with ``q`` as row ``j``, written in place.

    The rows live in one buffer, so the reorthogonalisation reads a view of its first rows
    (a ``TensorArray`` is gathered, a copy of the whole basis, every iteration). The buffer
    starts with 8 rows and doubles when full (up to ``steps``), so its memory follows the
    iterations actually run. ``InplaceUpdate`` writes into its input's buffer, which is safe
    here: the buffer is made (``Empty``, or the ``concat`` that grows it) by this loop in this
    call and never leaves it, rows are read only after they are written, and row ``j`` is
    written before any reader of it exists (readers of the earlier rows see no change).
    """
    width = tf.shape(basis)[1]

    def grown() -> tf.Tensor:
        rows = tf.minimum(2 * tf.shape(basis)[0], steps) - tf.shape(basis)[0]
        return tf.concat(
            [basis, tf.raw_ops.Empty(shape=tf.stack([rows, width]), dtype=basis.dtype)], 0
        )

    basis = tf.cond(j < tf.shape(basis)[0], lambda: basis, grown)
    return tf.raw_ops.InplaceUpdate(x=basis, i=tf.reshape(j, [1]), v=q[None])


def _ritz(alphas: tf.Tensor, betas: tf.Tensor, magnitude: tf.Tensor) -> tuple:
    """The tridiagonal T of ``alphas`` and (one fewer) ``betas``: its eigenvalues and
    eigenvectors (float64) and the index of the wanted one."""
    m = tf.size(alphas)
    t = tf.linalg.diag(alphas)
    for k in (1, -1):
        t += tf.linalg.diag(betas, k=k, num_rows=m, num_cols=m)
    theta, s = tf.linalg.eigh(t)
    i = tf.where(magnitude, tf.argmax(tf.abs(theta)), tf.argmax(theta))
    return theta, s, i


def _lanczos_core(fn: Callable, call: _calls.Call) -> tuple[tf.Tensor, ...]:
    def loop(multiply: Callable) -> tuple[tf.Tensor, ...]:
        grads = getattr(multiply, "gradient", None)  # hvp_at's, else (fallback) one more
        grads = dense_gradient(fn, call, "top_eigenvalues") if grads is None else grads
        wide = [g if g.dtype.size >= 4 else tf.cast(g, tf.float32) for g in grads]  # no overflow
        norms = tf.stack([tf.cast(tf.norm(g), tf.float64) for g in wide])
        alpha, beta, value, y, residual, *leaves = _lanczos_loop(call, multiply)
        return (alpha, beta, value, y, residual, norms, *leaves)

    return _with_products(fn, call, loop)


def _lanczos_loop(call: _calls.Call, multiply: Callable) -> tuple[tf.Tensor, ...]:
    """The compiled Lanczos loop: a ``tf.while_loop`` of Hessian-vector products, each
    followed by full reorthogonalisation against ``locked`` and the basis (one growing buffer,
    see :func:`_basis_with_row`) and a convergence test on the small tridiagonal eigenproblem
    (``tf.linalg.eigh``). Iterating in the graph avoids a host round trip and NumPy passes
    over the basis per product; it halves a warm-started measurement of
    ``benchmarks/curvature.py``'s MLP. On that MLP, the aligned layout (:class:`_Layout`) and
    Gram-Schmidt twice in place of the three-term update take 15% off each iteration again."""
    count = len(call.sources)
    init, (run, seed, noise, signs, locked, steps, tol, magnitude) = (
        call.extra[:count],
        call.extra[count:],
    )
    layout = _Layout(call.sources, locked.dtype)
    store, size = layout.store, sum(layout.sizes)
    # The start: the direction's unit vector plus noise * u / sqrt(n), u uniform with unit
    # variance (u alone if the direction is 0), or random signs.
    direction = layout.vector([leaf[run] for leaf in init])
    length = tf.norm(direction)
    warm = length > 0
    direction = direction / tf.where(warm, length, tf.ones([], store))
    noise = tf.cast(tf.where(warm, noise, tf.ones([], tf.float64)), store)

    def noisy() -> tf.Tensor:
        # Uniform on [-h, h], h = noise * sqrt(3 / n): continuous like a Gaussian (so almost
        # surely not orthogonal to any eigenvector), with the same variance, at half the cost
        # of a Gaussian draw; drawn per leaf, straight into the layout.
        half = noise * np.sqrt(3.0 / size).astype(store.as_numpy_dtype)
        parts = [
            tf.random.stateless_uniform([n], seed + [0, k], -half, half, dtype=store)
            for k, n in enumerate(layout.sizes)
        ]
        return direction + layout.vector(parts)

    start = tf.cond(
        signs,
        lambda: layout.pad(_signs([size], seed, store)),
        lambda: tf.cond(noise > 0, noisy, lambda: direction),
    )
    eps = np.finfo(np.float64)

    deflate = locked.shape[0] > 0  # static: no ops at all for the first eigenvalue
    q = _project_out(_project_out(start, locked)[0], locked)[0] if deflate else start
    q = q / tf.norm(q)
    basis = tf.raw_ops.Empty(shape=tf.stack([tf.minimum(steps, 8), layout.width]), dtype=store)
    alphas = tf.TensorArray(tf.float64, size=steps)
    betas = tf.TensorArray(tf.float64, size=steps)

    def body(j, q, basis, alphas, betas, scale, done, broke):  # noqa: ANN001, ANN202
        basis = _basis_with_row(basis, j, q, steps)
        rows = basis[: j + 1]
        if deflate:
            rows = tf.concat([locked, rows], 0)
        w = layout.vector(multiply(layout.tangents(q)))
        # Full reorthogonalisation by classical Gram-Schmidt twice ("twice is enough"): the
        # first pass takes the recurrence's a = q·w and β·previous with it, the second removes
        # what rounding left. No separate dot product, three-term update or test on the path.
        w, c1 = _project_out(w, rows)
        w, c2 = _project_out(w, rows)
        a, b = c1[-1] + c2[-1], tf.norm(w)  # q is the last row
        a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
        alphas, betas = alphas.write(j, a), betas.write(j, b)
        # scale: max |alpha|, max beta before this one
        breakdown = b <= 1e-10 * tf.maximum(tf.maximum(scale[0], tf.abs(a)) + scale[1], eps.tiny)
        theta, s, i = _ritz(alphas.gather(tf.range(j + 1)), betas.gather(tf.range(j)), magnitude)
        floor = np.sqrt(eps.eps) * tf.reduce_max(tf.abs(theta))
        converged = b * tf.abs(s[-1, i]) <= tol * tf.maximum(tf.abs(theta[i]), floor)
        scale = tf.stack([tf.maximum(scale[0], tf.abs(a)), tf.maximum(scale[1], b)])
        following = w / tf.cast(tf.maximum(b, eps.tiny), store)  # unused after a breakdown
        done = tf.logical_or(breakdown, converged)
        return j + 1, following, basis, alphas, betas, scale, done, breakdown

    def more(j, q, basis, alphas, betas, scale, done, broke):  # noqa: ANN001, ANN202
        return tf.logical_and(j < steps, tf.logical_not(done))

    no, zero = tf.constant(False), tf.zeros([2], tf.float64)
    loop = (tf.constant(0), q, basis, alphas, betas, zero, no, no)
    m, _, basis, alphas, betas, _, _, broke = tf.while_loop(more, body, loop)
    alpha, beta = alphas.gather(tf.range(m)), betas.gather(tf.range(m))
    theta, s, i = _ritz(alpha, beta[:-1], magnitude)
    last = tf.where(broke, tf.zeros([], tf.float64), beta[-1])  # 0: the space is exhausted
    beta = tf.concat([beta[:-1], tf.reshape(last, [1])], 0)
    y = tf.tensordot(tf.cast(s[:, i], store), basis[:m], 1)
    y = y / tf.norm(y)
    leaves = [t[None] for t in layout.tangents(y)]
    return (alpha, beta, theta[i], y, last * tf.abs(s[-1, i]), *leaves)
