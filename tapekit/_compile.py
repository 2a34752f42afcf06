"""Compiling and caching transform work with ``tf.function``, one trace per input signature.

A transform (``hessian``, ``jacobian``, ...) calls :func:`run` with a *core*: a function that
computes the result from ``(fn, call)``. :func:`run` decides where the core runs:

- ``compile=False``: eagerly, as it is;
- inside a graph someone else is building (the user's ``tf.function``): inline, into that graph
  (or through the cached compiled function when XLA was asked for);
- otherwise: through a ``tf.function`` cached per user function and transform options.

Arguments are split into a hashable *spec* (nest structure, which leaves are differentiated,
Python constants), the flat list of tensors, and *opaque* objects (variables, differentiated or
not, and other objects passed to non-differentiated positions) that ``tf.function`` handles by its
own rules. The spec is a static argument of the ``tf.function``, so TensorFlow traces once per
spec and per shape/dtype signature of the tensors. Warm eager calls go straight to the cached
concrete function. The cache holds the user function weakly where Python allows it (and keeps
the last 64 of those it cannot reference weakly).

As with ``tf.function``, Python values that the user function reads from its closure or
attributes (not tensors or variables) are fixed when it is traced.
"""

from __future__ import annotations

import collections
import functools
import inspect
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from . import _args

Core = Callable[[Callable, "Call"], Any]


@dataclass
class Call:
    """A prepared call of the user function.

    ``args``/``kwargs`` are what ``fn`` receives; ``sources`` the flat list of values to watch
    (one per differentiated leaf, in ``argnums`` order); ``structs`` holds, per differentiated
    position, the value passed (its nest structure) and its number of leaves. ``extra`` holds
    further tensors a core needs (e.g. the tangents of ``hvp``), as a flat list.
    """

    args: list[Any]
    kwargs: dict[str, Any]
    positions: list[int]
    sources: list[Any]
    structs: list[tuple[Any, int]]
    extra: list[Any] = field(default_factory=list)


def make_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    argnums: tuple[int, ...],
    transform: str,
) -> Call:
    """Validate ``argnums`` against a call and prepare the differentiated arguments."""
    positions = _args.resolve_argnums(argnums, len(args), fn, transform)
    if len(set(positions)) != len(positions):
        raise ValueError(
            f"{transform}: argnums={argnums} names the same argument twice. List each "
            f"argument once, e.g. argnums=(0, 1)."
        )
    args_list = list(args)
    # a tensor at two positions gets a copy: one derivative per position (see _args.prepare)
    wheres = [functools.partial(_args.describe_arg, fn, i) for i in positions]
    values, sources, structs = _args.prepare_all([args[i] for i in positions], wheres, transform)
    for i, value in zip(positions, values):
        args_list[i] = value
    return Call(args_list, kwargs, positions, sources, structs)


_MODES = ("auto", "fwd", "rev")


def check_options(
    transform: str, mode: str, compile: bool, jit_compile: bool, chunk_size: int | None
) -> None:
    """Build-time validation of the options shared by the vectorized transforms."""
    if mode not in _MODES:
        raise ValueError(
            f"{transform} needs mode to be one of {_MODES}, but received {mode!r}. 'rev' is "
            f"reverse mode (best for few outputs), 'fwd' forward mode (best for few inputs)."
        )
    if jit_compile and not compile:
        raise ValueError(
            f"{transform}: jit_compile=True compiles with XLA and needs compile=True; "
            f"received compile=False. Drop one of them."
        )
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(
            f"{transform} needs chunk_size to be None or an int >= 1, but received "
            f"{chunk_size!r}. It is the number of rows/columns computed at once."
        )


# ---------------------------------------------------------------------------------------------
# Splitting a call into (spec, flat tensors, opaque objects) and back.

_STATIC = (str, bytes, int, float, complex, bool, type(None))
_LEAF = ("x",)
_EagerTensor = tf.__internal__.EagerTensor  # importing must not start TF's runtime


