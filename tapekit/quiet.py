"""Hide TensorFlow's C++ start-up chatter in your own script: ``import tapekit.quiet`` first.

TensorFlow's native code logs a few lines on stderr when it loads and when it looks for GPUs
(``oneDNN custom operations are on``, ``Could not find cuda drivers``, ``failed call to cuInit``);
some are printed before ``TF_CPP_MIN_LOG_LEVEL`` is read, so setting it in the script is too late
for them. Importing this module, above the script's first TensorFlow import, sets
``TF_CPP_MIN_LOG_LEVEL=2`` (unless already set) and imports TensorFlow with native stderr output
hidden::

    import tapekit.quiet  # noqa: F401 - first: hides TensorFlow's start-up lines
    import tensorflow as tf

Python exceptions and warnings still show, and so do TensorFlow's errors after start-up. The
library itself never does this: ``import tapekit`` leaves TensorFlow's logging as it is. (Sorting
imports with ruff or isort? Keep this import first with an ``# isort: split`` line after it.)
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


def quiet_tensorflow() -> bool:
    """Import TensorFlow (and look for devices) with its native start-up output hidden.

    ``import tapekit.quiet`` calls this; call it yourself where an import has to stay lazy.
    Logical devices can still be configured afterwards: only the physical devices are listed,
    the runtime is not initialised.

    Returns:
        ``True`` if TensorFlow was imported now with its start-up lines hidden; ``False`` if it
        had already been imported (too late to hide those lines; ``TF_CPP_MIN_LOG_LEVEL`` is
        still set for later C++ logging).

    Raises:
        ImportError: If TensorFlow is not installed (the import error is not hidden).

    Example:
        >>> import os
        >>> quiet_tensorflow()  # the test run imported TensorFlow before this line
        False
        >>> os.environ["TF_CPP_MIN_LOG_LEVEL"]
        '2'
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return False
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return True


quiet_tensorflow()
