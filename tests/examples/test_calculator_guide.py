"""docs/calculator-guide.md is executable and kept in sync with the code it describes.

- Python blocks run in order, in one namespace, in a scratch folder; their asserts are the checks.
- A block whose first line is a path comment (``# examples/...`` or ``// examples/...``) is an excerpt:
  the rest of it must appear verbatim in that file.
- Console blocks: each ``$ .venv/bin/ovms-graph ...`` command runs from the repository root and must
  print what the page shows; the plugin install command must match how the plugin is installed.
- Every public hook and attribute of the calculator contract (and of the CLI extension contract) is named
  on the page.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ovms_graph.calculator import (
    Calculator,
    CalculatorContext,
    Closable,
    ConcurrencyLimited,
    LoadContext,
    MemoryEstimated,
    RequestContext,
)
from ovms_graph.commands import CliExtension
from tests.examples.conftest import REPO

GUIDE = REPO / "docs" / "calculator-guide.md"
TEXT = GUIDE.read_text(encoding="utf-8")
BLOCK_RE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXCERPT_RE = re.compile(r"^(?:#|//) (examples/\S+)$")
BLOCKS = [(kind, body) for kind, body in BLOCK_RE.findall(TEXT)]
EXCERPTS = [(m.group(1), body.split("\n", 1)[1]) for _, body in BLOCKS
            if (m := EXCERPT_RE.match(body.split("\n", 1)[0]))]
PROGRAM = [body for kind, body in BLOCKS if kind == "python" and not EXCERPT_RE.match(body.split("\n", 1)[0])]
CONSOLE = [body for kind, body in BLOCKS if kind == "console"]
PLUGIN_INSTALL = ".venv/bin/pip install -q -e examples/prompt_guard_plugin"


def test_the_page_has_what_these_tests_expect() -> None:
    assert len(PROGRAM) >= 4
    assert len(EXCERPTS) >= 6
    assert len(CONSOLE) == 1


def test_the_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "calculator_guide"}
    for index, code in enumerate(PROGRAM):
        exec(compile(code, f"{GUIDE.name}, python block {index + 1}", "exec"), namespace)


@pytest.mark.parametrize(("path", "excerpt"), EXCERPTS, ids=[f"{i}-{p}" for i, (p, _) in enumerate(EXCERPTS)])
def test_an_excerpt_is_verbatim_in_its_file(path: str, excerpt: str) -> None:
    source = (REPO / path).read_text(encoding="utf-8")
    assert excerpt in source, f"the guide's excerpt of {path} is not in the file any more:\n{excerpt}"


def test_the_console_session_prints_what_the_page_shows() -> None:
    (session,) = CONSOLE
    lines = session.splitlines()
    commands = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    assert commands
    for start, end in zip(commands, [*commands[1:], len(lines)], strict=True):
        command, expected = lines[start][2:], lines[start + 1:end]
        if command == PLUGIN_INSTALL:
            installed = metadata.distribution("ovms-graph-prompt-guard")
            assert installed.entry_points.select(group="ovms_graph.calculators", name="PromptGuardCalculator")
            assert expected == []
            continue
        argv = shlex.split(command)
        assert argv[0] == ".venv/bin/ovms-graph", f"the page runs a command this test does not know: {command}"
        result = subprocess.run([str(Path(sys.executable).parent / "ovms-graph"), *argv[1:]], cwd=REPO,
                                capture_output=True, text=True, timeout=120, check=False)
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.splitlines() == expected


def _instance_members() -> dict[str, object]:
    request = RequestContext()
    return {
        "CalculatorContext": CalculatorContext(node=None, options=None, side_packets={},  # type: ignore[arg-type]
                                               request=request, emit=lambda tag, value: None),
        "RequestContext": request,
        "LoadContext": LoadContext("graph", Path("graph.pbtxt")),
    }


@pytest.mark.parametrize("owner", [Calculator, CalculatorContext, RequestContext, LoadContext, Closable,
                                   ConcurrencyLimited, MemoryEstimated, CliExtension],
                         ids=lambda owner: owner.__name__)
def test_every_public_member_of_the_contract_is_named(owner: type) -> None:
    members = set(vars(owner)) | set(vars(_instance_members().get(owner.__name__, owner)))
    internal = {"registry_name", "aliases", "base_routable"}  # runtime bookkeeping, not for calculators
    missing = sorted(name for name in members - internal
                     if not name.startswith("_") and f"`{name}" not in TEXT and f".{name}" not in TEXT)
    assert missing == []


def test_relative_links_point_at_files() -> None:
    for target in re.findall(r"\]\((\.\.?/[^)#]+)", TEXT):
        assert (GUIDE.parent / target).exists(), target
