"""The ``tapekit`` console command: list and run the recipes, summarise logs, start TensorBoard.

    tapekit recipes                   list the recipes with their one-line descriptions
    tapekit run NAME [OPTIONS...]     run a recipe; NAME is 01, 01_gradients or gradients
    tapekit inspect [LOGDIR]          summarise the event files under LOGDIR (default: logs)
    tapekit board [LOGDIR] [--port]   start TensorBoard on LOGDIR (default: logs)

Recipes are the ``NN_topic.py`` scripts in the ``recipes/`` folder of the tapekit checkout (next to
the package; set ``TAPEKIT_RECIPES`` to use another folder). Listing them reads their docstrings
without importing TensorFlow, so it is instant.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Recipe", "find_recipe", "list_recipes", "main", "recipes_dir"]


class _CommandError(Exception):
    """A user error the command reports in one line (exit status 2)."""


_RECIPE_FILE = re.compile(r"^(\d+)_(\w+)\.py$")
_DEFAULT_LOGDIR = "logs"


def _prog() -> str:
    """How the user runs this command, for the hints it prints: ``tapekit``, or the quick start's
    ``python3 dev.py`` (which sets ``TAPEKIT_COMMAND``), so every printed command runs as shown."""
    return os.environ.get("TAPEKIT_COMMAND", "tapekit")


@dataclass(frozen=True)
class Recipe:
    """One recipe script: ``recipes/<number>_<topic>.py``."""

    number: str
    topic: str
    path: Path
    description: str

    @property
    def name(self) -> str:
        """The file stem, e.g. ``01_gradients`` (also the default log directory's name)."""
        return f"{self.number}_{self.topic}"


def recipes_dir() -> Path:
    """The folder holding the recipes.

    Returns:
        ``$TAPEKIT_RECIPES`` if set, else the ``recipes/`` folder next to the ``tapekit`` package
        (present in a source checkout installed with ``pip install -e .``).

    Example:
        >>> recipes_dir().name
        'recipes'
    """
    override = os.environ.get("TAPEKIT_RECIPES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "recipes"


def _description(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (SyntaxError, UnicodeDecodeError, OSError):
        doc = None
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else "(no description)"


def list_recipes(directory: str | os.PathLike | None = None) -> list[Recipe]:
    """Find the recipes (``NN_topic.py`` files) in ``directory``, sorted by number.

    Args:
        directory: Where to look; defaults to ``recipes_dir()``.

    Returns:
        The recipes, each with the first line of its module docstring as description.

    Raises:
        FileNotFoundError: If the folder does not exist (e.g. tapekit was installed from a wheel,
            which does not ship the recipes).

    Example:
        >>> [r.name for r in list_recipes()][:1]
        ['01_gradients']
    """
    folder = Path(directory) if directory is not None else recipes_dir()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No recipes folder at {str(folder)!r}. The recipes live in the tapekit source "
            f"checkout: clone it and `pip install -e .`, or point TAPEKIT_RECIPES at its "
            f"recipes/ folder."
        )
    found = []
    for path in folder.iterdir():
        match = _RECIPE_FILE.match(path.name)
        if match and path.is_file():
            found.append(Recipe(match[1], match[2], path, _description(path)))
    return sorted(found, key=lambda r: (int(r.number), r.topic))


def find_recipe(name: str, recipes: list[Recipe]) -> Recipe:
    """Pick a recipe by number (``01`` or ``1``), file stem (``01_gradients``) or topic.

    A unique prefix of a topic also works (``grad`` for ``gradients``), and ``.py`` is ignored.

    Args:
        name: What the user typed.
        recipes: The candidates, from ``list_recipes()``.

    Returns:
        The matching recipe.

    Raises:
        ValueError: If no recipe, or more than one, matches; the message lists the names.

    Example:
        >>> find_recipe("1", list_recipes()).name
        '01_gradients'
    """
    key = name.strip().removesuffix(".py").lower()
    exact = [
        r
        for r in recipes
        if key in (r.name.lower(), r.topic.lower()) or (key.isdigit() and int(key) == int(r.number))
    ]
    matches = exact or [r for r in recipes if r.topic.lower().startswith(key) and key]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(r.name for r in recipes) or "(none)"
    if matches:
        raise ValueError(
            f"Recipe name {name!r} is ambiguous: it matches "
            f"{', '.join(r.name for r in matches)}. Use the number or the full name."
        )
    raise ValueError(
        f"Unknown recipe {name!r}. Available recipes: {names}. Run `{_prog()} recipes` for "
        f"descriptions."
    )


def _recipes() -> list[Recipe]:
    try:
        return list_recipes()
    except FileNotFoundError as exc:
        raise _CommandError(str(exc)) from None


def _cmd_recipes(args: argparse.Namespace) -> int:
    recipes = _recipes()
    if not recipes:
        print(f"No recipes found in {recipes_dir()}.")
        return 1
    width = max(len(r.name) for r in recipes) + 2
    for r in recipes:
        print(f"{r.name:<{width}}{r.description}")
    print(
        f"\nRun one with `{_prog()} run NAME [options]` (NAME e.g. {recipes[0].number}); "
        f"`{_prog()} run NAME --help` lists its options."
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        recipe = find_recipe(args.name, _recipes())
    except ValueError as exc:
        raise _CommandError(str(exc)) from None
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return subprocess.call([sys.executable, str(recipe.path), *args.options], env=env)
    except KeyboardInterrupt:
        return 130


def _missing_logdir(logdir: str) -> str:
    hint = (
        f"Run a recipe first, e.g. `{_prog()} run 01` (writes logs/01_gradients), or pass the "
        "directory your script logs to."
    )
    return f"The log directory {logdir!r} does not exist. {hint}"


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .quiet import quiet_tensorflow

    quiet_tensorflow()  # the reader reads event files through TensorBoard, which loads TF
    from .board.reader import format_report, summarize

    logdir = args.logdir
    if not Path(logdir).exists():
        raise _CommandError(_missing_logdir(logdir))
    if not Path(logdir).is_dir():
        raise _CommandError(f"{logdir!r} is a file; pass the directory that holds the logs.")
    runs = summarize(logdir, vanishing=args.vanishing, exploding=args.exploding)
    if not runs:
        print(
            f"No TensorBoard event files (events.out.tfevents.*) under {logdir!r}. Write some with "
            f"tf.summary or a recipe (`{_prog()} run 01`), or pass another directory.",
            file=sys.stderr,
        )
        return 1
    print(format_report(runs))
    return 0


def _cmd_board(args: argparse.Namespace) -> int:
    logdir = args.logdir
    if not Path(logdir).is_dir():
        raise _CommandError(_missing_logdir(logdir))
    from .quiet import quiet_tensorflow

    quiet_tensorflow()  # TensorBoard loads TF when it is installed
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(logdir=str(Path(logdir).resolve()), host="127.0.0.1", port=args.port)
    try:
        url = board.launch()
    except program.TensorBoardServerException as exc:
        raise _CommandError(
            f"TensorBoard could not start: {exc.msg}. Try another --port."
        ) from None
    print(f"TensorBoard for {logdir} at {url} (press Ctrl+C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Run tapekit's recipes and look into TensorBoard logs from the terminal.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("recipes", help="list the recipes with their one-line descriptions")
    p.set_defaults(func=_cmd_recipes)

    p = sub.add_parser(
        "run",
        help="run a recipe: tapekit run NAME [recipe options]",
        description="Run a recipe with this Python; options after NAME go to the recipe.",
    )
    p.add_argument("name", help="recipe number (01), file stem (01_gradients) or topic (gradients)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options passed to the recipe")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "inspect",
        help="summarise the event files under LOGDIR",
        description="Per run: steps, last and best of each scalar, gradient-norm trends and "
        "warnings for vanishing, exploding or non-finite gradients.",
    )
    p.add_argument("logdir", nargs="?", default=_DEFAULT_LOGDIR, help="default: logs")
    p.add_argument(
        "--vanishing",
        type=float,
        default=1e-7,
        metavar="NORM",
        help="warn when a gradient norm ends at or below this (default 1e-7)",
    )
    p.add_argument(
        "--exploding",
        type=float,
        default=1e3,
        metavar="FACTOR",
        help="warn when a gradient norm grows by this factor (default 1000)",
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("board", help="start TensorBoard on LOGDIR and print its address")
    p.add_argument("logdir", nargs="?", default=_DEFAULT_LOGDIR, help="default: logs")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port on 127.0.0.1 (default: 6006 or the next free one; 0 = any free)",
    )
    p.set_defaults(func=_cmd_board)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tapekit`` command.

    Args:
        argv: The arguments after ``tapekit``; ``None`` means ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when there is nothing to show, 2 for a usage error
        (unknown recipe, missing folder or log directory), or the recipe's own status for ``run``.

    Example:
        >>> main(["run", "no_such_recipe"])
        2
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except _CommandError as exc:
        print(f"{_prog()} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
