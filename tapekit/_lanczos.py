"""The Hessian of a scalar function as a linear operator over ``hvp``, and the Lanczos loop.

The operator flattens the primals (a tuple of nests of tensors/variables) into one float64
NumPy vector on the host; each product is one call of the compiled, cached
:func:`tapekit.hvp` (the same function object every time, so it is traced once). The small
tridiagonal eigenproblems are solved in NumPy float64. Used by :mod:`tapekit.curvature`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ._tensors import variable as _variable
from .errors import describe_received
from .hessians import hvp

__all__ = ["HessianOperator", "lanczos", "rademacher", "tridiagonal_eigh"]


def _leaf(value: Any) -> Any:
    """A differentiable leaf: a tf.Variable (or Keras variable) as it is, else a tensor."""
    if _variable(value) is not None:
        return value
    return tf.convert_to_tensor(value)


class HessianOperator:
    """``v -> H v`` for the Hessian of scalar ``fn`` at ``primals``, on flat float64 vectors.

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
        self.fn = fn
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
        self.products = 0

    def unflatten(self, flat: np.ndarray) -> tuple[Any, ...]:
        """A flat vector (or a ``(k, n)`` stack) as tensors shaped like the primals."""
        lead = flat.shape[:-1]
        pieces, start = [], 0
        for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes):
            part = flat[..., start : start + size].reshape(lead + shape)
            pieces.append(tf.constant(part, dtype=dtype))
            start += size
        return tuple(tf.nest.pack_sequence_as(self.primals, pieces))

    def flatten(self, nest: Any) -> np.ndarray:
        """Tensors shaped like the primals (optionally with a common leading axis), flat."""
        leaves = tf.nest.flatten(nest)
        if len(leaves) != len(self.shapes):
            raise ValueError(
                f"expected {len(self.shapes)} arrays shaped like the primals, received "
                f"{len(leaves)}."
            )
        arrays = [np.asarray(leaf, dtype=np.float64) for leaf in leaves]
        lead = arrays[0].shape[: arrays[0].ndim - len(self.shapes[0])]
        return np.concatenate([a.reshape(lead + (-1,)) for a in arrays], axis=-1)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """``H v`` as a flat vector at the primals' precision (one compiled hvp)."""
        self.products += 1
        out = hvp(self.fn, self.primals, self.unflatten(v))
        flat = np.concatenate([np.asarray(t).ravel() for t in tf.nest.flatten(out)])
        return flat.astype(self.store, copy=False)


def rademacher(rng: np.random.Generator, n: int) -> np.ndarray:
    """A vector of independent random signs (float64)."""
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def tridiagonal_eigh(alpha: Sequence[float], beta: Sequence[float]) -> tuple:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix."""
    m = len(alpha)
    t = np.diag(np.asarray(alpha, np.float64))
    if m > 1:
        off = np.asarray(beta[: m - 1], np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """``a · b`` of two flat vectors without BLAS: multi-threaded BLAS competing with
    TensorFlow's own threads is up to 100x slower for one long dot product (einsum is not)."""
    return float(np.einsum("i,i->", a, b))


def norm(w: np.ndarray) -> float:
    """The Euclidean norm of a flat vector (see :func:`dot`)."""
    return float(np.sqrt(dot(w, w)))


def _orthogonalize(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``w`` minus its projection on the orthonormal rows of ``basis``: classical Gram-Schmidt,
    repeated when it cancelled most of ``w`` (the DGKS criterion), at the basis' precision."""
    if basis.shape[0] == 0:
        return w
    w = w.astype(basis.dtype, copy=False)
    for _ in range(2):
        before = norm(w)
        # Row-wise dot products and einsum, not BLAS matrix-vector products: multi-threaded
        # BLAS on a busy machine (TensorFlow's own threads included) is up to 10x slower here.
        coefficients = np.array([dot(row, w) for row in basis], dtype=basis.dtype)
        w = w - np.einsum("i,ij->j", coefficients, basis)
        if norm(w) > 0.7 * before:
            break
    return w


def lanczos(
    op: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    steps: int,
    *,
    locked: np.ndarray | None = None,
    store: type = np.float64,
    converged: Callable[[np.ndarray, np.ndarray, float], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Lanczos with full reorthogonalisation, optionally in the complement of ``locked``.

    Args:
        op: The symmetric operator on flat vectors.
        start: The starting vector (need not be normalised).
        steps: At most this many iterations (products of ``op``).
        locked: Orthonormal rows the Krylov space is kept orthogonal to (deflation).
        store: The dtype the Lanczos basis is stored in.
        converged: ``converged(ritz_values, ritz_vectors_of_T, beta)`` says when to stop.

    Returns:
        ``(alpha, beta, basis, last_beta)``: the tridiagonal coefficients, the ``(m, n)``
        Lanczos basis and the last off-diagonal (the residual scale).
    """
    n = start.shape[0]
    locked = np.zeros((0, n), store) if locked is None else locked
    steps = max(1, min(steps, n - locked.shape[0]))
    basis = np.empty((steps, n), store)
    alpha: list[float] = []
    beta: list[float] = []
    q = _orthogonalize(np.asarray(start, store), locked)
    q = q / norm(q)
    b = 0.0
    for j in range(steps):
        basis[j] = q
        w = op(q).astype(store, copy=False)
        a = dot(q, w)
        w = _orthogonalize(w, locked)
        w = _orthogonalize(w, basis[: j + 1])
        b = norm(w)
        alpha.append(a)
        scale = max(abs(x) for x in alpha) + (max(beta) if beta else 0.0)
        breakdown = b <= 1e-10 * max(scale, np.finfo(np.float64).tiny)
        if breakdown or j + 1 == steps:
            return np.array(alpha), np.array(beta + [b]), basis[: j + 1], 0.0 if breakdown else b
        if converged is not None:
            values, vectors = tridiagonal_eigh(alpha, beta)
            if converged(values, vectors, b):
                return np.array(alpha), np.array(beta + [b]), basis[: j + 1], b
        beta.append(b)
        q = w / b
    raise AssertionError("unreachable")  # pragma: no cover
