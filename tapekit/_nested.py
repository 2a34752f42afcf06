"""The machinery under :class:`tapekit.Tape`: nested persistent tapes and which of them record.

``Nested(order=k)`` holds ``k`` ``tf.GradientTape`` objects, outermost first. A first-order
gradient is asked of the innermost tape while the outer ones record it, so it can be
differentiated again by the next tape out; that is what hand-nested tapes do. Missing
gradients are diagnosed here (see ``_diagnose``) while the recording is still alive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorflow as tf
from tensorflow.python.eager import record as _record

from . import _diagnose, _missing

_NONE = tf.UnconnectedGradients.NONE
_ZERO = tf.UnconnectedGradients.ZERO


def _dense(g: Any) -> Any:
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


def zeros(leading: Any, source: Any, skip: int = 0) -> tf.Tensor:
    """Zeros of shape ``leading + source.shape[skip:]`` and ``source``'s dtype.

    ``leading`` is a tensor (its shape is used) or ``[]``; shapes known only at run time work.
    """
    lead = leading.shape if isinstance(leading, (tf.Tensor, tf.Variable)) else tf.TensorShape([])
    shape = lead.concatenate(source.shape[skip:])
    if shape.is_fully_defined():
        return tf.zeros(shape, source.dtype)
    parts = [tf.shape(leading)] if lead.rank else []
    return tf.zeros(tf.concat(parts + [tf.shape(source)[skip:]], 0), source.dtype)


def is_float(x: Any) -> bool:
    return x.dtype.is_floating or x.dtype.is_complex


class Nested:
    """``order`` persistent tapes; ``rec[i]`` says whether tape ``i`` is recording now."""

    def __init__(self, order: int, watch_accessed_variables: bool):
        self.tapes = [
            tf.GradientTape(persistent=True, watch_accessed_variables=watch_accessed_variables)
            for _ in range(order)
        ]
        self.rec = [False] * order
        self.watch_accessed = watch_accessed_variables
        self.watched: dict[int, Any] = {}  # id -> tensor/variable (kept alive so ids stay valid)
        self.paused: set[int] = set()  # ids of variables read inside stop_recording()
        self.keep: list[Any] = []  # ... kept alive so those ids stay valid

    def push(self) -> None:
        for i, t in enumerate(self.tapes):
            t.__enter__()
            self.rec[i] = True

    def pop(self) -> None:
        for i in reversed(range(len(self.tapes))):
            if self.rec[i]:
                self.tapes[i].__exit__(None, None, None)
                self.rec[i] = False

    def watch(self, value: Any) -> None:
        """Watch one tensor/variable on every tape (integer ones are only remembered)."""
        self.watched[id(value)] = value
        if is_float(value):
            for t in self.tapes:
                t.watch(value)

    @contextlib.contextmanager
    def recording(self, active: range | tuple) -> Iterator[None]:
        """Make exactly the tapes with indices in ``active`` record, restoring on exit."""
        with contextlib.ExitStack() as stack:
            for i, t in enumerate(self.tapes):
                if (i in active) != self.rec[i]:
                    stack.enter_context(self._switch(i, t, i in active))
            yield

    @contextlib.contextmanager
    def _switch(self, i: int, t: tf.GradientTape, on: bool) -> Iterator[None]:
        cm = t if on else t.stop_recording()  # re-entering a GradientTape resumes its recording
        cm.__enter__()
        self.rec[i] = on
        try:
            yield
        finally:
            cm.__exit__(None, None, None)
            self.rec[i] = not on

    def recorded(self, tensors: list) -> bool:
        """Whether the innermost tape recorded an op producing one of ``tensors``."""
        with self.recording((len(self.tapes) - 1,)):
            return bool(_record.should_record_backprop(tensors))

    def first_order(
        self,
        method: str,
        target: Any,
        flat: list,
        labels: list[str],
        mode: str,
        output_gradients: Any,
        active: range | tuple,
    ) -> list[Any]:
        """First-order gradients (innermost tape) of ``target`` w.r.t. the leaves ``flat``.

        The tapes in ``active`` record the computation. A missing gradient raises the
        diagnosed :class:`DisconnectedGradientError` for ``mode="raise"``, becomes zeros for
        ``"zero"`` and stays ``None`` otherwise. An op without a registered gradient always
        raises.
        """
        inner = self.tapes[-1]
        src = [_diagnose.tf_value(s) for s in flat]
        targets = [_diagnose.tf_value(t) for t in tf.nest.flatten(target)]
        use = [j for j, s in enumerate(src) if is_float(s)]
        grads: list[Any] = [None] * len(src)
        if use and all(is_float(t) for t in targets):
            try:
                with self.recording(active):
                    got = inner.gradient(
                        target,
                        [src[j] for j in use],
                        output_gradients=output_gradients,
                        unconnected_gradients=_NONE,
                    )
                    if active:  # densified where the outer tapes record it (for order >= 2)
                        got = [None if g is None else _dense(g) for g in got]
            except LookupError as exc:
                with self.recording(()):
                    op, hit = _diagnose.no_gradient_op(inner, targets, src, exc)
                found = [(j, "no_gradient_op", {"op": op}) for j in hit]
                raise self._error(method, labels, found, flat, False) from exc
            for j, g in zip(use, got):
                grads[j] = g
        if _missing.graph_of(targets) is not None:  # in a graph: a cut path is named (once per
            with self.recording(()):  # trace), also next to a path that has a gradient
                cut = _missing.cuts(targets, src, use)
            if cut:
                raise self._error(method, labels, cut, flat, False)
        missing = [j for j, g in enumerate(grads) if g is None]
        if missing and mode == "raise":
            with self.recording(()):
                found = _diagnose.causes(
                    inner,
                    targets,
                    src,
                    missing,
                    watched=self.watched,
                    watch_accessed=self.watch_accessed,
                    recorded=self.recorded,
                    paused=frozenset(self.paused),
                )
            raise self._error(method, labels, found, flat, True)
        if missing and mode == "zero":
            with self.recording(()):
                for j in missing:
                    grads[j] = zeros([], src[j])
        return grads

    def next_order(
        self, grads: list, flat: list, labels: list[str], level: int, order: int
    ) -> list[Any]:
        """Differentiate each leaf's ``(level - 1)``-th derivative once more w.r.t. that leaf."""
        k = len(self.tapes)
        tape = self.tapes[k - level]
        out: list[Any] = []
        with self.recording(range(k - order, k - level)):
            for j, (g, s) in enumerate(zip(grads, flat)):
                if g is None:
                    out.append(None)
                    continue
                src = _diagnose.tf_value(s)
                try:
                    # None here means a zero derivative: the previous one was connected. The
                    # result is densified where the outer tapes record it (for the next order).
                    out.append(_dense(tape.gradient(g, src, unconnected_gradients=_ZERO)))
                except LookupError as exc:
                    op, _ = _diagnose.no_gradient_op(tape, [_dense(g)], [src], exc)
                    found = [(j, "no_gradient_op", {"op": op})]
                    method = f"Tape.gradient at order {level}"
                    raise self._error(method, labels, found, flat, False) from exc
        return out

    @staticmethod
    def _error(
        method: str, labels: list[str], found: list, flat: list, alternatives: bool
    ) -> Exception:
        descriptions = [_diagnose.describe(s) for s in flat]
        return _diagnose.error(method, labels, found, descriptions, len(flat), alternatives)
