"""The old private name of :mod:`tapekit.quiet`, kept while recipes still import it."""

from .quiet import quiet_tensorflow

__all__ = ["quiet_tensorflow"]
