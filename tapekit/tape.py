"""Tape: a ``tf.GradientTape`` that can be asked for higher orders and explains missing gradients.

``Tape(order=k)`` records on ``k`` nested ``tf.GradientTape`` objects (all persistent inside), so
``tape.gradient(y, x, order=2)`` differentiates the gradient again without hand-nested tapes.
A gradient TensorFlow would return as ``None`` raises :class:`tapekit.DisconnectedGradientError`
naming each source and the detected cause (see ``tapekit/_diagnose.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from . import _args, _compile, _nested, _tensors
from ._args import Nest
from .errors import describe_received

__all__ = ["Tape"]

_UNCONNECTED = ("raise", "zero", "none")


def _leaves(value: Nest, what: str, name: str) -> tuple[list[Any], list[str]]:
    """Flat leaves of a nest of tensors/variables and their labels; ``TypeError`` otherwise."""
    flat = tf.nest.flatten(value)
    paths = _args.leaf_paths(value)
    if len(paths) != len(flat):  # a leaf type tf.nest expands itself (e.g. a composite tensor)
        paths = [f"[{i}]" for i in range(len(flat))]
    labels = [
        f"{name}{p}" if p else f"the {name[:-1] if name.endswith('s') else name}" for p in paths
    ]
    for leaf, label in zip(flat, labels):
        if not isinstance(_tensors.tf_value(leaf), (tf.Tensor, tf.Variable)):
            raise TypeError(
                f"{what} takes tensors or variables (or dicts/lists/tuples of them), but {label} "
                f"is {describe_received(leaf)}. Convert it first, e.g. x = tf.constant(x), and "
                f"compute with that tensor."
            )
    return flat, labels


class Tape:
    """A context manager over ``tf.GradientTape`` for higher orders and explained gradients.

    Use it like ``tf.GradientTape``: record inside ``with``, then ask for gradients. Variables
    read inside the block are watched automatically; tensors must be watched (``watch=`` or
    :meth:`watch`). ``order=k`` lets :meth:`gradient` return derivatives up to order ``k``.

    Resources: a non-persistent tape frees its recording after the first :meth:`gradient`/
    :meth:`jacobian`/:meth:`batch_jacobian` call; asking again raises ``RuntimeError`` telling
    to pass ``persistent=True``. A persistent tape keeps its recording (and the intermediate
    tensors it holds) until :meth:`release` is called, which frees it deterministically (or
    until the Tape is garbage collected); any use after :meth:`release` raises ``RuntimeError``.

    Args:
        persistent: Allow several gradient/jacobian calls.
        order: The highest derivative order :meth:`gradient` may be asked for (>= 1).
        watch: Tensors or variables (or nests of them) to watch when the block is entered.
        watch_accessed_variables: Watch every trainable variable read inside the block.

    Raises:
        TypeError: If ``watch`` holds something other than tensors/variables.
        ValueError: If ``order`` is not an int >= 1.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> x = tf.constant(2.0)
        >>> with tapekit.Tape(order=3, persistent=True, watch=x) as tape:
        ...     y = x ** 4
        >>> [float(tape.gradient(y, x, order=k)) for k in (1, 2, 3)]  # 4x³, 12x², 24x
        [32.0, 48.0, 48.0]
        >>> tape.release()
    """

    def __init__(
        self,
        *,
        persistent: bool = False,
        order: int = 1,
        watch: Nest | None = None,
        watch_accessed_variables: bool = True,
    ) -> None:
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(
                f"Tape needs order to be an int >= 1 (the highest derivative order you will ask "
                f"for), but received {order!r}."
            )
        if watch is not None:
            _leaves(watch, "Tape(watch=...)", "watch")
        self._persistent = bool(persistent)
        self._order = order
        self._initial_watch = watch
        self._watch_accessed = bool(watch_accessed_variables)
        self._stack: _nested.Nested | None = None
        self._inside = False
        self._used = False
        self._released = False
        self._watched_before_drop: tuple[tf.Variable, ...] = ()

    @property
    def persistent(self) -> bool:
        """Whether the tape may be asked several times."""
        return self._persistent

    @property
    def order(self) -> int:
        """The highest derivative order this tape records for."""
        return self._order

    def __repr__(self) -> str:
        states = [(self._released, "released"), (self._used, "used"), (self._inside, "recording")]
        state = next((name for flag, name in states if flag), "ready" if self._stack else "new")
        return f"Tape(order={self._order}, persistent={self._persistent}, {state})"

    # -- recording -------------------------------------------------------------------------

    def __enter__(self) -> Tape:
        self._check_alive("with")
        if self._inside:
            raise RuntimeError(
                "This Tape is already recording; a Tape cannot be entered twice at once. Use a "
                "second tapekit.Tape for a nested recording."
            )
        first = self._stack is None
        if first:
            self._stack = _nested.Nested(self._order, self._watch_accessed)
        self._stack.push()
        self._inside = True
        if first and self._initial_watch is not None:
            self.watch(self._initial_watch)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._inside and self._stack is not None:
            self._stack.pop()
        self._inside = False

    def watch(self, value: Nest) -> None:
        """Watch tensors or variables (or a nest of them) so gradients w.r.t. them exist.

        Args:
            value: A tensor, variable or nest of them. Integer/bool values are remembered
                (a later gradient w.r.t. them reports their dtype) but not watched.

        Raises:
            TypeError: If a leaf is not a tensor or variable.
            RuntimeError: If the tape was released or used up, or never entered.
        """
        stack = self._live("watch")
        flat, _ = _leaves(value, "Tape.watch", "value")
        for leaf in flat:
            stack.watch(_tensors.tf_value(leaf))

    def watched_variables(self) -> tuple[tf.Variable, ...]:
        """The variables the tape watched (read inside the block, or passed to :meth:`watch`).

        As with ``tf.GradientTape``, they stay available after a non-persistent tape answered.
        """
        if self._stack is not None:
            return tuple(self._stack.tapes[-1].watched_variables())
        return self._watched_before_drop

    @contextlib.contextmanager
    def stop_recording(self) -> Iterator[None]:
        """A context in which operations are not recorded (like ``GradientTape.stop_recording``).

        Variables read inside it are remembered, so a missing gradient w.r.t. one of them names
        ``stop_recording`` as the cause.
        """
        stack = self._live("stop_recording")
        with stack.recording(()):
            side = tf.GradientTape(watch_accessed_variables=True)  # notes the reads only
            with side:
                yield
            stack.paused.update(id(v) for v in side.watched_variables())
            stack.keep.extend(side.watched_variables())

    def reset(self) -> None:
        """Forget everything recorded so far, as ``tf.GradientTape.reset`` does.

        Inside the ``with`` block recording goes on with an empty tape (the ``watch=`` values
        of the constructor are watched again); outside it, the next ``with`` starts afresh. A
        non-persistent tape that already answered can be used again after ``reset()``.

        Raises:
            RuntimeError: If the tape was released.

        Example:
            >>> import tensorflow as tf, tapekit
            >>> x = tf.Variable(3.0)
            >>> with tapekit.Tape() as tape:
            ...     y = x * x
            ...     tape.reset()
            ...     y = x * x * x
            >>> float(tape.gradient(y, x))  # 3 x², the first recording is gone
            27.0
        """
        if self._released:
            self._check_alive("reset")
        inside = self._inside
        self._drop()
        self._used = False
        self._watched_before_drop = ()
        if inside:
            self.__enter__()

    def release(self) -> None:
        """Free the recording now. Later use of this Tape raises ``RuntimeError``."""
        self._drop()
        self._released = True

    # -- asking ----------------------------------------------------------------------------

    def gradient(
        self,
        target: Nest,
        sources: Nest,
        *,
        order: int = 1,
        unconnected: str = "raise",
        output_gradients: Nest | None = None,
    ) -> Nest:
        """The ``order``-th derivative of ``target`` w.r.t. each source.

        Order 1 is ``tf.GradientTape.gradient``: the gradient of the sum of the targets
        (weighted by ``output_gradients``). Order ``k`` differentiates that result ``k - 1``
        more times w.r.t. the same source leaf, the way hand-nested tapes do: for a scalar
        source or an elementwise function it is the k-th derivative; for other tensors each
        step sums over the previous result (use :meth:`jacobian` or ``tapekit.hessian`` for
        full matrices).

        Args:
            target: A tensor or a nest of tensors recorded inside the block.
            sources: A variable, tensor or nest of them.
            order: 1 to the tape's ``order``.
            unconnected: ``"raise"`` (default) raises when a gradient is missing, ``"zero"``
                returns zeros, ``"none"`` returns ``None`` as TensorFlow does.
            output_gradients: Weights for the targets (first order), as in TensorFlow.

        Returns:
            A nest like ``sources``: each leaf shaped and typed like its source (order-1
            gradients of variables read by ``tf.gather`` may be ``tf.IndexedSlices``).

        Raises:
            DisconnectedGradientError: With ``unconnected="raise"``, if a gradient is missing;
                always, if an op on the path has no registered gradient.
            RuntimeError: If the tape was released, or is not persistent and was used.
            TypeError: If a source is not a tensor or variable.
            ValueError: If ``order`` or ``unconnected`` is invalid.
        """
        stack = self._live("gradient")
        if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= self._order:
            raise ValueError(
                f"Tape.gradient(order={order!r}) needs 1 <= order <= the Tape's order "
                f"({self._order}). Record with tapekit.Tape(order={order}) for order {order}."
                if isinstance(order, int) and order > self._order
                else f"Tape.gradient needs order to be an int >= 1, but received {order!r}."
            )
        mode = self._check_unconnected(unconnected, "gradient")
        flat, labels = _leaves(sources, "Tape.gradient", "sources")
        _leaves(target, "Tape.gradient", "target")
        k = self._order
        active = range(k - order, k - 1)  # the tapes that differentiate this gradient again
        grads = stack.first_order(
            "Tape.gradient", target, flat, labels, mode, output_gradients, active
        )
        for level in range(2, order + 1):
            grads = stack.next_order(grads, flat, labels, level, order)
        self._after_use()
        return tf.nest.pack_sequence_as(sources, grads)

    def jacobian(
        self,
        target: Nest,
        sources: Nest,
        *,
        unconnected: str = "raise",
        chunk_size: int | None = None,
    ) -> Nest:
        """The full Jacobian of each target w.r.t. each source, vectorized with pfor.

        Args:
            target: A tensor or a nest of tensors recorded inside the block.
            sources: A variable, tensor or nest of them.
            unconnected: ``"raise"``, ``"zero"`` or ``"none"`` as in :meth:`gradient`.
            chunk_size: Compute at most this many rows at once (bounds memory).

        Returns:
            A nest like ``target`` whose leaves are nests like ``sources``; each block has shape
            ``target.shape + source.shape``.

        Raises:
            DisconnectedGradientError, RuntimeError, TypeError, ValueError: As :meth:`gradient`.

        Example:
            >>> import tensorflow as tf, tapekit
            >>> x = tf.Variable([1.0, 2.0])
            >>> with tapekit.Tape() as tape:
            ...     y = x ** 2
            >>> tape.jacobian(y, x).numpy()
            array([[2., 0.],
                   [0., 4.]], dtype=float32)
        """
        return self._jacobian("jacobian", target, sources, unconnected, chunk_size, batch=False)

    def batch_jacobian(
        self,
        target: Nest,
        source: Nest,
        *,
        unconnected: str = "raise",
        chunk_size: int | None = None,
    ) -> Nest:
        """Per-example Jacobians (example ``i`` of the target depends only on example ``i``).

        Args:
            target: A tensor (or nest) of shape ``(batch,) + o``, recorded inside the block.
            source: A tensor or variable (or nest) of shape ``(batch,) + i``.
            unconnected: ``"raise"``, ``"zero"`` or ``"none"`` as in :meth:`gradient`.
            chunk_size: Compute at most this many rows at once (bounds memory).

        Returns:
            Blocks of shape ``(batch,) + o + i``, nested as in :meth:`jacobian`.

        Raises:
            DisconnectedGradientError, RuntimeError, TypeError: As :meth:`gradient`.
            ValueError: If the leading (batch) dimensions differ.
        """
        return self._jacobian("batch_jacobian", target, source, unconnected, chunk_size, True)

    # -- internals -------------------------------------------------------------------------

    def _jacobian(
        self, name: str, target: Nest, sources: Nest, unconnected: str, chunk: Any, batch: bool
    ) -> Nest:
        stack = self._live(name)
        mode = self._check_unconnected(unconnected, name)
        _tensors.check_chunk_size(chunk, f"Tape.{name}")
        flat, labels = _leaves(sources, f"Tape.{name}", "sources")
        t_flat, t_labels = _leaves(target, f"Tape.{name}", "target")
        rows = stack.jacobian(name, t_flat, t_labels, flat, labels, mode, chunk, batch)
        rows = [tf.nest.pack_sequence_as(sources, row) for row in rows]
        self._after_use()
        return tf.nest.pack_sequence_as(target, rows)

    @staticmethod
    def _check_unconnected(unconnected: str, method: str) -> str:
        if unconnected not in _UNCONNECTED:
            raise ValueError(
                f"Tape.{method} needs unconnected to be one of {_UNCONNECTED}, but received "
                f"{unconnected!r}. 'raise' explains a missing gradient, 'zero' returns zeros, "
                f"'none' returns None."
            )
        return unconnected

    def _check_alive(self, method: str) -> None:
        if self._released:
            raise RuntimeError(
                f"Tape.{method}: this Tape was released (tape.release() freed its recording). "
                f"Record again with a new tapekit.Tape."
            )
        if self._used:
            raise RuntimeError(
                f"Tape.{method}: this Tape is not persistent and was already used once; its "
                f"recording is freed after the first gradient/jacobian. Create it with "
                f"tapekit.Tape(persistent=True) to ask it several times (then call "
                f"tape.release() when done)."
            )

    def _live(self, method: str) -> _nested.Nested:
        self._check_alive(method)
        if self._stack is None:
            raise RuntimeError(
                f"Tape.{method}: nothing was recorded yet. Record first: "
                f"`with tapekit.Tape() as tape: y = f(x)`, then call tape.{method}(...)."
            )
        return self._stack

    def _after_use(self) -> None:
        if not self._persistent:
            self._drop()
            self._used = True

    def _drop(self) -> None:
        self.__exit__(None, None, None)
        if self._stack is not None:
            self._watched_before_drop = tuple(self._stack.tapes[-1].watched_variables())
        self._stack = None


_PUBLIC = "watch watched_variables stop_recording reset release gradient jacobian batch_jacobian"
for _name in (*_PUBLIC.split(), "__enter__", "__exit__"):
    _compile.no_autograph(getattr(Tape, _name))
