#!/usr/bin/env python3
"""Set up tapekit in ./.venv (once), then run the demo, the tests, the recipes or TensorBoard.

    python3 dev.py demo               train the main recipe, write logs/ (the quick start)
    python3 dev.py test [ARGS...]     run the test suite (what CI runs) in 2 worker processes;
                                      with ARGS, pytest ARGS in one process (e.g. one file)
    python3 dev.py recipes            list the recipes
    python3 dev.py run NAME [ARGS...] run a recipe (01, 01_gradients or gradients), or any
                                      script (benchmarks/hessian.py); ARGS go to it
    python3 dev.py inspect [LOGDIR]   summarise the TensorBoard logs in the terminal (default logs)
    python3 dev.py board [LOGDIR]     start TensorBoard on LOGDIR (default logs; --port N)
    python3 dev.py setup              only create or update .venv

Every verb is idempotent: the virtual environment is created and `pip install -e .[test]` is run
only when it is missing or pyproject.toml changed, so later runs start at once. Nothing needs to
be activated: each verb runs with .venv's Python (`recipes`, `run`, `inspect` and `board` are the
`tapekit` command that the install puts in .venv/bin).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
MAIN_RECIPE = "06_mlp_classifier.py"  # in recipes/; what `demo` runs
STAMP = VENV / ".tapekit-installed"


def _python() -> Path:
    scripts = "Scripts" if os.name == "nt" else "bin"
    return VENV / scripts / ("python.exe" if os.name == "nt" else "python")


def _setup() -> Path:
    if sys.version_info < (3, 10):  # noqa: UP036 - say it clearly on an old Python
        sys.exit(f"tapekit needs Python 3.10 or newer; this is {sys.version.split()[0]}.")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    py = _python()
    if not py.exists():
        print(f"[dev] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        print("[dev] installing tapekit and its test dependencies (first run only)", flush=True)
        cmd = [
            str(py),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-e",
            ".[test]",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        STAMP.write_text(want)
    return py


_TAPEKIT_VERBS = ("recipes", "run", "inspect", "board")
VERBS = ("demo", "test", "setup", *_TAPEKIT_VERBS)


def command(py: Path, verb: str, args: list[str]) -> list[str]:
    """The command line that ``python3 dev.py VERB ARGS...`` runs with the venv's Python."""
    if verb == "demo":
        main_recipe = ROOT / "recipes" / MAIN_RECIPE
        if not main_recipe.exists():
            main_recipe = ROOT / "recipes" / "01_gradients.py"
        return [str(py), str(main_recipe), *args]
    if verb == "test":
        if not args:  # the whole suite: one worker per core (2 here), one test file each
            workers = str(max(1, min(2, os.cpu_count() or 1)))
            return [str(py), "-m", "pytest", "-n", workers, "--dist", "loadfile"]
        return [str(py), "-m", "pytest", *args]
    if verb == "run" and args and args[0].endswith(".py") and Path(args[0]).is_file():
        return [str(py), *args]  # a script of the checkout, e.g. benchmarks/hessian.py
    return [str(py), "-m", "tapekit.cli", verb, *args]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in VERBS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help", "help"):
            print(f"\ndev.py: unknown verb {argv[0]!r}; use one of: {', '.join(VERBS)}.")
        return 2 if argv and argv[0] not in ("-h", "--help", "help") else 0
    py = _setup()
    if argv[0] == "setup":
        return 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if argv[0] in _TAPEKIT_VERBS:
        env["TAPEKIT_COMMAND"] = "python3 dev.py"  # the tapekit command's hints name these verbs
    try:
        return subprocess.call(command(py, argv[0], argv[1:]), env=env)
    except KeyboardInterrupt:  # Ctrl+C ends `board` (and a long run) without a traceback
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
