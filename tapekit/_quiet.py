"""Import TensorFlow without its C++ start-up chatter, for the recipes and the ``tapekit`` command.

TensorFlow's native code logs a few lines on stderr when it loads and when it looks for GPUs
(``oneDNN custom operations are on``, ``Could not find cuda drivers``, ``failed call to cuInit``);
some are printed before ``TF_CPP_MIN_LOG_LEVEL`` is read. Scripts call ``quiet_tensorflow()``
before their first TensorFlow import. The library never does this on import.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["quiet_tensorflow"]


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (native code writes there, not to sys.stderr)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr: nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow() -> None:
    """Import TensorFlow (and look for devices) with native stderr output hidden.

    Python exceptions still propagate. Logical devices can still be configured afterwards: only
    the physical devices are listed, the runtime is not initialised.

    Example:
        >>> quiet_tensorflow()
        >>> import tensorflow as tf
        >>> bool(tf.config.list_physical_devices("CPU"))
        True
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()
