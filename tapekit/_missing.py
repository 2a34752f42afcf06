"""A derivative the transforms cannot compute: a documented zero, or an error naming the cut.

TensorFlow answers ``None`` both for an input the output does not use and for a path it cannot
differentiate, and where a cut path sits next to a differentiable one it silently leaves out a
term (forward mode even gives zeros). So every transform checks the graph of its computation
for cuts: inside a graph (a compiled transform, or the user's ``tf.function``) the graph at hand
is walked once per trace; for an eager call ``fn`` is traced once more into a graph (nothing
runs; Python side effects of ``fn`` do happen once more) and the verdict is cached per function,
input signature and captured objects. A path is cut by

- NumPy: ``.numpy()`` or an ``np.*`` function on a tensor (the trace fails on it);
- an op whose gradient TensorFlow leaves undefined for that input (``tf.math.zeta`` w.r.t. ``x``,
  ``tf.math.betainc`` w.r.t. ``a``), while it defines it for another input;
- an op with no registered gradient at all;
- an assignment (``v.assign_add(x)``) to a variable that the output reads afterwards.

Ops that pass no gradient by design (``tf.stop_gradient``, ``tf.round``, integer results) and
plainly unused inputs give zeros (the callers turn ``None`` into zeros when nothing is found).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorflow.python.eager import record as _record
from tensorflow.python.framework import ops as _ops

from . import _args, _calls, _captures, _compile, _diagnose, _tensors

_STATEFUL_WRITES = ("Assign", "ResourceScatter", "ResourceApply", "ResourceSparseApply")
_READS = ("ReadVariableOp", "ResourceGather", "ResourceGatherNd")

Found = list[tuple[int, str, dict]]


def labels(
    fn: Callable,
    positions: Sequence[int],
    structs: Sequence[tuple[Any, int]],
    wheres: Sequence[str] | None = None,
) -> list[str]:
    """``argument 0 (`x`)['w']`` for each source leaf, in ``sources`` order."""
    out = []
    for k, (i, (value, _)) in enumerate(zip(positions, structs)):
        where = wheres[k] if wheres is not None else _args.describe_arg(fn, i)
        out.extend(f"{where}{p}" for p in _args.leaf_paths(value))
    return out


def find(
    targets: list[tf.Tensor],
    sources: list[Any],
    missing: list[int],
    retrace: Callable[[list[int]], Found] | None = None,
) -> Found:
    """The cuts on the paths from the ``missing`` sources to ``targets``.

    Graph targets are looked at directly; for eager ones ``retrace(missing)`` traces the
    function into a graph (see :func:`retrace`); without it nothing is found. The callers
    turn a ``None`` gradient into a zero only when nothing is found.
    """
    if graph_of(targets) is not None:
        return cuts(targets, sources, missing)
    return retrace(missing) if retrace is not None else []


def check(
    targets: list[tf.Tensor],
    sources: list[Any],
    transform: str,
    names: Callable[[], list[str]],
    retrace: Callable[[list[int]], Found] | None = None,
) -> None:
    """Raise the error naming the cut if any path from a source to ``targets`` is cut.

    A cut path is not always a missing gradient: next to a differentiable path it makes the
    gradient miss a term, and forward mode gives zeros for it. In a graph this runs once per
    trace; for eager targets the verdict is cached (see :func:`retrace`).
    """
    found = find(targets, sources, list(range(len(sources))), retrace)
    if found:
        raise error(transform, names(), found, sources)


def check_call(
    fn: Callable,
    call: _calls.Call,
    targets: list[tf.Tensor],
    select: Callable[[Any], list[tf.Tensor]],
    transform: str,
) -> None:
    """:func:`check` for the outputs ``targets`` of a prepared call of ``fn``."""
    names = lambda: labels(fn, call.positions, call.structs)  # noqa: E731
    check(targets, call.sources, transform, names, retrace(fn, call, select))


def error(transform: str, names: list[str], found: Found, sources: list[Any]) -> Exception:
    """The :class:`DisconnectedGradientError` for the cut paths in ``found``."""
    descriptions = [_diagnose.describe(s) for s in sources]
    header = (
        f"{transform}: the derivative with respect to {len(found)} of {len(sources)} "
        f"source(s) cannot be computed (TensorFlow would silently give None, a zero or a "
        f"gradient missing a term):"
    )
    return _diagnose.error(transform, names, found, descriptions, len(sources), False, header)


def no_gradient_error(
    tape: tf.GradientTape,
    targets: list,
    sources: list[Any],
    exc: LookupError,
    transform: str,
    names: list[str],
) -> Exception:
    """The error (also a ``LookupError``) for TensorFlow's "no gradient defined for op"."""
    try:
        op, hit = _diagnose.no_gradient_op(tape, targets, sources, exc)
    except Exception:  # noqa: BLE001 - a non-persistent tape cannot be asked again
        op, _ = _diagnose.no_gradient_op(tape, targets, [], exc)
        hit = list(range(len(sources)))
    found = [(j, "no_gradient_op", {"op": op}) for j in hit]
    return error(transform, names, found, sources)


