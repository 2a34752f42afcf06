"""Run every ```python block of a Markdown file, top to bottom in one Python session.

    python tests/_readme_runner.py README.md

This is what a reader does who pastes the README's snippets, in order, into one interpreter (so a
later block may use what an earlier one imported or defined). Two rules make the output checkable:

* ``print(...)  # text``: a ``print`` statement with a trailing comment must print one line, and
  the comment must show it: the comment equals the printed line, starts with it (followed by a
  space, comma, colon or semicolon) or ends with it (after a space or ``=``). The comment of a
  print with multi-line output (``print(e)  # every node ...``) describes it and is not compared.
* A block fenced as ```` ```python no-run ```` is illustration only (it needs a cluster, say) and
  is skipped; use it sparingly.

A failure prints ``README.md:LINE`` (the Markdown line of the failing statement) and exits 1.
"""

from __future__ import annotations

import ast
import contextlib
import io
import linecache
import re
import sys
import tokenize
import traceback
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the rest of the info string, first code line, code."""

    lang: str
    info: str
    line: int
    code: str


def blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown`` (``line`` is the 1-based line of its first code line)."""
    found, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, i = i + 1, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        found.append(Block(m[1], m[2].strip(), start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return found


def python_blocks(markdown: str) -> list[Block]:
    """The blocks to run: ```python without ``no-run``."""
    return [b for b in blocks(markdown) if b.lang == "python" and "no-run" not in b.info.split()]


def _comments(code: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string[1:].strip()
    return out


def _is_print(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == "print"
    )


def shows(comment: str, printed: str) -> bool:
    """Whether a trailing ``comment`` shows the one-line ``printed`` output (rules above)."""
    if comment == printed:
        return True
    if comment.startswith(printed) and comment[len(printed)] in " ,:;":
        return True
    return comment.endswith(printed) and comment[-len(printed) - 1] in " ="


def run_block(block: Block, namespace: dict, filename: str) -> None:
    """Run ``block`` in ``namespace``; raise AssertionError where a print differs from its
    comment (the message names the Markdown line)."""
    # The block's source is registered under its own name, padded so line numbers are the
    # Markdown's: tracebacks show the README line, and inspect (AutoGraph) finds the source.
    filename = f"{filename}, python block at line {block.line}"
    lines = ["\n"] * (block.line - 1) + block.code.splitlines(keepends=True)
    linecache.cache[filename] = (len(block.code), None, lines, filename)
    tree = ast.parse(block.code, filename)
    comments = _comments(block.code)
    for stmt in tree.body:
        where = f"{filename.split(',')[0]}:{block.line + stmt.lineno - 1}"
        comment = comments.get(stmt.end_lineno) if _is_print(stmt) else None
        module = ast.Module([stmt], type_ignores=[])
        ast.increment_lineno(module, block.line - 1)  # tracebacks show the Markdown line
        code = compile(module, filename, "exec")
        if comment is None:
            exec(code, namespace)
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(code, namespace)
        printed = buffer.getvalue()
        sys.stdout.write(printed)
        lines = printed.rstrip("\n").splitlines()
        if len(lines) == 1 and not shows(comment, lines[0].strip()):
            raise AssertionError(
                f"{where}: the comment shows {comment!r}, but the line printed {lines[0]!r}"
            )


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    namespace: dict = {"__name__": "__main__"}
    todo = python_blocks(path.read_text(encoding="utf-8"))
    for block in todo:
        try:
            run_block(block, namespace, path.name)
        except Exception:  # report the README line and stop, as the reader would
            traceback.print_exc()
            print(f"{path.name}: the block at line {block.line} failed", file=sys.stderr)
            return 1
    print(f"ran {len(todo)} python blocks of {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
