"""Computation graphs in TensorBoard's Graphs dashboard, without trace_on/trace_export ceremony.

``log_graph`` traces any Python function or ``tf.function`` on example arguments (with
``gradients=True``: a function computing its value and gradients, so the backward pass is in
the picture too) and writes the traced graph with ``tf.summary.graph``. ``write_concrete_graph``
writes an already traced ``ConcreteFunction``, such as a compiled training step.

TensorBoard shows one graph per run (directory), so every graph gets its own run directory.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from .. import _tensors
from .._args import check_callable, fn_name
from .._graphdef import readable
from ..errors import describe_received

__all__ = ["log_graph", "write_concrete_graph"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def _as_graph(concrete_fn: Any) -> tf.Graph | tf.compat.v1.GraphDef:
    if isinstance(concrete_fn, (tf.Graph, tf.compat.v1.GraphDef)):
        return concrete_fn
    graph = getattr(concrete_fn, "graph", None)
    if isinstance(graph, tf.Graph):
        return graph
    if hasattr(concrete_fn, "get_concrete_function"):
        try:
            return concrete_fn.get_concrete_function().graph
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "write_concrete_graph needs a traced function, but this tf.function has no "
                "input_signature, so it cannot be traced without arguments. Pass "
                "fn.get_concrete_function(*example_args), or use tapekit.board.log_graph(fn, "
                "*example_args, logdir=...)."
            ) from exc
    raise TypeError(
        f"write_concrete_graph needs a tf.function ConcreteFunction (or a tf.Graph / GraphDef), "
        f"but received {describe_received(concrete_fn)}. Trace it first: "
        f"tf.function(f).get_concrete_function(*example_args)."
    )


def write_concrete_graph(
    concrete_fn: Any,
    writer_or_logdir: tf.summary.SummaryWriter | str | os.PathLike,
    name: str | None = None,
) -> None:
    """Write the graph of a traced ``tf.function`` so it shows in the Graphs dashboard.

    Works from anywhere, also while another function is being traced (the graph is written
    eagerly). TensorBoard keeps one graph per run: the last one written to a run is shown.

    Args:
        concrete_fn: A ``ConcreteFunction`` (``step_fn.get_concrete_function(...)``), a
            ``tf.function`` with an ``input_signature``, a ``tf.Graph`` or a ``GraphDef``.
        writer_or_logdir: The writer of the run to attach the graph to, or the run directory
            itself (a writer is opened there, used and closed).
        name: A label for the graph, used in messages (the run directory identifies the graph
            in TensorBoard).

    Raises:
        TypeError: If ``concrete_fn`` is not a traced function or graph, or ``writer_or_logdir``
            is neither a writer nor a path.

    Example:
        >>> import os, tempfile, tensorflow as tf, tapekit
        >>> double = tf.function(lambda x: x * 2.0)
        >>> step = double.get_concrete_function(tf.TensorSpec([], tf.float32))
        >>> run = tempfile.mkdtemp()
        >>> tapekit.board.write_concrete_graph(step, run, "double")
        >>> [f.startswith("events.out.tfevents.") for f in os.listdir(run)]  # one event file
        [True]
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"write_concrete_graph needs `name` as a str, but received {name!r}.")
    graph = _as_graph(concrete_fn)
    if isinstance(writer_or_logdir, (str, os.PathLike)):
        with tf.init_scope():
            writer = tf.summary.create_file_writer(os.fspath(writer_or_logdir))
            try:
                _write(graph, writer)
            finally:
                writer.close()
    elif isinstance(writer_or_logdir, tf.summary.SummaryWriter):
        _write(graph, writer_or_logdir)
    else:
        label = f" `{name}`" if name else ""
        raise TypeError(
            f"write_concrete_graph needs a tf.summary.SummaryWriter or a run directory to write "
            f"the graph{label} to, but received {describe_received(writer_or_logdir)}."
        )


def _write(graph: Any, writer: tf.summary.SummaryWriter) -> None:
    with tf.init_scope(), writer.as_default(), tf.summary.record_if(True):
        tf.summary.graph(readable(graph))
        writer.flush()


def _example_leaf(x: Any) -> Any:
    """Python floats and NumPy arrays become tensors, so they are graph inputs, not constants."""
    if isinstance(x, float):
        return tf.constant(x, tf.float32)
    if isinstance(x, (np.ndarray, np.floating)):
        return tf.convert_to_tensor(x)
    return x


