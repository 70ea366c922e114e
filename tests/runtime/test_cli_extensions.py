"""The ovms_graph.cli_commands contract: installed extensions add subcommands and serve graph sources;
a broken one is reported and left out. Entry points are stood in for, so no package is installed."""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path

import pytest

import ovms_graph.commands
import ovms_graph.serve
from ovms_graph.cli import main
from ovms_graph.commands import ENTRY_POINT_GROUP, CliExtension, GraphSource, Subparsers, load_extensions
from ovms_graph.config import GraphEntry
from ovms_graph.errors import CommandError
from ovms_graph.settings import ServerOptions


def _echo(ns: argparse.Namespace) -> int:
    print(f"echo {ns.word}")
    return 7


class Echo(CliExtension):
    """``echo WORD`` and a ``serve --echo_graph PATH`` graph source."""

    source_flag = "--echo_graph"

    def add_commands(self, subparsers: Subparsers) -> None:
        echo = subparsers.add_parser("echo", help="print a word")
        echo.add_argument("word")
        echo.set_defaults(run=_echo)

    def add_serve_flags(self, serve: argparse.ArgumentParser) -> None:
        serve.add_argument("--echo_graph", type=Path)

    def serve_source(self, ns: argparse.Namespace, parser: argparse.ArgumentParser) -> GraphSource:
        def source() -> list[GraphEntry]:
            raise CommandError(f"{ns.echo_graph}: no such graph")
        return source


class Quiet(CliExtension):
    """Adds nothing."""


def _entry_points(monkeypatch: pytest.MonkeyPatch, *values: tuple[str, str]) -> None:
    points = [metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in values]
    monkeypatch.setattr(ovms_graph.commands.metadata, "entry_points",
                        lambda group: [p for p in points if p.group == group])


def test_extensions_load_in_name_order_and_a_broken_one_is_reported(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _entry_points(monkeypatch, ("zz", f"{__name__}:Echo"), ("broken", "no_such_module:Commands"),
                  ("aa", f"{__name__}:Quiet"))
    assert [type(e) for e in load_extensions()] == [Quiet, Echo]
    assert capsys.readouterr().err == ("ovms-graph: warning: CLI extension broken (no_such_module:Commands) cannot "
                                       "be loaded: No module named 'no_such_module'\n")


def test_an_extension_subcommand_runs_with_log_level(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _entry_points(monkeypatch, ("echo", f"{__name__}:Echo"))
    assert main(["echo", "hi", "--log_level", "ERROR"]) == 7
    assert capsys.readouterr().out == "echo hi\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["serve"], "serve needs --config_path or --echo_graph"),
    (["serve", "--config_path", "c.json", "--echo_graph", "g"],
     "--config_path and --echo_graph cannot be used together"),
])
def test_serve_names_the_extension_source_flag(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               argv: list[str], message: str) -> None:
    _entry_points(monkeypatch, ("echo", f"{__name__}:Echo"))
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failing_graph_source_exits_with_its_status(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _entry_points(monkeypatch, ("echo", f"{__name__}:Echo"))
    seen: list[ServerOptions] = []
    real = ovms_graph.serve.run_serve

    def run_serve(config_path: Path | None, options: ServerOptions, source: GraphSource | None = None) -> int:
        seen.append(options)
        return real(config_path, options, source)

    monkeypatch.setattr(ovms_graph.serve, "run_serve", run_serve)
    assert main(["serve", "--echo_graph", "g.pbtxt", "--rest_port", "0"]) == 1
    assert capsys.readouterr().err == "ovms-graph serve: error: g.pbtxt: no such graph\n"
    assert [o.rest_port for o in seen] == [0]


def test_without_extensions_there_is_no_pull(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _entry_points(monkeypatch)
    with pytest.raises(SystemExit):
        main(["pull", "--source_model", "a/b"])
    assert "invalid choice: 'pull' (choose from 'serve', 'validate')" in capsys.readouterr().err
