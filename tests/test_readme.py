"""README.md runs as written: every Python block prints what it shows, every command is found.

The Python blocks are extracted from README.md at test time (no copies, so blocks added to any
section are picked up) and run top to bottom in one fresh interpreter, in an empty working
directory, by ``tests/_readme_runner.py``. Shell blocks may only use commands a newcomer has
after the quick start: ``python3 dev.py VERB`` with a verb ``dev.py`` knows, naming a recipe or
a file that exists.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNER = Path(__file__).with_name("_readme_runner.py")
DOCS = [README, ROOT / "recipes" / "README.md"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the class is created
    spec.loader.exec_module(module)
    return module


runner = _load("_readme_runner", RUNNER)
dev = _load("_dev", ROOT / "dev.py")


def _run(markdown: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a reader has
    return subprocess.run(
        [sys.executable, str(RUNNER), str(markdown)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs_and_prints_what_it_shows(tmp_path):
    blocks = runner.python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5  # the pitch, tapes, hessians, training, explain at least
    proc = _run(README, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"ran {len(blocks)} python blocks of README.md" in proc.stdout
    assert "6.0\n24.0 10.0\n6.0\n" in proc.stdout  # the pitch, exactly as its comments show
    # The first block imports tapekit.quiet: TensorFlow's C++ start-up lines are hidden.
    for chatter in ("cuda", "oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert chatter not in proc.stderr, proc.stderr


def test_a_print_that_differs_from_its_comment_fails_naming_the_line(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n```python\nx = 2\nprint(x + 1)  # 3\n```\n\n"
        "```python no-run\nraise SystemExit('skipped')\n```\n\n"
        "```python\nprint(x * 2)  # x * 2 = 5\n```\n",
        encoding="utf-8",
    )
    proc = _run(doc, tmp_path)
    assert proc.returncode == 1
    assert "doc.md:13: the comment shows 'x * 2 = 5', but the line printed '4'" in proc.stderr
    assert proc.stdout.startswith("3\n4\n")  # the no-run block was skipped, x carried over


def test_a_failing_block_names_its_line(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```python\nimport math\n\nmath.sqrt(y)\n```\n", encoding="utf-8")
    proc = _run(doc, tmp_path)
    assert proc.returncode == 1
    assert 'doc.md, python block at line 2", line 4' in proc.stderr
    assert "NameError: name 'y' is not defined" in proc.stderr


@pytest.mark.parametrize(
    ("comment", "printed", "ok"),
    [
        ("6.0", "6.0", True),
        ("dy/dx = 2x = 6.0", "6.0", True),
        ("24.0 10.0  (∂f/∂x, ∂f/∂y)", "24.0 10.0", True),
        ("(8, 2, 3): (batch,) + out + in", "(8, 2, 3)", True),
        ("{'x': 24.0, 'y': 10.0}, the same as tapekit.grad", "{'x': 24.0, 'y': 10.0}", True),
        ("16.0", "6.0", False),
        ("6.0 or so", "6", False),
        ("tf.Tensor(6.0)", "6.0", False),
    ],
)
def test_what_a_comment_shows(comment, printed, ok):
    assert runner.shows(comment, printed) is ok


def _commands(path: Path) -> list[tuple[int, list[str]]]:
    out = []
    for block in runner.blocks(path.read_text(encoding="utf-8")):
        if block.lang not in ("bash", "sh", "shell", "console"):
            continue
        for offset, line in enumerate(block.code.splitlines()):
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append((block.line + offset, shlex.split(line)))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shell_command_is_a_dev_py_verb_that_exists(doc):
    from tapekit.cli import find_recipe, list_recipes

    recipes = list_recipes(ROOT / "recipes")
    commands = _commands(doc)
    assert commands
    for line, argv in commands:
        where = f"{doc.name}:{line}: {' '.join(argv)}"
        if argv[0] == "export":  # setting TF_CONFIG on a real host
            continue
        assert argv[:2] == ["python3", "dev.py"], f"{where}: not a `python3 dev.py` verb"
        verb, rest = argv[2], argv[3:]
        assert verb in dev.VERBS, f"{where}: dev.py has no verb {verb!r}"
        if verb == "run":
            target = rest[0]
            if target.endswith(".py"):
                assert (ROOT / target).is_file(), f"{where}: no such script"
            else:
                find_recipe(target, recipes)  # raises, naming the recipes, if there is none


def test_recipes_print_runnable_hints():
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        from _common import logs_hint
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    hint = logs_hint("logs/01_gradients")
    assert hint.startswith("Logs: ")
    commands = [shlex.split(c) for c in hint.removeprefix("Logs: ").split("   or   ")]
    assert commands == [
        ["python3", "dev.py", "inspect", "logs/01_gradients"],
        ["python3", "dev.py", "board", "logs/01_gradients"],
    ]
    for path in sorted((ROOT / "recipes").glob("[0-9][0-9]_*.py")):
        text = path.read_text(encoding="utf-8")
        for stale in ("tensorboard --logdir", "python recipes/", "tapekit._quiet", "noqa: E402"):
            assert stale not in text, f"{path.name} still has `{stale}`"
