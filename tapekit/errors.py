"""Error classes raised by tapekit, and helpers that build the messages users read.

Messages follow one pattern: the rule, what was received, how to fix it.
"""

from __future__ import annotations

__all__ = [
    "DisconnectedGradientError",
    "NonFiniteError",
    "TapekitError",
]


class TapekitError(Exception):
    """Base class of tapekit's own exceptions (other errors are plain TypeError/ValueError)."""


class DisconnectedGradientError(TapekitError, ValueError):
    """A gradient is missing (TensorFlow would have answered ``None``).

    The message names every affected source and the detected cause. ``sources`` holds
    ``(name, cause)`` pairs for programmatic use.
    """

    # AutoGraph re-creates errors raised inside tf.function as ``type(e)(message)`` only when
    # ``__init__ is Exception.__init__`` (otherwise it raises a StagingError instead), so the
    # extra ``sources`` argument is taken in ``__new__`` and the message is args[0]. The
    # re-created message embeds the original one, which finds the original's sources again.
    __init__ = Exception.__init__
    _recent: list[tuple[str, list[tuple[str, str]]]] = []

    def __new__(cls, message: str = "", sources: list[tuple[str, str]] | None = None):
        self = super().__new__(cls, message)
        if sources is None:  # AutoGraph indents the original lines: compare words only
            text = " ".join(str(message).split())
            sources = next((s for m, s in reversed(cls._recent) if m and m in text), None)
        else:
            cls._recent = [*cls._recent[-7:], (" ".join(str(message).split()), list(sources))]
        self.sources = list(sources or [])
        return self

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.sources))


class NoGradientError(DisconnectedGradientError, LookupError):
    """An op on the path has no registered gradient.

    Also a ``LookupError``: what TensorFlow raises for it, so ``except LookupError`` keeps
    working (a private subclass; catch :class:`DisconnectedGradientError` or ``LookupError``).
    """


class NonFiniteError(TapekitError, FloatingPointError):
    """A loss or gradient became NaN or infinite during training.

    ``step`` is the global step at which it happened and ``variables`` the names of the
    variables whose gradients were not finite (empty when only the loss was).
    """

    def __init__(self, message: str, step: int | None = None, variables: list[str] | None = None):
        super().__init__(message)
        self.step = step
        self.variables = list(variables or [])


def describe_received(value: object) -> str:
    """A short description of a user value for error messages: its type, dtype and shape."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    kind = type(value).__name__
    if dtype is not None and shape is not None:
        dname = getattr(dtype, "name", str(dtype))
        try:
            shape = tuple(shape)
        except TypeError:  # unknown rank
            shape = "unknown"
        return f"{kind} of dtype {dname} and shape {shape}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"
