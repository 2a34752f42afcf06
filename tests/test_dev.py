"""dev.py, the quick start: set-up runs once per pyproject.toml, and arguments reach their tool.

The set-up logic runs against a throw-away checkout whose ``.venv/bin/python`` is a small real
program that records how it was called (no TensorFlow download); the verbs run for real through
this checkout's ``.venv``.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "dev.py"


def _dev_module():
    spec = importlib.util.spec_from_file_location("_dev_under_test", DEV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dev(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DEV), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A checkout with a pyproject.toml and a .venv whose python appends its argv to calls.log."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    bindir = tmp_path / ".venv" / ("Scripts" if os.name == "nt" else "bin")
    bindir.mkdir(parents=True)
    python = bindir / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "calls.log"}"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    dev = _dev_module()
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "VENV", tmp_path / ".venv")
    monkeypatch.setattr(dev, "STAMP", tmp_path / ".venv" / ".tapekit-installed")
    return dev, tmp_path


def _calls(root: Path) -> list[str]:
    log = root / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(os.name == "nt", reason="the recording python is a shell script")
def test_setup_installs_once_and_again_only_when_pyproject_changes(checkout, capsys):
    dev, root = checkout
    pip = "-m pip install --disable-pip-version-check -q -e .[test]"
    assert dev._setup() == root / ".venv" / "bin" / "python"
    assert _calls(root) == [pip]
    assert "installing tapekit" in capsys.readouterr().out
    dev._setup()  # idempotent: nothing to do, nothing printed
    assert _calls(root) == [pip]
    assert capsys.readouterr().out == ""
    (root / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    dev._setup()
    assert _calls(root) == [pip, pip]


@pytest.mark.skipif(os.name == "nt", reason="the recording python is a shell script")
def test_verbs_pass_their_arguments_on(checkout, monkeypatch):
    dev, root = checkout
    py = root / ".venv" / "bin" / "python"
    (root / "recipes").mkdir()
    (root / "recipes" / "06_mlp_classifier.py").write_text("")
    (root / "bench.py").write_text("")
    monkeypatch.chdir(root)
    assert dev.command(py, "demo", ["--epochs", "1"]) == [
        str(py),
        str(root / "recipes" / "06_mlp_classifier.py"),
        "--epochs",
        "1",
    ]
    workers = str(min(2, os.cpu_count() or 1))  # the whole suite runs in parallel workers
    assert dev.command(py, "test", []) == [
        str(py), "-m", "pytest", "-n", workers, "--dist", "loadfile"
    ]  # fmt: skip
    assert dev.command(py, "test", ["-x", "tests/a.py"]) == [
        str(py),
        "-m",
        "pytest",
        "-x",
        "tests/a.py",
    ]
    assert dev.command(py, "run", ["07", "--steps", "5"]) == [
        str(py), "-m", "tapekit.cli", "run", "07", "--steps", "5"
    ]  # fmt: skip
    assert dev.command(py, "run", ["bench.py", "--n", "3"]) == [str(py), "bench.py", "--n", "3"]
    assert dev.command(py, "board", ["logs", "--port", "0"]) == [
        str(py), "-m", "tapekit.cli", "board", "logs", "--port", "0"
    ]  # fmt: skip
    assert dev.main(["test", "-q", "--co"]) == 0  # the recording python exits 0
    assert _calls(root)[-1] == "-m pytest -q --co"


def test_unknown_verb_prints_the_verbs_and_fails():
    proc = _dev("tset")
    assert proc.returncode == 2
    assert "dev.py: unknown verb 'tset'; use one of: demo, test, setup, recipes, run" in proc.stdout
    assert _dev("--help").returncode == 0


@pytest.mark.slow
def test_real_verbs_reuse_the_venv_and_reach_their_tool():
    assert _dev("setup").returncode == 0  # installs only if pyproject.toml changed since
    proc = _dev("setup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""  # the second time: nothing to install, nothing printed
    proc = _dev("test", "--co", "-q", "tests/test_api.py::test_core_api_is_exported")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tests/test_api.py::test_core_api_is_exported" in proc.stdout
    proc = _dev("run", "01", "--help")  # through the tapekit command to the recipe's argparse
    assert proc.returncode == 0, proc.stderr
    assert "--steps STEPS" in proc.stdout
    proc = _dev("run", "no_such_recipe")
    assert proc.returncode == 2
    assert "Run `python3 dev.py recipes` for descriptions." in proc.stderr
