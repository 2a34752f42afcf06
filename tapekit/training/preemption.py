"""Stop ``fit`` cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

While ``fit`` runs, :class:`StopSignals` replaces the handlers of SIGTERM and SIGINT; it puts the
previous ones back when ``fit`` returns or raises. A signal only *requests* a stop: the loop
finishes the compiled execution that is running (the device state is never left half-updated)
and then, at the execution boundary:

- **SIGTERM** (a cluster scheduler preempting the job): saves a checkpoint at the exact data
  position, flushes the TensorBoard logs and raises :class:`Preempted`, a ``SystemExit`` with
  status :data:`PREEMPTION_EXIT_CODE` (42, the status TF's ``PreemptionCheckpointHandler``
  uses), so an uncaught one ends the process with 42 and a restart resumes exactly.
- **SIGINT** (Ctrl-C): flushes the logs, leaves the checkpoints on disk as they are and raises
  ``KeyboardInterrupt``. A second Ctrl-C while the execution still runs interrupts it at once.

Handlers can only be installed from the main thread; elsewhere (and under a multi-worker
strategy, where a save needs every worker, use TF's ``PreemptionCheckpointHandler``) nothing is
installed and signals behave as usual.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["PREEMPTION_EXIT_CODE", "Preempted", "StopSignals"]

PREEMPTION_EXIT_CODE = 42
"""Exit status after a SIGTERM during ``fit`` (as ``tf.distribute``'s preemption handler)."""


class Preempted(SystemExit):
    """``fit`` stopped on SIGTERM after saving a checkpoint; ``code`` is 42.

    Attributes:
        checkpoint: The path of the checkpoint written (None without ``checkpoint_dir``).
        step: The global step reached.
    """

    def __init__(self, checkpoint: str | None, step: int) -> None:
        super().__init__(PREEMPTION_EXIT_CODE)
        self.checkpoint, self.step = checkpoint, step


class StopSignals:
    """A context manager that turns SIGTERM/SIGINT into a stop request for the loop.

    Args:
        enabled: False installs nothing (``requested`` stays None).

    Attributes:
        requested: None, or the name of the first signal received ("SIGTERM" or "SIGINT").

    Example:
        >>> import os, signal
        >>> with StopSignals() as stop:
        ...     os.kill(os.getpid(), signal.SIGTERM)
        ...     stop.requested
        'SIGTERM'
        >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        True
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.requested == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: do not wait for the execution
        if self.requested is None or name == "SIGTERM":
            self.requested = name

    def check(
        self,
        save_now: Callable[[], str | None],
        *,
        flush: Callable[[], None],
        step: Callable[[], int],
        printing: bool = False,
    ) -> None:
        """At an execution boundary: act on a requested stop, else do nothing.

        Args:
            save_now: Saves at the exact position; returns the checkpoint path (or None).
            flush: Flushes the logs.
            step: Reads the global step.
            printing: Say on the console what was saved (the chief with ``verbose``).

        Raises:
            Preempted: After SIGTERM, once saved and flushed.
            KeyboardInterrupt: After SIGINT, once flushed (nothing saved).

        Example:
            >>> StopSignals(enabled=False).check(lambda: None, flush=lambda: None, step=lambda: 0)
            >>> stop = StopSignals(enabled=False)
            >>> stop.requested = "SIGTERM"
            >>> try:
            ...     stop.check(lambda: "ckpt-3", flush=lambda: None, step=lambda: 3)
            ... except Preempted as exc:
            ...     exc.code, exc.checkpoint, exc.step
            (42, 'ckpt-3', 3)
        """
        if self.requested == "SIGTERM":
            path = save_now()
            flush()
            if printing:
                where = f"saved {path}" if path else "no checkpoint_dir, nothing saved"
                print(f"SIGTERM at step {step()}: {where}; exiting.", flush=True)
            raise Preempted(path, step())
        if self.requested == "SIGINT":
            flush()
            raise KeyboardInterrupt(f"SIGINT at step {step()}")

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
