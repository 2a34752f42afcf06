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

from . import _diagnose, _missing, _tensors, _vectorize

_NONE = _tensors.NONE


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
        if _tensors.is_float(value):
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
        src = [_tensors.tf_value(s) for s in flat]
        targets = [_tensors.tf_value(t) for t in tf.nest.flatten(target)]
        use = [j for j, s in enumerate(src) if _tensors.is_float(s)]
        grads: list[Any] = [None] * len(src)
        if use and all(_tensors.is_float(t) for t in targets):
            try:
                with self.recording(active):
                    got = inner.gradient(
                        target,
                        [src[j] for j in use],
                        output_gradients=output_gradients,
                        unconnected_gradients=_NONE,
                    )
                    if active:  # densified where the outer tapes record it (for order >= 2)
                        got = [None if g is None else _tensors.dense(g) for g in got]
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
                    grads[j] = _tensors.zeros([], src[j])
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
                src = _tensors.tf_value(s)
                try:
                    # None here means a zero derivative: the previous one was connected. The
                    # result is densified where the outer tapes record it (for the next order).
                    out.append(
                        _tensors.dense(tape.gradient(g, src, unconnected_gradients=_tensors.ZERO))
                    )
                except LookupError as exc:
                    op, _ = _diagnose.no_gradient_op(tape, [_tensors.dense(g)], [src], exc)
                    found = [(j, "no_gradient_op", {"op": op})]
                    method = f"Tape.gradient at order {level}"
                    raise self._error(method, labels, found, flat, False) from exc
        return out

    def jacobian(
        self,
        name: str,
        t_flat: list,
        t_labels: list[str],
        flat: list,
        labels: list[str],
        mode: str,
        chunk: int | None,
        batch: bool,
    ) -> list[list[Any]]:
        """Per target leaf, the Jacobian block w.r.t. each source leaf (``None`` where missing
        with ``mode="none"``), vectorized with pfor over the innermost tape's recording."""
        src = [_tensors.tf_value(s) for s in flat]
        targets = [_tensors.tf_value(t) for t in t_flat]
        if batch and not _vectorize.same_batch(targets + src):
            raise ValueError(
                f"Tape.batch_jacobian needs the target(s) and source(s) to share one leading "
                f"(batch) dimension, but their shapes are "
                f"{[tuple(v.shape) for v in targets + src]}. Use Tape.jacobian instead."
            )
        first = "raise" if mode == "raise" else "none"  # missing blocks are filled in below
        connected = []  # per target leaf: which sources it depends on (each block on its own)
        for t, t_label in zip(t_flat, t_labels):
            method = f"Tape.{name}" if len(t_flat) == 1 else f"Tape.{name} of {t_label}"
            grads = self.first_order(method, t, flat, labels, first, None, ())
            connected.append([g is not None for g in grads])
        live = [j for j in range(len(src)) if any(c[j] for c in connected)]
        inner = self.tapes[-1]

        def vjp(cotangents: list[tf.Tensor]) -> list[Any]:
            return inner.gradient(
                targets,
                [src[j] for j in live],
                output_gradients=cotangents,
                unconnected_gradients=_tensors.ZERO,
            )

        with self.recording(()):
            blocks = (
                _vectorize.reverse(
                    vjp,
                    targets,
                    [src[j] for j in live],
                    batch=batch,
                    chunk_size=chunk,
                    what=f"Tape.{name}",
                )
                if live
                else [[] for _ in targets]
            )
            rows = []
            for t, row, links in zip(targets, blocks, connected):
                full: list[Any] = [None] * len(src)
                for j, b in zip(live, row):
                    full[j] = b if links[j] else None
                for j in range(len(src)):
                    if full[j] is None and mode == "zero":
                        full[j] = _tensors.zeros(t, src[j], skip=1 if batch else 0)
                rows.append(full)
        return rows

    @staticmethod
    def _error(
        method: str, labels: list[str], found: list, flat: list, alternatives: bool
    ) -> Exception:
        descriptions = [_diagnose.describe(s) for s in flat]
        return _diagnose.error(method, labels, found, descriptions, len(flat), alternatives)
