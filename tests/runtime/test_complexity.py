"""No function above radon grade B (cyclomatic complexity over 10) in the listed paths (issue 13):
``radon cc -s -n C ovms_graph calculators`` prints nothing.

Table-driven: a path is a module or a package folder, relative to the repository root; widen the
table as more of the house is brought under the limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from radon.complexity import cc_rank, cc_visit
from radon.visitors import Class, Function

ROOT = Path(__file__).resolve().parents[2]
#: The highest grade allowed (radon: A 1-5, B 6-10, C 11-20, D 21-30, E 31-40, F 41+).
WORST = "B"
PATHS = [
    "ovms_graph",
    "calculators",
]


def _functions(blocks: list[Function | Class]) -> Iterator[Function]:
    """Every function, method (radon lists them beside their class) and nested function."""
    for block in blocks:
        if isinstance(block, Function):
            yield block
            yield from _functions(list(block.closures))


def too_complex(source: str) -> list[str]:
    """``name grade (complexity)`` of every function in ``source`` graded worse than :data:`WORST`."""
    return [f"{fn.fullname}:{fn.lineno} {cc_rank(fn.complexity)} ({fn.complexity})"
            for fn in _functions(cc_visit(source)) if cc_rank(fn.complexity) > WORST]


def _files(path: str) -> list[Path]:
    target = ROOT / path
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("path", PATHS)
def test_no_function_is_graded_worse_than_b(path: str) -> None:
    files = _files(path)
    assert files, f"{path} holds no Python file: fix the table"
    found = [f"{file.relative_to(ROOT)}: {name}" for file in files
             for name in too_complex(file.read_text(encoding="utf-8"))]
    assert found == []


def test_the_check_sees_functions_methods_and_nested_functions() -> None:
    def branches(indent: str, count: int) -> str:
        return "".join(f"{indent}if x == {i}:\n{indent}    return {i}\n" for i in range(count))

    source = (f"def plain(x):\n{branches('    ', 10)}"
              f"def grade_b(x):\n{branches('    ', 9)}"
              f"class K:\n    def method(self, x):\n{branches('        ', 10)}"
              f"def outer():\n    def nested(x):\n{branches('        ', 10)}    return nested\n")
    assert sorted(too_complex(source)) == ["K.method:42 C (11)", "nested:64 C (11)", "plain:1 C (11)"]
