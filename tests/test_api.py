"""The public face: __all__ is sorted and complete, and every public name is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import tapekit

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PUBLIC = [getattr(tapekit, n) for n in tapekit.__all__]
CALLABLES = [
    obj
    for obj in PUBLIC
    if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, BaseException))
]


def test_all_is_sorted_unique_and_resolves():
    assert tapekit.__all__ == sorted(tapekit.__all__)
    assert len(set(tapekit.__all__)) == len(tapekit.__all__)
    for name in tapekit.__all__:
        assert hasattr(tapekit, name), name


def test_core_api_is_exported():
    core = {
        "grad",
        "value_and_grad",
        "partials",
        "partial",
        "derivative",
        "jvp",
        "vjp",
        "check_grads",
    }
    assert core <= set(tapekit.__all__)


@pytest.mark.parametrize("name", tapekit.__all__)
def test_every_public_name_is_in_the_readme(name):
    assert f"`{name}" in README or f"{name}(" in README, f"README does not document {name}"


@pytest.mark.parametrize("obj", CALLABLES, ids=lambda o: o.__name__)
def test_docstrings_have_sections_and_examples(obj):
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{obj.__name__} needs a >>> example"
    target = obj.__init__ if inspect.isclass(obj) else obj
    documented = doc + (inspect.getdoc(target) or "") if inspect.isclass(obj) else doc
    if inspect.isfunction(obj):
        for section in ("Args:", "Returns:", "Raises:"):
            assert section in documented, f"{obj.__name__} docstring lacks {section}"
    else:
        assert "Args:" in documented, f"{obj.__name__} docstring lacks Args:"


@pytest.mark.parametrize("obj", CALLABLES, ids=lambda o: o.__name__)
def test_signatures_have_type_hints(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        assert p.annotation is not inspect.Parameter.empty, (
            f"{obj.__name__}: `{p.name}` has no hint"
        )
    assert sig.return_annotation is not inspect.Signature.empty, f"{obj.__name__}: no return hint"


def test_lazy_exports_match_all_and_import_without_tensorflow():
    import subprocess
    import sys

    assert sorted(tapekit._EXPORTS) == tapekit.__all__
    code = "import sys, tapekit, tapekit.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_error_class_tapekit_defines_is_a_tapekit_error():
    import importlib
    import pkgutil

    defined = {}
    for info in pkgutil.walk_packages(tapekit.__path__, "tapekit."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            is_error = inspect.isclass(obj) and issubclass(obj, Exception)
            is_error = is_error and not issubclass(obj, Warning)  # warnings are not errors
            if is_error and obj.__module__.startswith("tapekit") and not name.startswith("_"):
                defined[f"{obj.__module__}.{obj.__qualname__}"] = obj
    assert {"DisconnectedGradientError", "NonFiniteError", "CheckpointError"} <= {
        c.__name__ for c in defined.values()
    }
    stray = sorted(k for k, c in defined.items() if not issubclass(c, tapekit.TapekitError))
    assert not stray, f"error classes outside TapekitError: {stray}"
    for name in ("DisconnectedGradientError", "NonFiniteError", "CheckpointError"):
        assert issubclass(getattr(tapekit, name), tapekit.TapekitError)
    assert issubclass(tapekit.DisconnectedGradientError, ValueError)  # as the README says
    assert issubclass(tapekit.NonFiniteError, FloatingPointError)
    assert issubclass(tapekit.CheckpointError, RuntimeError)
