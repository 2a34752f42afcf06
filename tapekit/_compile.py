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

A name the user function reads from its closure or globals that is rebound to another object
is noticed (see ``_captures``) and traced again; Python values read through attributes, or
mutated in place, are fixed when it is traced, as with ``tf.function``.
"""

from __future__ import annotations

import collections
import functools
import inspect
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _captures, _tensors
from ._calls import Call, join, split

Core = Callable[[Callable, Call], Any]


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
    _tensors.check_chunk_size(chunk_size, transform)


# ---------------------------------------------------------------------------------------------
# The cache: user function (weakly) -> (transform, options) -> compiled entry.


_NO_AUTOGRAPH = ("tensorflow", "keras", "tf_keras", "numpy", "jax", "tapekit")


def _leave_tapekit_unconverted() -> None:
    """Tell AutoGraph that tapekit is a library, as ``tensorflow`` and ``keras`` are.

    User code converted by AutoGraph (a step, a ``loss_fn``, a function in the user's
    ``tf.function``) that calls into tapekit would otherwise have every tapekit function below
    it converted too: recipe 08's WGAN-GP step converted about 900 of them, and spent 7 s of
    its first 17 in AutoGraph. tapekit's code is written for tracing (``tf.cond``,
    ``tf.while_loop``); the user functions it calls are converted where it calls them
    (:func:`autographed`). The rule list is internal to TensorFlow, so a TensorFlow without it
    only loses the speed: the entry points also carry the public do-not-convert mark
    (:func:`no_autograph`).
    """
    try:
        from tensorflow.python.autograph.core import config
    except ImportError:  # pragma: no cover - another TensorFlow layout
        return
    rules = getattr(config, "CONVERSION_RULES", None)
    if isinstance(rules, tuple) and hasattr(config, "DoNotConvert"):
        config.CONVERSION_RULES = (config.DoNotConvert("tapekit"), *rules)


_leave_tapekit_unconverted()


def _library(fn: Any) -> bool:
    return (getattr(fn, "__module__", None) or "").split(".")[0] in _NO_AUTOGRAPH


def autographed(fn: Callable) -> Callable:
    """``fn`` converted by AutoGraph (as ``tf.function`` would), so Python ``if``/``for`` over
    tensors work when it is traced; ``fn`` itself when executing eagerly (Python control flow
    works on eager tensors), when it cannot be converted or when it comes from a library (e.g.
    a Keras model, which converts its own ``call``). A callable object of the user's has its
    ``__call__`` converted."""
    if tf.executing_eagerly():
        return fn
    if isinstance(fn, functools.partial):
        return functools.partial(autographed(fn.func), *fn.args, **fn.keywords)
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - the function, not callable()
        if not inspect.isfunction(call) or _library(call):
            return fn
        fn = types.MethodType(call, fn)
    if _library(fn):
        return fn
    try:
        if inspect.ismethod(fn):  # convert the function, then bind it again
            return types.MethodType(tf.autograph.to_graph(fn.__func__), fn.__self__)
        return tf.autograph.to_graph(fn)
    except Exception:  # noqa: BLE001 - AutoGraph could not convert it: trace it as it is
        return fn


def traced(core: Core, fn: Callable, call: Call, transform: str) -> Any:
    """``core`` run on ``fn`` (converted by AutoGraph) while a graph is built; a tensor handed
    to NumPy there raises a ``TypeError`` saying why and what to do."""
    try:
        return core(autographed(fn), call)
    except (AttributeError, NotImplementedError, TypeError) as exc:
        if not _tensors.is_numpy_error(exc):
            raise
        raise TypeError(
            f"{transform}: `{_args.fn_name(fn)}` hands a tensor to NumPy (.numpy(), an np.* "
            f"function or float()), but {transform} runs it compiled, in a tf.function, where "
            f"tensors are symbolic ({exc}). NumPy cannot be differentiated anyway: compute "
            f"with TensorFlow ops (tf.sin instead of np.sin). To debug, compile=False runs it "
            f"eagerly and names the argument whose derivative NumPy cuts."
        ) from exc


def no_autograph(fn: Callable) -> Callable:
    """Mark a tapekit entry point so AutoGraph (in the user's tf.function) calls it as it is.

    This is the mark ``tf.autograph.experimental.do_not_convert`` leaves on its wrapper; setting
    it directly avoids the wrapper (and keeps doctest and ``inspect`` on the function itself).
    """
    target = fn.__func__ if inspect.ismethod(fn) else fn
    target.autograph_info__ = None
    return fn


class _Entry:
    """One ``tf.function`` for one (user function, transform, options), and its warm calls.

    A trace captures the objects ``fn`` reads through its closure and global names by identity.
    ``captured()`` gives the identities those names point at now; they are part of the trace
    key, so rebinding such a name (``scale = tf.constant(3.0)``, ``model = build()``) traces
    again instead of answering with the old object.
    """

    def __init__(
        self, ref: Callable[[], Any], core: Core, jit_compile: bool, name: str, transform: str
    ):
        def body(spec: Any, opaque: tuple, *flat: tf.Tensor) -> Any:
            fn = ref()
            if fn is None:  # pragma: no cover - the cache entry dies with the function
                raise RuntimeError("the function of this compiled transform was garbage collected")
            return traced(core, fn, join(spec[0], flat, opaque), transform)

        body.__name__ = name
        self.name = name
        self.function = tf.function(body, jit_compile=jit_compile, autograph=False)
        self.concrete: dict[Any, Any] = {}
        self.captured = _captures.watcher(ref())
        self.captured_ids: tuple[int, ...] | None = None
        self.held: tuple = ()
        self.generation = 0
        self.variables: collections.OrderedDict[int, tf.Variable] = collections.OrderedDict()
        self.warned = False

    def __call__(self, spec: Any, flat: list[tf.Tensor], opaque: tuple) -> Any:
        captured = self.captured()
        ids = tuple(map(id, captured))
        if ids != self.captured_ids:  # a captured name was rebound: trace again
            self.concrete.clear()
            self.captured_ids = ids
            self.held = captured  # alive, so that a new object cannot reuse one of these ids
            self.generation += 1
        # A variable argument is traced by its identity: tf.function traces variables by shape
        # and dtype only, and a trace in which the argument is also read through fn's closure
        # (a model's own weight) maps both reads to one input, which a later call with another
        # variable would then feed to both (a silently wrong answer).
        variable_ids = tuple(id(v) for v in opaque if isinstance(v, tf.Variable))
        for v in opaque:
            if isinstance(v, tf.Variable):
                self.variables[id(v)] = v  # alive while its trace may be reused: no id reuse
                self.variables.move_to_end(id(v))
        while len(self.variables) > _STRONG_MAX:
            self.variables.popitem(last=False)
        spec = (spec, self.generation, variable_ids)
        if not tf.executing_eagerly():
            out = self.function(spec, opaque, *flat)
            self._check_retracing()
            return out
        handles: list[Any] = []
        if opaque:  # variables go in as their handles; other objects take the slow path
            if not all(isinstance(v, tf.Variable) for v in opaque):
                out = self.function(spec, opaque, *flat)
                self._check_retracing()
                return out
            handles = [v.handle for v in opaque]
        key = (
            spec,
            tuple((t.dtype, tuple(t.shape)) for t in flat),
            tuple((id(v), v.dtype, tuple(v.shape)) for v in opaque),
        )
        cf = self.concrete.get(key)
        if cf is None:
            cf = self.function.get_concrete_function(spec, opaque, *flat)
            if opaque and len(cf.inputs) != len(handles) + len(flat) + len(cf.captured_inputs):
                cf = None  # pragma: no cover - a TF that passes variables differently
            self.concrete[key] = cf
            self._check_retracing()
        call_flat = getattr(cf, "_call_flat", None)
        if call_flat is None:  # pragma: no cover - older/newer TF without the fast entry point
            return self.function(spec, opaque, *flat)
        return call_flat(handles + flat if handles else flat, cf.captured_inputs)

    def _check_retracing(self) -> None:
        """Warn once when one transform of one function keeps being traced again."""
        count = self.function.experimental_get_tracing_count()
        if count > RETRACE_WARNING and not self.warned:
            self.warned = True
            warnings.warn(
                f"tapekit: `{self.name}` was traced {count} times, once per new input signature "
                f"(shapes, dtypes and the values of Python numbers/strings passed to "
                f"non-differentiated arguments, which are constants of the trace, and the "
                f"objects bound to the names fn reads from its closure or globals). If a Python "
                f"number changes from call to call, pass it as a tensor (tf.constant(t)); if a "
                f"captured tensor is rebound at every call, pass it as an argument or keep it "
                f"in a tf.Variable and assign to it; if shapes change, pass compile=False.",
                RetracingWarning,
                stacklevel=5,  # the user's call of the transformed function
            )


class RetracingWarning(UserWarning):
    """A compiled transform of one function was traced more than ``RETRACE_WARNING`` times
    (usually: a Python number that changes from call to call; pass a tensor instead). Public
    as ``tapekit.RetracingWarning``.

    Example:
        >>> import warnings, tapekit
        >>> import tensorflow as tf
        >>> h = tapekit.hessian(lambda x, t: tf.reduce_sum(x**3) * t)  # compiled
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always", tapekit.RetracingWarning)
        ...     for t in range(10):  # a new Python number each call: a new trace each time
        ...         _ = h(tf.ones(2), float(t))
        >>> [w.category.__name__ for w in seen][:1]
        ['RetracingWarning']
    """


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
        return traced(core, fn, call, transform)  # inside a graph being built: inline into it
    entries, ref, sub = _store(fn)
    if not entries:  # a function object seen for the first time
        _count_new_function(fn, transform)
    key = (sub, transform, options, jit_compile)
    entry = entries.get(key)
    if entry is None:
        name = f"{transform}_of_{getattr(fn, '__name__', 'fn')}".replace("<", "").replace(">", "")
        entry = _Entry(ref, core, jit_compile, name, transform)
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
    if (getattr(fn, "__module__", None) or "").startswith("tapekit."):
        return  # made by tapekit for one model and batch each (curvature.model_loss)
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
