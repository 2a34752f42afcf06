#!/usr/bin/env python3
"""Set up tapekit in ./.venv (once) and run the main recipe or the test suite.

    python3 dev.py demo    # train the main recipe, write logs/ (what the README's quick start runs)
    python3 dev.py test    # run the whole test suite (what CI runs)

Both are idempotent: the virtual environment is created and `pip install -e .[test]` is run
only when it is missing or pyproject.toml changed, so a second run starts at once. Extra arguments
are passed on (to the recipe or to pytest), e.g. `python3 dev.py test tests/test_transforms.py -x`.
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
MAIN_RECIPE = ROOT / "recipes" / "06_mlp_classifier.py"
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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__.strip())
        return 2
    py = _setup()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    if argv[0] == "setup":
        return 0
    if argv[0] == "demo":
        main_recipe = MAIN_RECIPE
        if not main_recipe.exists():
            main_recipe = ROOT / "recipes" / "01_gradients.py"
        cmd = [str(py), str(main_recipe), *argv[1:]]
    else:
        cmd = [str(py), "-m", "pytest", *argv[1:]]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
