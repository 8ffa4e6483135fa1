"""The project rule: no function in glacierxr/ over 80 lines (tools/function_lengths.py counts)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("function_lengths", ROOT / "tools" / "function_lengths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_function_lengths__counts_the_body_after_the_docstring(tmp_path):
    source = textwrap.dedent(
        '''
        def f(
            a,
            b,
        ):
            """Doc.

            More doc.
            """
            x = 1

            # a comment
            return x


        class C:
            def m(self):
                def inner():
                    return 1
                return inner()

            def only_doc(self):
                """Only a docstring."""
        '''
    )
    path = tmp_path / "sample.py"
    path.write_text(source)
    counts = {name: lines for lines, _, name in _tool().functions(path)}
    # f: "x = 1", blank, comment, return -> 4 lines; the signature and docstring do not count
    assert counts == {"f": 4, "C.m": 3, "C.m.inner": 1, "C.only_doc": 1}


def test_no_function_in_the_package_is_over_80_lines():
    tool = _tool()
    over = tool.over([ROOT / "glacierxr"], tool.LIMIT)
    assert not over, "functions over 80 lines: " + ", ".join(f"{name} ({lines}, {where})" for lines, where, name in over)
