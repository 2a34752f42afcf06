"""Finding out why a tape gave no gradient, and the message that says so.

Each cause is detected from the tape's own records, not guessed: ``watched_variables()``, the
tensors the :class:`tapekit.Tape` watched, and extra gradient queries on the (persistent)
recording: does the target depend on any watched value? was this tensor computed on the tape,
and from which variable? Inside a ``tf.function`` the graph is also walked to name the op that
cuts the path from a source to the target.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.framework import ops as _ops

from . import _tensors
from .errors import DisconnectedGradientError, NoGradientError

_NONE = _tensors.NONE

# cause code -> (what happened, how to fix it); {src} is replaced by the source's label.
CAUSES = {
    "integer_dtype": (
        "it has dtype {dtype}; integer and bool values have no gradient",
        "cast it to a float dtype before the tape records it, e.g. tf.cast(x, tf.float32)",
    ),
    "integer_target": (
        "the target has dtype {dtype}, which has no gradient",
        "compute the target in floating point (cast integer values to float before using them)",
    ),
    "unwatched_tensor": (
        "it is a tensor that the tape never watched (a tape watches only variables by itself)",
        "call tape.watch(x) inside the `with` block, or pass tapekit.Tape(watch=x). If it "
        "replaced a tf.Variable (`x = x + 1` makes a new tensor), update the variable in place "
        "with x.assign_add(1) / x.assign(...) and pass the variable itself",
    ),
    "unwatched_variable": (
        "the tape was made with watch_accessed_variables=False and this variable was never "
        "passed to tape.watch",
        "call tape.watch(v) inside the `with` block, pass tapekit.Tape(watch=v), or leave "
        "watch_accessed_variables=True",
    ),
    "variable_not_trainable": (
        "the variable is not trainable (trainable=False), and a tape watches only trainable "
        "variables by itself",
        "call tape.watch(v) inside the `with` block or pass tapekit.Tape(watch=v); or create it "
        "with trainable=True",
    ),
    "variable_not_read": (
        "the variable was never read inside the tape's `with` block, so the tape has no record "
        "of it",
        "compute the target from it inside the block (for a Keras model, call the model inside "
        "the block, and check the model really uses this variable)",
    ),
    "variable_replaced": (
        "it is a tf.Tensor computed on the tape from variable {variables} (as `v = v + 1` does, "
        "which replaces the variable by a new tensor), and the target does not use that tensor",
        "update the variable in place with v.assign_add(...) / v.assign(...) and pass the "
        "variable itself as the source",
    ),
    "target_not_recorded": (
        "the tape recorded no op leading to the target: it was computed outside the `with` "
        "block, or its value went through NumPy (.numpy(), np.* functions) or another library, "
        "or only through values that carry no gradient (tf.stop_gradient, integer results such "
        "as tf.argmax or an integer tf.cast)",
        "compute the target inside the `with` block from the watched values, with "
        "differentiable TensorFlow ops only",
    ),
    "target_is_variable": (
        "the target is the variable {target} itself, and a variable is not computed from "
        "anything the tape recorded",
        "compute the target from the source inside the `with` block (e.g. y = v * x), or "
        "pass v.read_value() / the value computed from it as the target",
    ),
    "stop_recording": (
        "it was used only inside `tape.stop_recording()`, where the tape records nothing",
        "compute the part of the target that depends on it outside the stop_recording() block",
    ),
    "not_connected": (
        "the target does not depend on it{detail}",
        "use it in computing the target; if it flows through tf.round, tf.argmax, an integer "
        "tf.cast or tf.stop_gradient, that path carries no gradient by design",
    ),
    "numpy": (
        "the output is computed from it through NumPy (.numpy(), np.* functions or float() "
        "on a tensor), which TensorFlow cannot differentiate",
        "compute it with TensorFlow ops (tf.sin instead of np.sin) and keep tensors as tensors",
    ),
    "assign_cut": (
        "it reaches the output only through an assignment to a variable ({op}), and "
        "TensorFlow does not differentiate through assign/assign_add",
        "compute the new value as a tensor (y = (v + x) ** 2 instead of v.assign_add(x); "
        "y = v ** 2), or differentiate with respect to the variable itself",
    ),
    "no_input_gradient": (
        "the path to the output goes through op {op}, whose gradient TensorFlow does not "
        "define with respect to this input (it does for another input of the op)",
        "write the derivative yourself with tf.custom_gradient, or differentiate with respect "
        "to the other input",
    ),
    "no_gradient_op": (
        "the path to the target goes through op `{op}`, which has no registered gradient",
        "wrap that computation in tf.custom_gradient, apply tf.stop_gradient to its input if it "
        "should count as a constant, or replace it by a differentiable op",
    ),
}


def describe(x: Any) -> str:
    """``variable 'dense/kernel'`` or ``tf.Tensor float32 (3,)`` for messages."""
    v = _tensors.tf_value(x)
    if isinstance(v, tf.Variable):
        name = getattr(x, "path", None) or v.name
        return f"variable '{name}'"
    shape = tuple(v.shape) if v.shape.rank is not None else "unknown shape"
    return f"tf.Tensor {v.dtype.name} {shape}"


def _connected(tape: tf.GradientTape, targets: list, sources: list) -> list[bool]:
    if not sources:
        return []
    grads = tape.gradient(targets, sources, unconnected_gradients=_NONE)
    return [g is not None for g in grads]


def causes(
    tape: tf.GradientTape,
    targets: list,
    sources: list,
    missing: list[int],
    *,
    watched: dict[int, Any],
    watch_accessed: bool,
    recorded: Callable[[list], bool],
    paused: frozenset[int] = frozenset(),
) -> list[tuple[int, str, dict]]:
    """``(source index, cause code, details)`` for each source index in ``missing``.

    ``recorded(tensors)`` tells whether ``tape`` recorded an op producing any of ``tensors``;
    ``paused`` holds the ids of the sources used while ``stop_recording()`` was active
    (``should_record_backprop`` with only that tape active).
    """
    bad_target = next((t for t in targets if not _tensors.is_float(t)), None)
    var_target = next((t for t in targets if isinstance(t, tf.Variable)), None)
    # should_record_backprop does not take variables: ask about their values' records
    targets = [t for t in targets if not isinstance(t, tf.Variable)]
    variables = list(tape.watched_variables())
    var_ids = {id(v) for v in variables}
    target_known: bool | None = None
    out = []
    for j in missing:
        s = sources[j]
        if not _tensors.is_float(s):
            out.append((j, "integer_dtype", {"dtype": s.dtype.name}))
            continue
        if bad_target is not None:
            out.append((j, "integer_target", {"dtype": bad_target.dtype.name}))
            continue
        if id(s) in paused:
            out.append((j, "stop_recording", {}))
            continue
        if var_target is not None and not targets:
            out.append((j, "target_is_variable", {"target": f"'{var_target.name}'"}))
            continue
        if isinstance(s, tf.Variable) and id(s) not in var_ids:
            if not watch_accessed:
                code = "unwatched_variable"
            else:
                code = "variable_not_read" if s.trainable else "variable_not_trainable"
            out.append((j, code, {}))
            continue
        if not isinstance(s, tf.Variable) and id(s) not in watched:
            if not recorded([s]):
                out.append((j, "unwatched_tensor", {}))
                continue
            from_vars = [v for v, c in zip(variables, _connected(tape, [s], variables)) if c]
            if from_vars:
                names = ", ".join(f"'{v.name}'" for v in from_vars[:3])
                out.append((j, "variable_replaced", {"variables": names}))
                continue
        blocking = _blocking_ops(targets, s)
        if blocking:
            detail = f" except through {blocking}, which pass(es) no gradient"
            out.append((j, "not_connected", {"detail": detail}))
            continue
        if target_known is None:
            target_known = recorded(targets)
        code = "not_connected" if target_known else "target_not_recorded"
        eager = all(isinstance(t, tf.__internal__.EagerTensor) for t in targets)
        out.append((j, code, {"detail": _UNSEEN if eager else ""}))
    return out


_UNSEEN = (
    " through ops TensorFlow can differentiate (perhaps not at all; or only through NumPy, an "
    "assignment such as v.assign_add(x), or an op whose gradient TensorFlow leaves undefined "
    "for this input, such as tf.math.betainc w.r.t. a: an eager tape keeps no record of "
    "which; tapekit.grad of the same computation names it)"
)


def no_gradient_op(tape: tf.GradientTape, targets: list, sources: list, exc: LookupError) -> tuple:
    """``(op type, indices of the sources whose gradient needs it)`` for a LookupError."""
    text = str(exc)
    match = re.search(r"no entry for: (\S+)", text) or re.search(r"op type: (\w+)", text)
    op = match.group(1) if match else "unknown"
    affected = []
    for j, s in enumerate(sources):
        if not _tensors.is_float(s):
            continue
        try:
            tape.gradient(targets, s, unconnected_gradients=_NONE)
        except LookupError:
            affected.append(j)
    return op, affected or list(range(len(sources)))


def _blocking_ops(targets: list, source: Any) -> str:
    """Inside a graph: the ops on a path from ``source`` to ``targets`` that pass no gradient."""
    try:
        graph = targets[0].graph
    except (AttributeError, IndexError):
        return ""  # eager tensors keep no graph to walk
    try:
        starts = graph_tensors(source, graph)
        below = set()
        stack = [t.op for t in targets if getattr(t, "graph", None) is graph]
        while stack:
            op = stack.pop()
            if op not in below:
                below.add(op)
                stack.extend(i.op for i in op.inputs)
        found, seen = [], set()
        frontier = [c for t in starts for c in t.consumers()]
        while frontier:
            op = frontier.pop()
            if op in seen or op not in below:
                continue
            seen.add(op)
            if _passes_no_gradient(op):
                found.append(f"op '{op.name}' ({op.type})")
                continue
            frontier.extend(c for out in op.outputs for c in out.consumers())
        return " and ".join(sorted(found)[:3])
    except Exception:  # noqa: BLE001 - a best-effort detail for an error message
        return ""


def graph_tensors(source: Any, graph: Any) -> list:
    if isinstance(source, tf.Variable):
        handle = source.handle
        if getattr(handle, "graph", None) is graph:
            return [handle]
        return [inner for ext, inner in getattr(graph, "captures", []) if ext is handle]
    return [source] if getattr(source, "graph", None) is graph else []


def _passes_no_gradient(op: Any) -> bool:
    if op.outputs and all(not _tensors.is_float(o) for o in op.outputs):
        return True  # e.g. an integer tf.cast or tf.argmax
    try:
        fn = _ops.get_gradient_function(op)
    except LookupError:
        return False  # reported separately as no_gradient_op
    if fn is None:
        return True
    try:
        grads = zero_output_gradients(op, fn)
    except Exception:  # noqa: BLE001
        return False
    return all(g is None for g in grads)


def zero_output_gradients(op: Any, grad_fn: Any) -> list[Any]:
    """What ``op``'s gradient function gives each input for zero output gradients (None where
    it defines no gradient): which inputs a gradient can flow to. Raises what it raises."""
    grads = grad_fn(op, *[tf.zeros_like(o) for o in op.outputs])
    return list(grads) if isinstance(grads, (list, tuple)) else [grads]


def error(
    method: str,
    labels: list[str],
    found: list[tuple[int, str, dict]],
    descriptions: list[str],
    total: int,
    allow_alternatives: bool = True,
    header: str | None = None,
) -> DisconnectedGradientError:
    """The :class:`DisconnectedGradientError` listing every source, its cause and the fix.

    ``labels[j]`` names source ``j`` in the user's nest (``sources['w']``) and
    ``descriptions[j]`` says what it is (see :func:`describe`).
    """
    lines = [
        header
        or f"{method}: no gradient for {len(found)} of {total} source(s) (TensorFlow would "
        f"return None):"
    ]
    pairs = []
    for j, code, details in found:
        what, fix = CAUSES[code]
        what = what.format(**details)
        lines.append(f"  - {labels[j]} ({descriptions[j]}): {what}. Fix: {fix}.")
        pairs.append((labels[j], code))
    if allow_alternatives:
        lines.append(
            "To accept missing gradients, pass unconnected='zero' (zeros) or unconnected='none' "
            "(None)."
        )
    cls = NoGradientError if any(c == "no_gradient_op" for _, c, _ in found) else None
    return (cls or DisconnectedGradientError)("\n".join(lines), pairs)
