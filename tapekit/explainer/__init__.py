"""The chain-rule explainer: ``tapekit.explain(fn, *args)`` shows every node and edge of a small
computation with its local derivative.

``graph`` traces ``fn`` and evaluates and differentiates it op by op; ``formulas`` is the op
vocabulary (what an op computes, its local derivatives as text); ``render`` writes the tables,
Markdown and Graphviz text; ``explanation`` holds :func:`explain` and its result.

>>> import tapekit
>>> sorted(tapekit.explain(lambda x, y: x * y, 2.0, 5.0).gradients.items())
[('x', 5.0), ('y', 2.0)]
"""

from .explanation import Edge, Explanation, Node, explain

__all__ = ["Edge", "Explanation", "Node", "explain"]
