"""check_grads: compare automatic derivatives with central finite differences computed in float64.

For order k and each mode ("rev": ``tf.GradientTape.jacobian``, "fwd":
``tf.autodiff.ForwardAccumulator``), the full k-th derivative is formed and compared element by
element with central differences of the (k-1)-th derivative. It is meant for small functions, such
as one written with ``tf.custom_gradient``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from . import _args, _tensors
from .errors import describe_received

__all__ = ["check_grads"]

_MAX_ELEMENTS = 200_000

# Default tolerances by the dtype the analytic derivatives are computed in (compared with float64
# differences: float32 derivatives are good to ~1e-6, so 1e-4 still catches an error of 1e-3).
_TOL = {tf.float64: 1e-5, tf.float32: 1e-4, tf.float16: 1e-2, tf.bfloat16: 5e-2}
# Default finite-difference step by the dtype the differences are computed in.
_EPS = {tf.float64: 1e-5, tf.float32: 1e-3, tf.float16: 3e-2, tf.bfloat16: 3e-2}

Flat = Callable[[list[tf.Tensor]], tf.Tensor]


def _flat_output(out: Any, fn: Callable) -> tf.Tensor:
    leaves = [_args.as_output_tensor(o, fn, "check_grads") for o in tf.nest.flatten(out)]
    if not leaves:
        raise ValueError(f"check_grads: `{_args.fn_name(fn)}` returned no tensors.")
    dtype = leaves[0].dtype
    return tf.concat([tf.reshape(tf.cast(o, dtype), [-1]) for o in leaves], axis=0)


def _rev(g: Flat) -> Flat:
    def dg(leaves: list[tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(leaves)
            y = g(leaves)
        blocks = tape.jacobian(y, leaves, unconnected_gradients=_tensors.ZERO)
        n_out = int(y.shape[0])
        blocks = [tf.cast(tf.reshape(b, [n_out, -1]), y.dtype) for b in blocks]  # mixed dtypes
        return tf.reshape(tf.concat(blocks, axis=1), [-1])

    return dg


def _fwd(g: Flat) -> Flat:
    def dg(leaves: list[tf.Tensor]) -> tf.Tensor:
        cols = []
        for j, leaf in enumerate(leaves):
            size = leaf.shape.num_elements()
            for e in range(size):
                tangents = [tf.zeros_like(x) for x in leaves]
                tangents[j] = tf.reshape(tf.one_hot(e, size, dtype=leaf.dtype), leaf.shape)
                with tf.autodiff.ForwardAccumulator(leaves, tangents) as acc:
                    y = g(leaves)
                cols.append(acc.jvp(y, unconnected_gradients=_tensors.ZERO))
        return tf.reshape(tf.stack(cols, axis=1), [-1])

    return dg


def _fast(g: Flat) -> Flat:
    """``g`` compiled with tf.function (the derivative chains are loops of small eager ops);
    falls back to eager execution for functions that cannot be traced."""
    compiled = tf.function(g, autograph=False)
    state = {"eager": False}

    def run(xs: list[tf.Tensor]) -> tf.Tensor:
        if not state["eager"]:
            try:
                return compiled(xs)
            except (
                TypeError,
                AttributeError,
                NotImplementedError,
                tf.errors.OperatorNotAllowedInGraphError,
            ):
                state["eager"] = True
        return g(xs)

    return run


def _finite_differences(g: Flat, leaves: list[tf.Tensor], eps: float) -> np.ndarray:
    cols = []
    for j, leaf in enumerate(leaves):
        base = leaf.numpy().reshape(-1)
        for e in range(base.size):
            shifted = []
            for sign in (1.0, -1.0):
                x = base.copy()
                x[e] += sign * eps
                moved = list(leaves)
                moved[j] = tf.constant(x.reshape(leaf.shape), leaf.dtype)
                shifted.append(g(moved).numpy().astype(np.float64))
            cols.append((shifted[0] - shifted[1]) / (2 * eps))
    return np.stack(cols, axis=1).reshape(-1)


def _element_names(fn: Callable, structure: list[Any]) -> list[str]:
    """Readable names (``x[1]``, ``params['w'][0, 2]``) of every input element, in flat order."""
    names = _args.param_names(fn) or []
    out = []
    for i, a in enumerate(structure):
        base = names[i] if i < len(names) else f"args[{i}]"
        for path, leaf in zip(_args.leaf_paths(a), tf.nest.flatten(a)):
            out.extend(f"{base}{path}{sub}" for sub in _index_suffixes(tuple(leaf.shape)))
    return out


def _index_suffixes(shape: tuple[int, ...]) -> list[str]:
    if not shape:
        return [""]
    return [f"[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def _describe(
    flat_index: int, order: int, n_in: int, out_names: list[str], in_names: list[str]
) -> str:
    """Name element ``flat_index`` of the order-k derivative, shaped [n_out, n_in, ..., n_in]."""
    wrt = []
    rest = flat_index
    for _ in range(order):
        rest, c = divmod(rest, n_in)
        wrt.append(in_names[c])
    power = "" if order == 1 else str(order).translate(_SUPERSCRIPT)
    return f"∂{power}{out_names[rest]} / " + " ".join(f"∂{w}" for w in reversed(wrt))


def check_grads(
    fn: Callable,
    args: Sequence[Any],
    order: int = 1,
    *,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
) -> None:
    """Check ``fn``'s derivatives up to ``order`` against central finite differences.

    Every input (each argument, every leaf of nested arguments) is differentiated. For each order
    k = 1..order and each mode, the full k-th derivative is computed by TensorFlow in the inputs'
    dtype and compared elementwise with central differences of the (k-1)-th derivative, computed
    in float64 (or in the inputs' dtype if ``fn`` cannot run in float64). Meant for small inputs.

    Args:
        fn: A function of ``len(args)`` arguments returning a float tensor or a nest of them.
        args: A tuple (or list) of arguments: numbers, arrays, tensors, variables or nests.
        order: Highest derivative order to check (>= 1).
        modes: Any of ``"fwd"`` (forward mode, ``ForwardAccumulator``) and ``"rev"`` (reverse
            mode, ``GradientTape.jacobian``). At order k > 1, ``"fwd"`` is forward mode over the
            reverse-mode (k-1)-th derivative. Note that TensorFlow's forward mode differentiates
            the forward ops of a ``tf.custom_gradient`` function, not its custom gradient: use
            ``"rev"`` to check a custom gradient.
        atol: Absolute tolerance; default by the inputs' dtype (float64 1e-5, float32 1e-4,
            float16 1e-2, bfloat16 5e-2; 1e-2 at least when ``fn`` cannot compute in float64).
        rtol: Relative tolerance (same defaults as ``atol``).
        eps: Finite-difference step; default 1e-5 in float64, 1e-3 in float32.

    Returns:
        None. Passing silently means every element agreed within ``atol + rtol * |numerical|``.

    Raises:
        AssertionError: On a mismatch, naming the mode, the order, the worst element (which
            output and which inputs), its analytic and numerical values and how many elements
            failed.
        TypeError: If ``fn`` is not callable, ``args`` is not a tuple/list, or an input is not
            floating point.
        ValueError: If ``order`` < 1, a mode is unknown, or the inputs are too large.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> x = tf.constant([0.5, 1.5], tf.float64)
        >>> tapekit.check_grads(lambda x: tf.sin(x) * x, (x,), order=2)  # silent: all agree
    """
    _args.check_callable(fn, "check_grads")
    if not isinstance(args, (tuple, list)):
        raise TypeError(
            f"check_grads needs `args` as a tuple of arguments, but received "
            f"{describe_received(args)}. Wrap a single argument: check_grads(f, (x,))."
        )
    if not args:
        raise ValueError(
            "check_grads needs at least one argument to differentiate, e.g. check_grads(f, (x,))."
        )
    if not isinstance(order, int) or isinstance(order, bool) or order < 1:
        raise ValueError(f"check_grads needs an int order >= 1, but received order={order!r}.")
    if isinstance(modes, str):
        modes = (modes,)
    bad = [m for m in modes if m not in ("fwd", "rev")]
    if bad or not modes:
        raise ValueError(
            f"check_grads: modes must be a non-empty subset of ('fwd', 'rev'), but "
            f"received {tuple(modes)!r}."
        )

    prepared = [
        _args.prepare(a, _args.describe_arg(fn, i), "check_grads")[0] for i, a in enumerate(args)
    ]
    structure = [tf.nest.map_structure(tf.convert_to_tensor, p) for p in prepared]
    leaves = [tf.convert_to_tensor(x) for x in tf.nest.flatten(structure)]
    n_in = sum(x.shape.num_elements() for x in leaves)

    def g0(xs: list[tf.Tensor]) -> tf.Tensor:
        return _flat_output(fn(*tf.nest.pack_sequence_as(structure, xs)), fn)

    out0 = g0(leaves)
    n_out = int(out0.shape[0])
    if n_out * n_in**order > _MAX_ELEMENTS:
        raise ValueError(
            f"check_grads forms full derivatives, and order {order} of a function with {n_in} "
            f"input and {n_out} output elements has {n_out * n_in**order:,} of them. Check it "
            f"on smaller inputs (a few elements are enough)."
        )
    dtype = leaves[0].dtype
    tol = _TOL.get(dtype, 1e-3)
    leaves64 = [tf.cast(x, tf.float64) for x in leaves]
    try:
        work = g0(leaves64).dtype  # the precision fn really computes in (Keras layers: float32)
    except (TypeError, ValueError, tf.errors.InvalidArgumentError):
        work = out0.dtype
    if work == tf.float64:
        fd_leaves, fd_note = leaves64, "float64"
    else:
        fd_leaves = leaves
        fd_note = f"{work.name} (`{_args.fn_name(fn)}` does not compute in float64)"
        tol = max(tol, _TOL.get(work, 1e-3), 1e-2)
    atol = tol if atol is None else atol
    rtol = tol if rtol is None else rtol
    step = _EPS.get(work, 1e-3) if eps is None else eps

    in_names = _element_names(fn, structure)
    out_struct = fn(*tf.nest.pack_sequence_as(structure, leaves))
    out_names = []
    for path, o in zip(_args.leaf_paths(out_struct), tf.nest.flatten(out_struct)):
        out_names.extend(
            f"out{path}{sub}" for sub in _index_suffixes(tuple(tf.convert_to_tensor(o).shape))
        )

    for mode in modes:
        derive = _fwd if mode == "fwd" else _rev
        g = g0
        for k in range(1, order + 1):
            # forward mode is applied last, over the reverse-mode (k-1)-th derivative: nested
            # forward accumulators cost n^k passes, forward-over-reverse only n.
            dg = derive(g)
            analytic = _fast(dg)(leaves).numpy().astype(np.float64)
            numerical = _finite_differences(_fast(g), fd_leaves, step)
            excess = np.abs(analytic - numerical) - (atol + rtol * np.abs(numerical))
            excess = np.where(np.isnan(excess), np.inf, excess)
            if np.any(excess > 0):
                worst = int(np.argmax(excess))
                where = _describe(worst, k, n_in, out_names, in_names)
                raise AssertionError(
                    f"check_grads: the order-{k} derivative of `{_args.fn_name(fn)}` in {mode} "
                    f"mode "
                    f"does not match central finite differences ({fd_note}, eps={step:g}). Worst "
                    f"element {where} (flat index {worst}): analytic {analytic[worst]:.8g}, "
                    f"numerical {numerical[worst]:.8g}, |difference| "
                    f"{abs(analytic[worst] - numerical[worst]):.3g} > atol {atol:g} + rtol "
                    f"{rtol:g} * |numerical|. {int(np.sum(excess > 0))} of {excess.size} "
                    f"elements are out of tolerance."
                )
            g = _rev(g)