_EagerTensor = tf.__internal__.EagerTensor


def graph_of(targets: list[Any]) -> Any:
    """The graph the (first non-eager) target lives in, or ``None`` for eager tensors."""
    for t in targets:
        if type(t) is not _EagerTensor:  # the .graph of an eager tensor raises
            graph = getattr(t, "graph", None)
            if graph is not None:
                return graph
    return None


def cuts(targets: list[tf.Tensor], sources: list[Any], missing: list[int]) -> Found:
    """``(source index, cause, details)`` for each missing source whose path to ``targets``
    (graph tensors) is cut by an op without a gradient for it or by an assignment."""
    graph = graph_of(targets)
    if graph is None:
        return []
    with _record.stop_recording():  # gradient functions are called below: record none of it
        below = _ancestors([t for t in targets if getattr(t, "graph", None) is graph])
        reads: dict[Any, int] = {}  # variable handle -> the last op reading it for the targets
        for op in below:
            if op.type in _READS and op.inputs:
                key = op.inputs[0].ref()
                reads[key] = max(reads.get(key, -1), op._id)
        out = []
        for j in missing:
            starts = _diagnose.graph_tensors(sources[j], graph)
            cut = _first_cut(starts, below, reads)
            if cut is not None:
                out.append((j, *cut))
        return out


def _ancestors(targets: list[tf.Tensor]) -> set:
    below: set = set()
    stack = [t.op for t in targets]
    while stack:
        op = stack.pop()
        if op not in below:
            below.add(op)
            stack.extend(i.op for i in op.inputs)
            stack.extend(op.control_inputs)
    return below


def _first_cut(starts: list[tf.Tensor], below: set, reads: dict) -> tuple[str, dict] | None:
    """Walk forward from ``starts`` along ops that lead to the targets; the first real cut."""
    frontier = [(c, t) for t in starts for c in t.consumers()]
    seen: set = set()
    while frontier:
        op, via = frontier.pop()
        if op in seen:
            continue
        seen.add(op)
        label = f"'{op.name}' ({op.type})"
        if op.type.startswith(_STATEFUL_WRITES):
            # the value written (not the variable's own handle) is read back for the targets
            written = op.inputs and op.inputs[0].ref() != via.ref()
            if written and reads.get(op.inputs[0].ref(), -1) > op._id:
                return "assign_cut", {"op": label}
            continue
        if op not in below:  # off the path, but it may feed an assignment the targets read
            if any(_tensors.is_float(o) for o in op.outputs):
                frontier.extend((c, o) for o in op.outputs for c in o.consumers())
            continue
        verdict = _op_verdict(op, via)
        if verdict == "cut" and _also_through_defined_input(op, starts):
            verdict = "pass"  # a user's tf.custom_gradient: see the function
        if verdict == "none":
            return "no_gradient_op", {"op": op.type}
        if verdict == "cut":
            return "no_input_gradient", {"op": label}
        if verdict == "pass":
            frontier.extend((c, o) for o in op.outputs for c in o.consumers())
    return None


