"""The console of ``Trainer.fit``: a per-step progress bar and one uniform line per epoch.

``verbose=1`` draws a Keras-``Progbar``-style bar while an epoch runs (``12/94 [====>....] |
loss 0.412 | ETA 3s``) when the console is a terminal, and replaces it with the epoch line at the
epoch end; ``verbose=2`` prints the epoch line only (also what ``verbose=1`` prints into a file
or pipe). The bar costs no device work per step: the loop offers an update after each compiled
execution only, the bar redraws at most :data:`REFRESH_SECONDS` apart, and only a redraw reads
the running loss from the device. The console also says why training stopped early and where a
resumed run picked up. Nothing else in the training package prints.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .callbacks import Callback

__all__ = ["REFRESH_SECONDS", "ProgressPrinter", "format_bar", "format_duration", "format_line"]

REFRESH_SECONDS = 0.25
"""The progress bar redraws at most this often."""

_LAST = ("steps_per_second",)


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m05s"`` or ``"1h02m"``.

    Args:
        seconds: A duration (negative counts as 0).

    Returns:
        The rounded duration as text.

    Example:
        >>> format_duration(3.2), format_duration(185), format_duration(3725)
        ('3s', '3m05s', '1h02m')
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"


def format_line(epoch: int, epochs: int, step: int, logs: dict[str, Any], eta: float | None) -> str:
    """The epoch line: epoch, step, every value of ``logs``, steps/s and ETA.

    Args:
        epoch: The 0-based epoch that ended.
        epochs: The epoch ``fit`` stops after.
        step: The global step reached.
        logs: The epoch's values (``steps_per_second`` goes last).
        eta: Seconds left for the whole ``fit`` (None: not shown).

    Returns:
        One line of text (no newline).

    Example:
        >>> format_line(2, 10, 120, {"loss": 0.4123, "acc": 0.91, "steps_per_second": 142.3}, 3)
        'epoch 3/10 | step 120 | loss 0.412 | acc 0.910 | 142 steps/s | ETA 3s'
    """
    parts = [f"epoch {epoch + 1}/{epochs}", f"step {step}"]
    parts += [f"{k} {_number(float(v))}" for k, v in logs.items() if k not in _LAST]
    if "steps_per_second" in logs:
        parts.append(f"{logs['steps_per_second']:.0f} steps/s")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


def format_bar(
    done: int, total: int, loss: float | None, eta: float | None, width: int = 24
) -> str:
    """The in-epoch progress bar: steps done, a bar, the running loss and the epoch's ETA.

    Args:
        done: Steps done in this epoch.
        total: Steps per epoch.
        loss: The running mean loss of the epoch (None: not shown).
        eta: Seconds left in this epoch (None: not shown).
        width: Characters inside the brackets.

    Returns:
        The bar as one line of text.

    Example:
        >>> format_bar(12, 48, 0.4123, 3.4, width=8)
        '12/48 [=>......] | loss 0.412 | ETA 3s'
    """
    filled = min(width, done * width // max(total, 1))
    bar = "=" * filled
    if filled < width:
        bar = (bar[:-1] + ">" if bar else ">") + "." * (width - max(filled, 1))
    parts = [f"{done:{len(str(total))}d}/{total} [{bar}]"]
    if loss is not None:
        parts.append(f"loss {_number(loss)}")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class ProgressPrinter(Callback):
    """The console callback the Trainer adds for ``verbose > 0`` (on the chief only).

    Args:
        epochs: The epoch ``fit`` stops after.
        verbose: 1 for the bar (on a terminal) and the epoch lines, 2 for the epoch lines only.
        steps_per_epoch: Steps per epoch (the bar's total).
        resumed_from: The checkpoint this ``fit`` resumed from, announced at the start.
        stream: Where to print (default ``sys.stdout`` at the time of printing).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> printer = ProgressPrinter(2, verbose=2, stream=out)
        >>> printer.on_epoch_end(0, {"loss": 0.5})
        >>> out.getvalue()
        'epoch 1/2 | step 0 | loss 0.500\\n'
    """

    def __init__(
        self,
        epochs: int,
        *,
        verbose: int = 2,
        steps_per_epoch: int | None = None,
        resumed_from: str | None = None,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.epochs, self.verbose, self.total = epochs, verbose, steps_per_epoch
        self.resumed_from, self.stream = resumed_from, stream
        self._last_draw = 0.0
        self._epoch_start: tuple[float, int] | None = None
        self._drawn = False

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _print(self, text: str) -> None:
        if self._drawn:  # clear the bar first
            text = "\r" + text + "\x1b[K"
            self._drawn = False
        print(text, file=self._out(), flush=True)

    @property
    def dynamic(self) -> bool:
        """True if the bar is drawn (``verbose=1`` and the stream is a terminal)."""
        isatty = getattr(self._out(), "isatty", None)
        return self.verbose == 1 and bool(self.total) and isatty is not None and isatty()

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        trainer = self.trainer
        if self.resumed_from is not None and trainer is not None:
            per = f" of {self.total}" if self.total else ""
            at = getattr(trainer, "epoch_step", 0)
            self._print(
                f"resumed from {self.resumed_from} (step {trainer.global_step}): continuing "
                f"epoch {trainer.epoch + 1}/{self.epochs} at step {at}{per}"
            )

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch_start = None

    def update(self, done: int, running_loss: Callable[[], float]) -> None:
        """Offer a redraw after an execution: ``done`` steps of the epoch are complete.

        Args:
            done: Steps done in the current epoch.
            running_loss: Reads the epoch's running loss (called only when the bar redraws).
        """
        now = time.perf_counter()
        if self._epoch_start is None:  # the first execution (may include tracing) sets t0
            self._epoch_start = (now, done)
        if not self.dynamic or now - self._last_draw < REFRESH_SECONDS or done >= self.total:
            return
        self._last_draw = now
        t0, d0 = self._epoch_start
        eta = (now - t0) / (done - d0) * (self.total - done) if done > d0 else None
        loss = running_loss()
        bar = "\r" + format_bar(done, self.total, loss, eta) + "\x1b[K"
        print(bar, end="", file=self._out(), flush=True)
        self._drawn = True

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        eta = None
        rate = logs.get("steps_per_second")
        remaining = getattr(self.trainer, "remaining_steps", None)
        if rate and remaining is not None:
            eta = remaining / rate
        step = self.trainer.global_step if self.trainer is not None else 0
        self._print(format_line(epoch, self.epochs, step, logs, eta))

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        for cb in getattr(self.trainer, "callbacks", ()):
            message = getattr(cb, "stop_message", None)
            if callable(message) and message():
                self._print(message())
