"""TensorBoard views: run writers, gradient logging, graph export and the chain-rule explainer.

>>> import tapekit
>>> sorted(tapekit.explain(lambda x, y: x * y, 2.0, 5.0).gradients.items())
[('x', 5.0), ('y', 2.0)]
"""

from .explain import Edge, Explanation, Node, explain
from .gradients import GradientLogger, variable_tags
from .graphs import log_graph, write_concrete_graph
from .run import RunWriters

__all__ = [
    "Edge",
    "Explanation",
    "GradientLogger",
    "Node",
    "RunWriters",
    "explain",
    "log_graph",
    "variable_tags",
    "write_concrete_graph",
]