def _encode(value: Any, flat: list, opaque: list, diff: bool) -> Any:
    """A hashable description of ``value``; tensors go to ``flat``, other objects to ``opaque``."""
    if type(value) is _EagerTensor:
        flat.append(value)
        return _LEAF
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (str(type(k)), k) if not isinstance(k, str) else ("", k))
        items = tuple((k, _encode(value[k], flat, opaque, diff)) for k in keys)
        return ("d", type(value), tuple(value.keys()), items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("n", type(value), tuple(_encode(v, flat, opaque, diff) for v in value))
    if isinstance(value, (list, tuple)):
        return ("l", type(value), tuple(_encode(v, flat, opaque, diff) for v in value))
    if diff:  # a differentiated leaf: tensor, tf.Variable or Keras variable
        variable = _variable(value)
        if variable is not None:
            # Passed as the tf.Variable itself (not its value), so that reads of it inside fn,
            # also from fn's closure (e.g. a Keras model's own weights), reach the watched source.
            opaque.append(variable)
            return ("o",)
        flat.append(tf.convert_to_tensor(value))
        return _LEAF
    if isinstance(value, tf.Tensor) or isinstance(value, np.ndarray):
        flat.append(tf.convert_to_tensor(value))
        return _LEAF
    if isinstance(value, _STATIC):
        if isinstance(value, np.generic):  # np.float64 (a float): tf.function would make it a
            value = value.item()  # float64 tensor, which float32 ops reject; eager code accepts it
        return ("s", type(value), value)
    opaque.append(value)
    return ("o",)


def _variable(value: Any) -> tf.Variable | None:
    """The tf.Variable a differentiated leaf is (or wraps, for a Keras variable), else None."""
    if isinstance(value, tf.Variable):
        return value
    if isinstance(value, tf.Tensor):
        return None
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, tf.Variable) else None


def _decode(spec: Any, flat: Any, opaque: Any) -> Any:
    kind = spec[0]
    if kind == "x":
        return next(flat)
    if kind == "s":
        return spec[2]
    if kind == "o":
        return next(opaque)
    if kind == "d":
        items = dict((k, _decode(s, flat, opaque)) for k, s in spec[3])
        ordered = {k: items[k] for k in spec[2]}
        if spec[1] is dict:
            return ordered
        if issubclass(spec[1], collections.defaultdict):
            return spec[1](None, ordered)
        return spec[1](ordered)
    if kind == "n":
        return spec[1](*(_decode(s, flat, opaque) for s in spec[2]))
    values = [_decode(s, flat, opaque) for s in spec[2]]
    return values if spec[1] is list else spec[1](values)


def split(call: Call) -> tuple[Any, list[tf.Tensor], tuple]:
    """``(spec, flat tensors, opaque objects)`` of a prepared call (differentiated leaves first)."""
    flat: list[tf.Tensor] = []
    opaque: list[Any] = []
    diff = tuple(_encode(call.args[i], flat, opaque, True) for i in call.positions)
    extra = tuple(_encode(v, flat, opaque, True) for v in call.extra)
    rest = tuple(
        (i, _encode(a, flat, opaque, False))
        for i, a in enumerate(call.args)
        if i not in call.positions
    )
    kw = tuple((k, _encode(v, flat, opaque, False)) for k, v in sorted(call.kwargs.items()))
    spec = (tuple(call.positions), len(call.args), diff, extra, rest, kw)
    return spec, flat, tuple(opaque)


def join(spec: Any, flat: tuple, opaque: tuple) -> Call:
    """Rebuild the :class:`Call` (inside the trace) from :func:`split`'s pieces."""
    positions, nargs, diff, extra_spec, rest, kw = spec
    it, ot = iter(flat), iter(opaque)
    args: list[Any] = [None] * nargs
    structs = []
    sources = []
    for i, s in zip(positions, diff):
        args[i] = _decode(s, it, ot)
        leaves = tf.nest.flatten(args[i])
        structs.append((args[i], len(leaves)))
        sources.extend(v if (v := _variable(leaf)) is not None else leaf for leaf in leaves)
    extra = [_decode(s, it, ot) for s in extra_spec]
    for i, s in rest:
        args[i] = _decode(s, it, ot)
    kwargs = {k: _decode(s, it, ot) for k, s in kw}
    return Call(args, kwargs, list(positions), sources, structs, tf.nest.flatten(extra))


