"""The Python blocks of a Markdown page, with the docs-test markers before them (see
``test_docs.py`` for what the markers mean). A plain module: ``tests/test_docs.py`` runs the
blocks and ``benchmarks/gapfill_docs.py`` times them, from the same extraction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.S | re.M)
_MARK = re.compile(r"<!--\s*docs-test:\s*(?P<mark>[\w-]+)\s*-->\s*$")
_SETUP = re.compile(r"<!--\s*docs-test-setup\s*\n(?P<code>.*?)-->", re.S)


@dataclass
class Block:
    line: int
    code: str
    mark: str | None  # "network", "stand-in", "setup" or None


def blocks(page: Path) -> list[Block]:
    """Python blocks and hidden setups of ``page`` in order, with the marker just before each."""
    text = page.read_text()
    found: list[Block] = []
    for match in _SETUP.finditer(text):
        found.append(Block(text.count("\n", 0, match.start()) + 1, match.group("code"), "setup"))
    for match in _FENCE.finditer(text):
        if match.group("lang") != "python":
            continue
        before = text[: match.start()].rstrip().splitlines()
        mark = _MARK.search(before[-1]) if before else None
        indent = match.group("indent")
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line
                         for line in match.group("body").splitlines())
        found.append(Block(text.count("\n", 0, match.start()) + 1, code, mark.group("mark") if mark else None))
    return sorted(found, key=lambda block: block.line)
