"""A callback that sends a real signal to this very process (tests of SIGTERM/SIGINT in fit)."""

from __future__ import annotations

import os

import tapekit


class SignalAt(tapekit.Callback):
    """Sends ``sig`` to this very process after global step ``step``."""

    def __init__(self, step: int, sig: int) -> None:
        super().__init__()
        self.step, self.sig = step, sig

    def on_step_end(self, step, logs=None):
        if step == self.step:
            os.kill(os.getpid(), self.sig)
