"""Lines of code per function, docstrings excluded: the count behind the 80-line project rule.

A function's length is the number of source lines of its body after the docstring, to its last
line: the signature and the docstring are left out, blank and comment lines inside the body
count. This is the measure issue 15 quoted (``write_catalog`` 183, ``load`` 152, ``monthly``
113 on 2026-12-04). Nested functions count towards the function that holds them and are also
listed on their own; class bodies are not functions (their methods are listed).

Usage::

    python tools/function_lengths.py [PATH ...] [--over N]

Prints ``lines  path:line  qualified.name`` for every function over ``N`` lines (default 80),
longest first, and exits 1 when there is any. With ``--over 0`` it lists every function.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

LIMIT = 80


def _body_start(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """First line of the body after the docstring (or of the first statement)."""
    first = node.body[0]
    value = getattr(first, "value", None)
    if isinstance(first, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
        return first.end_lineno + 1 if len(node.body) > 1 else first.end_lineno
    return first.lineno


def functions(path: Path) -> Iterator[tuple[int, int, str]]:
    """``(lines, first line, qualified name)`` of every function in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[int, int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield child.end_lineno - _body_start(child) + 1, child.lineno, name
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def over(paths: list[Path], limit: int = LIMIT) -> list[tuple[int, str, str]]:
    """Every function over ``limit`` lines of code below ``paths``, longest first."""
    found = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            for lines, lineno, name in functions(path):
                if lines > limit:
                    found.append((lines, f"{path}:{lineno}", name))
    return sorted(found, key=lambda row: (-row[0], row[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("glacierxr")])
    parser.add_argument("--over", type=int, default=LIMIT, help="list functions longer than this")
    args = parser.parse_args(argv)
    rows = over(args.paths, args.over)
    for lines, where, name in rows:
        print(f"{lines:5d}  {where}  {name}")
    print(f"{len(rows)} function(s) over {args.over} lines of code", file=sys.stderr)
    return 1 if rows and args.over else 0


if __name__ == "__main__":
    sys.exit(main())