_OP_VERDICTS: dict[tuple, str] = {}  # (op type, input index, float inputs) -> verdict


def _op_verdict(op: Any, via: tf.Tensor) -> str:
    """:func:`_op_verdict_of`, cached per op type and input (a gradient function is called
    once per kind of op, not once per op of every trace)."""
    floats = tuple(_tensors.is_float(i) for i in op.inputs)
    index = next((k for k, i in enumerate(op.inputs) if i.ref() == via.ref()), -1)
    override = _gradient_override(op)
    key = (op.type, override, index, floats, tuple(_tensors.is_float(o) for o in op.outputs))
    verdict = _OP_VERDICTS.get(key)
    if verdict is None:
        verdict = _op_verdict_of(op, via)
        if op.type not in ("PartitionedCall", "StatefulPartitionedCall", "If", "While"):
            _OP_VERDICTS[key] = verdict  # function-calling ops depend on their body
    return verdict


def _op_verdict_of(op: Any, via: tf.Tensor) -> str:
    """``"pass"`` (the gradient flows), ``"stop"`` (no gradient by design), ``"cut"`` (none
    for this input) or ``"none"`` (no gradient registered for the op)."""
    if op.outputs and not any(_tensors.is_float(o) for o in op.outputs):
        return "stop"  # an integer result (tf.argmax, an integer cast): no gradient by design
    try:
        grad_fn = _ops.get_gradient_function(op)
    except LookupError:
        return "none"  # no registered gradient at all (the tape raises for this itself)
    if grad_fn is None:
        return "stop"  # registered as not differentiable (tf.stop_gradient and the like)
    try:
        grads = _diagnose.zero_output_gradients(op, grad_fn)
    except Exception:  # noqa: BLE001 - cannot tell: let the gradient flow on
        return "pass"
    floats = [k for k, i in enumerate(op.inputs) if _tensors.is_float(i) and k < len(grads)]
    mine = [k for k in floats if op.inputs[k].ref() == via.ref()]
    if not mine or any(grads[k] is not None for k in mine):
        return "pass"
    if all(grads[k] is None for k in floats):
        return "stop"  # piecewise constant (tf.round, tf.floor): a zero derivative by design
    return "cut"  # defined for another input, left undefined for this one


def _also_through_defined_input(op: Any, starts: list[tf.Tensor]) -> bool:
    """Whether ``op`` has a user-chosen gradient (``tf.custom_gradient``) and every path from
    the sources to its inputs without a gradient runs through an input it has a gradient for.

    ``tf.custom_gradient`` ends in an ``IdentityN`` over the function's results, inputs and
    variables whose gradient is None for the results by design: the user's gradient (for the
    inputs) replaces the paths through the results that start at the inputs. A source that
    reaches a result some other way (a tensor the function captures instead of taking it as an
    argument) gets no gradient along that way, and stays a cut.
    """
    if _gradient_override(op) is None:
        return False
    try:
        grads = _diagnose.zero_output_gradients(op, _ops.get_gradient_function(op))
    except Exception:  # noqa: BLE001 - cannot tell: keep the cut
        return False
    inputs = list(op.inputs)
    defined = {t.ref() for t, g in zip(inputs, grads) if g is not None}
    if not defined:
        return False
    sources = {t.ref() for t in starts}
    stack = [t for t, g in zip(inputs, grads) if g is None and _tensors.is_float(t)]
    seen: set = set()
    while stack:  # walk back from the gradient-less inputs, never past an input with one
        t = stack.pop()
        if t.ref() in defined or t.ref() in seen:
            continue
        if t.ref() in sources:
            return False  # a path around the function's inputs: a real cut
        seen.add(t.ref())
        stack.extend(t.op.inputs)
    return True