# ---------------------------------------------------------------------------------------------
# The cache: user function (weakly) -> (transform, options) -> compiled entry.


_NO_AUTOGRAPH = ("tensorflow", "keras", "tf_keras", "numpy", "jax", "tapekit")


def autographed(fn: Callable) -> Callable:
    """``fn`` converted by AutoGraph (as ``tf.function`` would), so Python ``if``/``for`` over
    tensors work when it is traced; ``fn`` itself when it cannot be converted (e.g. a Keras
    model, which converts its own ``call``) or comes from a library."""
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        return fn
    if (getattr(fn, "__module__", None) or "").split(".")[0] in _NO_AUTOGRAPH:
        return fn
    try:
        if inspect.ismethod(fn):  # convert the function, then bind it again
            return types.MethodType(tf.autograph.to_graph(fn.__func__), fn.__self__)
        return tf.autograph.to_graph(fn)
    except Exception:  # noqa: BLE001 - AutoGraph could not convert it: trace it as it is
        return fn


def no_autograph(fn: Callable) -> Callable:
    """Mark a tapekit entry point so AutoGraph (in the user's tf.function) calls it as it is.

    This is the mark ``tf.autograph.experimental.do_not_convert`` leaves on its wrapper; setting
    it directly avoids the wrapper (and keeps doctest and ``inspect`` on the function itself).
    """
    target = fn.__func__ if inspect.ismethod(fn) else fn
    target.autograph_info__ = None
    return fn


class _Entry:
    """One ``tf.function`` for one (user function, transform, options), and its warm calls."""

    def __init__(self, ref: Callable[[], Any], core: Core, jit_compile: bool, name: str):
        def body(spec: Any, opaque: tuple, *flat: tf.Tensor) -> Any:
            fn = ref()
            if fn is None:  # pragma: no cover - the cache entry dies with the function
                raise RuntimeError("the function of this compiled transform was garbage collected")
            return core(autographed(fn), join(spec, flat, opaque))

        body.__name__ = name
        self.name = name
        self.function = tf.function(body, jit_compile=jit_compile, autograph=False)
        self.concrete: dict[Any, Any] = {}
        self.warned = False

    def __call__(self, spec: Any, flat: list[tf.Tensor], opaque: tuple) -> Any:
        if opaque or not tf.executing_eagerly():
            out = self.function(spec, opaque, *flat)
            self._check_retracing()
            return out
        key = (spec, tuple((t.dtype, tuple(t.shape)) for t in flat))
        cf = self.concrete.get(key)
        if cf is None:
            cf = self.function.get_concrete_function(spec, opaque, *flat)
            self.concrete[key] = cf
            self._check_retracing()
        call_flat = getattr(cf, "_call_flat", None)
        if call_flat is None:  # pragma: no cover - older/newer TF without the fast entry point
            return cf(*flat)
        return call_flat(flat, cf.captured_inputs)

    def _check_retracing(self) -> None:
        """Warn once when one transform of one function keeps being traced again."""
        count = self.function.experimental_get_tracing_count()
        if count > RETRACE_WARNING and not self.warned:
            self.warned = True
            warnings.warn(
                f"tapekit: `{self.name}` was traced {count} times, once per new input signature "
                f"(shapes, dtypes and the values of Python numbers/strings passed to "
                f"non-differentiated arguments, which are constants of the trace). If a Python "
                f"number changes from call to call, pass it as a tensor (tf.constant(t)); if "
                f"shapes change, pass compile=False.",
                RetracingWarning,
                stacklevel=5,  # the user's call of the transformed function
            )


