"""TensorBoard views: run writers, gradient logging, graphs, figures and the event-file reader.

The chain-rule explainer lives in :mod:`tapekit.explainer`; ``tapekit.board.explain`` (and
``Explanation``, ``Node``, ``Edge``) still work and are the same objects.

>>> import tapekit, tapekit.board
>>> tapekit.board.explain is tapekit.explain
True
"""

from __future__ import annotations

import importlib
from typing import Any

from .figures import log_figure
from .gradients import GradientLogger, variable_tags
from .graphs import log_graph, write_concrete_graph
from .run import RunWriters, resolve_logdir

__all__ = [
    "Edge",
    "Explanation",
    "GradientLogger",
    "Node",
    "RunWriters",
    "explain",
    "log_figure",
    "log_graph",
    "resolve_logdir",
    "variable_tags",
    "write_concrete_graph",
]

_EXPLAINER = ("Edge", "Explanation", "Node", "explain")  # moved to tapekit.explainer


def __getattr__(name: str) -> Any:
    # Loaded on first use: the explainer imports this package's graph writer, not the reverse.
    if name in _EXPLAINER:
        return getattr(importlib.import_module("..explainer", __name__), name)
    raise AttributeError(f"module 'tapekit.board' has no attribute {name!r}")