def _gradient_override(op: Any) -> str | None:
    """The gradient function name an op was given (``tf.custom_gradient``), or None."""
    try:
        name = op.get_attr("_gradient_op_type")
    except (ValueError, TypeError):
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------------------------------------
# Eager calls: trace fn once more into a graph and look there.

_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def retrace(
    fn: Callable,
    call: _calls.Call,
    select: Callable[[Any], list[tf.Tensor]],
    key_fn: Callable | None = None,
) -> Callable[[list[int]], Found]:
    """A ``retrace(missing)`` for :func:`find`: trace ``fn`` on ``call`` and find the cuts.

    Only the differentiated tensors become symbolic in that trace (other arguments stay as
    they are, so ``.numpy()`` on them still works); a NumPy conversion is pinned on the source
    it comes from by tracing once per source. ``select(out)`` picks the differentiated
    outputs of what ``fn`` returns. Verdicts are cached per ``key_fn`` (default ``fn``),
    input signature and captured objects.
    """

    def run(missing: list[int]) -> Found:
        owner = key_fn or fn
        key = (
            _signature(call),
            tuple(map(id, _captures.captured_objects(owner))),
            tuple(missing),
        )
        try:
            cache = _VERDICTS.setdefault(owner, {})
        except TypeError:
            cache = {}
        if key not in cache:
            found = _trace_cuts(fn, call, select, missing)
            if found is None:  # NumPy somewhere: find out which sources it comes from
                found = []
                for j in missing:
                    one = _trace_cuts(fn, call, select, [j])
                    found.extend([(j, "numpy", {})] if one is None else one)
            cache[key] = found
        return cache[key]

    return run


_SCALARS = (int, float, bool, str, type(None))


def _signature(call: _calls.Call) -> Any:
    """A hashable key of what a trace of ``call`` depends on: tensor dtypes and shapes, Python
    constants, the identity of other objects (the common flat case without the full split)."""
    values = [*call.args, *call.kwargs.values()]
    if all(type(v) is _EagerTensor or type(v) in _SCALARS for v in values):
        return (
            tuple(call.positions),
            tuple(sorted(call.kwargs)),
            tuple(
                (v.dtype, _shape(v)) if type(v) is _EagerTensor else (type(v), v) for v in values
            ),
        )
    spec, flat, opaque = _calls.split(call)
    return spec, tuple((t.dtype, _shape(t)) for t in flat), tuple(map(id, opaque))


def _shape(t: tf.Tensor) -> tuple:
    shape_tuple = getattr(t, "_shape_tuple", None)  # the eager tensor's fast accessor
    return shape_tuple() if shape_tuple is not None else tuple(t.shape)


def _trace_cuts(
    fn: Callable, call: _calls.Call, select: Callable, missing: list[int]
) -> Found | None:
    """The cuts for ``missing`` sources (symbolic in the trace); ``None`` if NumPy got one."""
    symbolic = [j for j in missing if isinstance(call.sources[j], tf.Tensor)]
    found: Found = []

    def body(*values: tf.Tensor) -> Any:
        swap = {id(call.sources[j]): v for j, v in zip(symbolic, values)}
        sources = [swap.get(id(s), s) for s in call.sources]
        args, kwargs = tf.nest.map_structure(
            lambda v: swap.get(id(v), v), (call.args, call.kwargs), expand_composites=False
        )
        out = select(_compile.autographed(fn)(*args, **kwargs))
        found.extend(cuts(out, sources, missing))
        return 0

    specs = [tf.TensorSpec(call.sources[j].shape, call.sources[j].dtype) for j in symbolic]
    try:
        with _record.stop_recording():
            tf.function(body, autograph=False).get_concrete_function(*specs)
    except Exception as exc:  # noqa: BLE001 - only a NumPy conversion is a verdict
        return None if _tensors.is_numpy_error(exc) else []
    return found
