"""What a user function reads through its closure and global names, for the compile cache.

A ``tf.function`` trace captures the objects ``fn`` reads through its closure cells and global
names by identity: rebinding such a name (``scale = tf.constant(3.0)``, ``model = build()``, a
helper function) leaves the trace answering with the old object. :func:`watcher` reads the names
once from ``fn``'s code (and one level into the user functions it calls by name, and through
tapekit's own transforms to the user function they hold); calling it returns the objects those
names point at now, a few dict lookups. The compile cache traces again when one of them changed.
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from collections.abc import Callable
from typing import Any

_LIBRARIES = ("tensorflow", "keras", "tf_keras", "numpy", "jax", "tapekit")


def watcher(fn: Any) -> Callable[[], tuple]:
    """A function returning the objects ``fn``'s closure cells and global names point at now.

    The names are read once from ``fn``'s code (and one level into the user functions it
    calls by name); reading their current objects is a few dict lookups per call.
    """
    cells: list[Any] = []
    names: list[tuple[dict, str]] = []
    _collect(fn, cells, names, depth=0)
    if not cells and not names:
        return tuple
    missing = object()

    def captured() -> tuple:
        out = []
        for cell in cells:
            try:
                out.append(cell.cell_contents)
            except ValueError:  # an empty cell (the name is assigned later in the outer scope)
                out.append(missing)
        out.extend(g.get(n, missing) for g, n in names)
        return tuple(out)

    return captured


_WATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def captured_objects(fn: Callable) -> tuple:
    """The objects ``fn``'s closure cells and global names point at now (see ``watcher``).

    The names are read from ``fn``'s code once per function object.
    """
    try:
        watch = _WATCHERS.get(fn)
        if watch is None:
            watch = _WATCHERS[fn] = watcher(fn)
    except TypeError:  # not weakly referenceable
        watch = watcher(fn)
    return watch()


def _collect(fn: Any, cells: list, names: list, depth: int) -> None:
    """Add the closure cells and (globals, name) pairs of user function ``fn`` (see watcher).

    Attributes count too: for a bound method (``hessian(model.loss)``) and for the user
    objects ``fn`` reaches through its closure or globals, each attribute whose name ``fn``'s
    code uses is watched as an ``(obj.__dict__, name)`` pair, so ``self.scale = ...`` is seen.
    """
    owners = []
    if inspect.ismethod(fn):
        owners.append(fn.__self__)
        fn = fn.__func__
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not inspect.isfunction(fn):
        return
    if _from_library(fn):  # e.g. a tapekit transform: look at the user functions it holds
        if (fn.__module__ or "").startswith("tapekit"):
            for cell in fn.__closure__ or ():
                inner = cell.cell_contents
                if callable(inner) and inner is not fn:
                    _collect(inner, cells, names, depth)
        return
    code = fn.__code__
    nested = []
    for cell in fn.__closure__ or ():
        if all(c is not cell for c in cells):
            cells.append(cell)
            try:
                nested.append(cell.cell_contents)
            except ValueError:
                pass
    glob = fn.__globals__
    for name in sorted(_code_names(code)):
        value = glob.get(name, glob)
        if value is glob or isinstance(value, types.ModuleType):
            continue
        if all(not (g is glob and n == name) for g, n in names):
            names.append((glob, name))
            nested.append(value)
    used = _code_names(code)
    for obj in [*owners, *nested]:
        attrs = _user_attributes(obj)
        for name in sorted(used & attrs.keys()):
            if all(not (g is attrs and n == name) for g, n in names):
                names.append((attrs, name))
    if depth == 0:
        for value in nested:
            if inspect.isfunction(value) and value is not fn:
                _collect(value, cells, names, depth + 1)


def _user_attributes(obj: Any) -> dict:
    """``obj.__dict__`` for an instance of a user class (not a module, function, class or an
    object of a library, whose attributes are its own business); else an empty dict."""
    if isinstance(obj, (types.ModuleType, types.FunctionType, types.MethodType, type)):
        return {}
    if (type(obj).__module__ or "").split(".")[0] in _LIBRARIES:
        return {}
    attrs = getattr(obj, "__dict__", None)
    return attrs if isinstance(attrs, dict) else {}


def _code_names(code: types.CodeType) -> set[str]:
    """The global/attribute names a code object and the code nested in it use."""
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _code_names(const)
    return out


def _from_library(fn: Callable) -> bool:
    return (getattr(fn, "__module__", None) or "").split(".")[0] in _LIBRARIES