def _with_gradients(fn: Callable) -> Callable:
    # functools.wraps gives the wrapper fn's signature, so tf.function names the graph's
    # inputs after fn's parameters (x, y), not args_0, args_1.
    @functools.wraps(fn)
    def value_and_gradients(*args: Any, **kwargs: Any) -> tuple[Any, list[tf.Tensor]]:
        leaves = [
            t
            for t in tf.nest.flatten((args, kwargs))
            if isinstance(t, tf.Tensor) and t.dtype.is_floating
        ]
        with tf.GradientTape() as tape:  # also watches trainable variables fn reads
            tape.watch(leaves)
            out = fn(*args, **kwargs)
        targets = [
            t
            for t in tf.nest.flatten(out)
            if isinstance(t, (tf.Tensor, tf.Variable)) and t.dtype.is_floating
        ]
        if not targets:
            raise ValueError(
                f"log_graph(gradients=True) needs `{fn_name(fn)}` to return float tensor(s), but "
                f"it returned {describe_received(out)}. Return the loss (a float tensor), or "
                f"use gradients=False."
            )
        sources = leaves + list(tape.watched_variables())
        if not sources:
            return out, []
        grads = tape.gradient(targets, sources, unconnected_gradients=_tensors.ZERO)
        return out, [tf.convert_to_tensor(g) for g in grads]

    return value_and_gradients


def log_graph(
    fn: Callable,
    *example_args: Any,
    logdir: str | os.PathLike,
    name: str | None = None,
    gradients: bool = False,
    **example_kwargs: Any,
) -> str:
    """Write the graph of ``fn`` traced on example arguments to TensorBoard's Graphs dashboard.

    ``fn`` may be a plain Python function (traced with ``tf.function``), a ``tf.function`` or
    a Keras model. Python floats and NumPy arrays among the example arguments become graph
    inputs (placeholders named after ``fn``'s parameters); ints, strings and other Python
    values are baked into the graph as constants.

    Args:
        fn: The function to draw.
        *example_args: Example positional arguments (their shapes and dtypes fix the trace).
        logdir: The TensorBoard log directory; the graph is written to run ``<logdir>/<name>``.
        name: The run name. Defaults to ``fn``'s name, plus ``_gradients`` with
            ``gradients=True``. Characters other than letters, digits and ``_.-`` become ``_``.
        gradients: If True, draw a function that computes ``fn``'s value and its gradients
            w.r.t. every float input and every trainable variable ``fn`` reads (the gradient of
            the sum of the outputs): forward and backward pass in one graph.
        **example_kwargs: Example keyword arguments.

    Returns:
        The run directory the graph was written to, as a string.

    Raises:
        TypeError: If ``fn`` is not callable or ``logdir`` is not a path.
        ValueError: With ``gradients=True``, if ``fn`` returns no float tensor.

    Example:
        >>> import tempfile, os, tapekit
        >>> logdir = tempfile.mkdtemp()
        >>> run = tapekit.board.log_graph(lambda x, y: x**2 * y + y + 2, 3.0, 4.0,
        ...                               logdir=logdir, name="f", gradients=True)
        >>> os.path.relpath(run, logdir)
        'f'
    """
    check_callable(fn, "log_graph")
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(
            f"log_graph needs `logdir` to be a directory path, but received "
            f"{describe_received(logdir)}. Example: logdir='logs/01_gradients'."
        )
    if name is None:
        name = fn_name(fn) + ("_gradients" if gradients else "")
    elif not isinstance(name, str) or not name.strip():
        raise TypeError(f"log_graph needs `name` as a non-empty str, but received {name!r}.")
    run_name = _UNSAFE.sub("_", name).strip("_") or "graph"
    args = tf.nest.map_structure(_example_leaf, example_args)
    kwargs = tf.nest.map_structure(_example_leaf, example_kwargs)
    if gradients:
        base = getattr(fn, "python_function", fn)  # inline a tf.function's body
        concrete = tf.function(_with_gradients(base)).get_concrete_function(*args, **kwargs)
    elif hasattr(fn, "get_concrete_function"):
        concrete = fn.get_concrete_function(*args, **kwargs)
    else:
        concrete = tf.function(fn).get_concrete_function(*args, **kwargs)
    run_dir = os.path.join(os.fspath(logdir), run_name)
    write_concrete_graph(concrete, run_dir, run_name)
    return run_dir