class RetracingWarning(UserWarning):
    """A compiled transform of one function was traced more than ``RETRACE_WARNING`` times."""


RETRACE_WARNING = 8
_WEAK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRONG: collections.OrderedDict[int, tuple[Any, dict]] = collections.OrderedDict()
_STRONG_MAX = 64  # functions that cannot be weakly referenced: keep the most recent ones


def _store(fn: Callable) -> tuple[dict, Callable[[], Any], Any]:
    """The per-function entry dict, a weak getter for ``fn`` and an extra key part."""
    if inspect.ismethod(fn):  # bound methods are created anew at each attribute access
        owner, sub, ref = fn.__self__, fn.__func__, weakref.WeakMethod(fn)
    else:
        owner, sub = fn, None
        try:
            ref = weakref.ref(fn)
        except TypeError:
            ref = None
    try:
        entries = _WEAK.setdefault(owner, {})
    except TypeError:  # not weak-referenceable (e.g. a NumPy ufunc): keep it alive
        owner_id = id(owner)
        if owner_id not in _STRONG:
            _STRONG[owner_id] = (owner, {})
            while len(_STRONG) > _STRONG_MAX:
                _STRONG.popitem(last=False)
        _STRONG.move_to_end(owner_id)
        entries = _STRONG[owner_id][1]
    if ref is None:
        ref = lambda: fn  # noqa: E731
    return entries, ref, sub


def run(
    fn: Callable,
    transform: str,
    options: tuple,
    core: Core,
    call: Call,
    *,
    compile: bool,
    jit_compile: bool,
) -> Any:
    """Compute ``core(fn, call)``, compiled and cached unless ``compile`` is False."""
    if not compile or tf.config.functions_run_eagerly():  # debugging: honour the global switch
        return core(fn, call)
    if not jit_compile and not tf.executing_eagerly():
        return core(autographed(fn), call)  # already inside a graph being built: inline into it
    entries, ref, sub = _store(fn)
    if not entries:  # a function object seen for the first time
        _count_new_function(fn, transform)
    key = (sub, transform, options, jit_compile)
    entry = entries.get(key)
    if entry is None:
        name = f"{transform}_of_{getattr(fn, '__name__', 'fn')}".replace("<", "").replace(">", "")
        entry = _Entry(ref, core, jit_compile, name)
        entries[key] = entry
    spec, flat, opaque = split(call)
    return entry(spec, flat, opaque)


_NEW_FUNCTIONS: dict[Any, int] = {}  # code object -> function objects compiled with that code


def _count_new_function(fn: Callable, transform: str) -> None:
    """Warn once when many function objects of the same code (a lambda in a loop) are compiled."""
    while (getattr(fn, "__module__", None) or "").startswith("tapekit.") and hasattr(
        fn, "__wrapped__"
    ):  # vmap(grad(f)): count the user's f, not tapekit's grad_fn shared by every grad
        fn = fn.__wrapped__
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return
    count = _NEW_FUNCTIONS[code] = _NEW_FUNCTIONS.get(code, 0) + 1
    if count == RETRACE_WARNING + 1:
        name = "lambda" if code.co_name == "<lambda>" else code.co_name
        warnings.warn(
            f"tapekit: {transform} was compiled for {count} different function objects made by "
            f"the same code (`{name}` at {code.co_filename}:{code.co_firstlineno}), and each new "
            f"one is traced again. Define the function (or the transformed function) once, "
            f"outside the loop, or pass compile=False.",
            RetracingWarning,
            stacklevel=4,  # the user's call of the transformed function
        )


def tracing_count(fn: Callable) -> int:
    """How many times transforms of ``fn`` were traced (summed over transforms and options)."""
    owner = fn.__self__ if inspect.ismethod(fn) else fn
    try:
        entries = _WEAK.get(owner, {})
    except TypeError:
        entries = _STRONG.get(id(owner), (None, {}))[1]
    return sum(e.function.experimental_get_tracing_count() for e in entries.values())
