"""docs/graph-reference.md is executable: every example is validated and must print what the page shows.

The page's examples run in a folder ``sd15/`` holding the tiny SD1.5 model, the page's first graph as
graph.pbtxt and three LoRA files under ``loras/``. "You write | You get" rows replace the options of that
graph; pbtxt + console pairs are written to the file the console validates; option-only pbtxt blocks
must be valid.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import pytest

from calculators.image_gen_calculator import ImageGenCalculator
from ovms_graph.cli import validate
from ovms_graph.registry import Registry
from tests.docs.conftest import DOCS, TINY

DOC = (DOCS / "graph-reference.md").read_text(encoding="utf-8")
BLOCK_RE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ROW_RE = re.compile(r"^\| `([^`]+)` \| (`.+`) \|$", re.MULTILINE)
LOCATION_RE = re.compile(r'^[^:]+:\d+(?::\d+)?: (?:node "[^"]+" \([^)]*\): )?')
LORAS = {"style": "lora_a", "detail": "lora_b", "outline": "lora_c"}

BLOCKS = BLOCK_RE.findall(DOC)
TEMPLATE: str = BLOCKS[0][1]
OPTIONS_BODY = '          models_path: "./"\n          device: "CPU"\n'


def pairs() -> list[tuple[str, str, list[str]]]:
    """``(file name, graph text, expected output lines)`` for each pbtxt block followed by a console."""
    found = []
    for (kind, text), (next_kind, next_text) in itertools.pairwise(BLOCKS):
        if kind == "pbtxt" and next_kind == "console":
            command, *output = next_text.splitlines()
            match = re.fullmatch(r"\$ ovms-graph validate (\S+)", command)
            assert match, command
            found.append((match.group(1), text, output))
    return found


def option_blocks() -> list[str]:
    return [text for kind, text in BLOCKS if kind == "pbtxt" and "node" not in text]


def rows() -> list[tuple[str, list[str]]]:
    return [(snippet, re.findall(r"`([^`]+)`", messages)) for snippet, messages in ROW_RE.findall(DOC)
            if "node_options." in messages]


def with_options(snippet: str) -> str:
    body = snippet if "models_path" in snippet else 'models_path: "./"\n' + snippet
    assert OPTIONS_BODY in TEMPLATE
    return TEMPLATE.replace(OPTIONS_BODY, "".join(f"          {line}\n" for line in body.splitlines()))


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The built-in calculators only: messages that list calculators must not depend on which plugins
    happen to be installed (the page shows a fresh install)."""
    registry = Registry()
    registry.register(ImageGenCalculator)
    return registry


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sd15/``: the tiny SD1.5 model, the page's graph and the LoRA files; the working directory."""
    folder = tmp_path / "sd15"
    folder.mkdir()
    for item in (TINY / "sd15").iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "loras").mkdir()
    for alias, tiny in LORAS.items():
        (folder / "loras" / f"{alias}.safetensors").symlink_to(TINY / "loras" / f"{tiny}.safetensors")
    (folder / "graph.pbtxt").write_text(TEMPLATE, encoding="utf-8")
    monkeypatch.chdir(folder)
    return folder


def run_validate(name: str, registry: Registry, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = validate(Path(name), registry, sys.stdout)
    captured = capsys.readouterr()
    return status, captured.out.splitlines() + captured.err.splitlines()


def test_the_page_has_its_examples() -> None:
    assert len(pairs()) >= 6
    assert len(rows()) >= 40
    assert len(option_blocks()) >= 3


@pytest.mark.parametrize(("name", "text", "expected"), pairs(), ids=[p[0] for p in pairs()])
def test_console_examples_print_what_the_page_shows(name: str, text: str, expected: list[str], model_dir: Path,
                                                    registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    (model_dir / name).write_text(text, encoding="utf-8")
    status, output = run_validate(name, registry, capsys)
    assert output == expected
    assert status == (2 if "validation failed" in expected else 0)


@pytest.mark.parametrize(("snippet", "messages"), rows(), ids=[r[0][:60] for r in rows()])
def test_option_rows_report_exactly_the_documented_problems(snippet: str, messages: list[str], model_dir: Path,
                                                            registry: Registry,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (model_dir / "graph.pbtxt").write_text(with_options(snippet), encoding="utf-8")
    status, output = run_validate("graph.pbtxt", registry, capsys)
    assert status == 2
    assert output[-1] == "validation failed"
    assert [LOCATION_RE.sub("", line) for line in output[:-1]] == messages


@pytest.mark.parametrize("snippet", option_blocks())
def test_option_examples_are_valid(snippet: str, model_dir: Path, registry: Registry,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    (model_dir / "graph.pbtxt").write_text(with_options(snippet), encoding="utf-8")
    status, output = run_validate("graph.pbtxt", registry, capsys)
    assert output == ['graph.pbtxt: graph "sd15" is valid: 1 node(s) (ImageGenCalculator)']
    assert status == 0
