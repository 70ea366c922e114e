"""docs/cli.md documents exactly the flags ovms_graph.cli.build_parser() accepts, per subcommand."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from calculators.image_gen.option_table import DIRECT_FLAG_ROWS, OptionRow
from ovms_graph.cli import build_parser, main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
SECTION_RE = re.compile(r"^## `ovms-graph (\w+)`\s*$", re.MULTILINE)
CODE_RE = re.compile(r"`([^`]+)`")
FLAG_RE = re.compile(r"^--[A-Za-z0-9_-]+$")
POSITIONAL_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def documented(doc: str) -> dict[str, set[str]]:
    """Per subcommand, the flags and POSITIONALS named in the first cell of its tables' rows."""
    found: dict[str, set[str]] = {}
    matches = list(SECTION_RE.finditer(doc))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc)
        names: set[str] = set()
        for line in doc[match.end():end].splitlines():
            if not line.startswith("|") or line.startswith("|---"):
                continue
            first = line.split("|")[1]
            names.update(s for s in CODE_RE.findall(first) if FLAG_RE.match(s) or POSITIONAL_RE.match(s))
        found[match.group(1)] = names
    return found


def accepted(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Per subcommand, every option string (help excluded) and every positional, as PATH-style names."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    result: dict[str, set[str]] = {}
    for name, sub in subparsers.choices.items():
        names: set[str] = set()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                names.update(action.option_strings)
            else:
                names.add(str(action.metavar or action.dest).upper())
        result[name] = names
    return result


PARSER = accepted(build_parser())
DOCUMENTED = documented(DOC.read_text(encoding="utf-8"))


def test_every_subcommand_has_a_section() -> None:
    assert sorted(DOCUMENTED) == sorted(PARSER)


@pytest.mark.parametrize("command", sorted(PARSER))
def test_every_accepted_flag_is_documented(command: str) -> None:
    assert sorted(PARSER[command] - DOCUMENTED.get(command, set())) == []


@pytest.mark.parametrize("command", sorted(PARSER))
def test_every_documented_flag_is_accepted(command: str) -> None:
    assert sorted(DOCUMENTED.get(command, set()) - PARSER[command]) == []


def test_the_section_parser_sees_rows() -> None:
    # Guards the guard: a reformatted table must not make the comparison vacuous.
    assert {"--rest_port", "--config_path", "--weight-format", "--weight_format"} <= DOCUMENTED["serve"]
    assert {"PATH", "--config_path"} <= DOCUMENTED["validate"]


def command_examples(doc: str) -> list[tuple[str, str | None]]:
    """``(command line, expected error line or None)`` for every ovms-graph command in a code block.

    Continuation lines are joined; in console blocks a following ``... error: ...`` output line is
    the error the command must produce.
    """
    examples: list[tuple[str, str | None]] = []
    for kind, block in re.findall(r"^```(sh|console)\n(.*?)^```", doc, re.MULTILINE | re.DOTALL):
        lines = block.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if kind == "console" and not line.startswith("$ "):
                continue
            command = line.removeprefix("$ ").strip()
            if not command.startswith("ovms-graph "):
                continue
            command = command.split("#")[0].strip()
            error = None
            for later in lines[i + 1:]:
                if later.startswith("$ "):
                    break
                if " error: " in later:
                    error = later
                    break
            examples.append((command, error))
    return examples


EXAMPLES = command_examples(DOC.read_text(encoding="utf-8"))


def test_examples_are_found() -> None:
    assert len(EXAMPLES) >= 8
    assert any(error for _, error in EXAMPLES)


@pytest.mark.parametrize(("command", "error"), EXAMPLES)
def test_documented_command_lines_parse(command: str, error: str | None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(command)[1:]
    if error is None:
        build_parser().parse_args(argv)
        return
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert error in capsys.readouterr().err


def refused_rows(doc: str) -> list[tuple[str, str]]:
    """The "Command line | Message" table: commands main() refuses, with their message."""
    rows = re.findall(r"^\| `(ovms-graph [^`]*)` \| `([^`]*)` \|$", doc, re.MULTILINE)
    return [(command, message) for command, message in rows]


REFUSED = refused_rows(DOC.read_text(encoding="utf-8"))


def test_refused_rows_are_found() -> None:
    assert len(REFUSED) == 3


@pytest.mark.parametrize(("command", "message"), REFUSED)
def test_refused_combinations_exit_2_with_the_documented_message(
        command: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(shlex.split(command)[1:])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message


def documented_defaults(doc: str) -> dict[tuple[str, str], str]:
    """``(subcommand, flag) -> Default cell`` for every table row with a Default column."""
    found: dict[tuple[str, str], str] = {}
    matches = list(SECTION_RE.finditer(doc))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc)
        for line in doc[match.end():end].splitlines():
            cells = [c.strip() for c in line.split("|")[1:-1]]
            if len(cells) != 4 or line.startswith("|---"):
                continue
            for flag in CODE_RE.findall(cells[0]):
                if FLAG_RE.match(flag):
                    found[(match.group(1), flag)] = cells[2]
    return found


def parser_defaults(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """``(subcommand, flag, default as a user writes it)`` for every flag with a real default."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: list[tuple[str, str, str]] = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS):
                continue
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            found.extend((name, flag, shown) for flag in action.option_strings)
    return found


DEFAULTS = documented_defaults(DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("command", "flag", "default"), parser_defaults(build_parser()))
def test_documented_defaults_match_the_parser(command: str, flag: str, default: str) -> None:
    assert DEFAULTS[(command, flag)] == f"`{default}`"


@pytest.mark.parametrize("command", ["serve", "pull"])
@pytest.mark.parametrize("row", [row for row in DIRECT_FLAG_ROWS if row.default is not None], ids=lambda row: row.field)
def test_documented_option_flag_defaults_are_the_protos(command: str, row: OptionRow) -> None:
    """A ``--<field>`` flag of the option table leaves the field unset, so its documented default is the
    proto's (the parser's default is None: the test above cannot see it)."""
    assert DEFAULTS[(command, f"--{row.field}")] == f"`{row.default}`"
