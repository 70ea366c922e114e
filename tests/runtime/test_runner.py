"""The one-node CalculatorRunner: build a node from a pbtxt snippet, feed packets by tag, read outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms_graph.errors import BadRequest, ConfigError
from ovms_graph.testing import CalculatorRunner, wrap_node
from tests.runtime import fakes

SPLIT = 'node { calculator: "Split" input_stream: "TEXT:in" output_stream: "WORD:words" }'


def test_runner_feeds_by_tag_and_returns_every_output_in_order() -> None:
    with CalculatorRunner(SPLIT, registry=fakes.registry()) as runner:
        assert runner.run({"TEXT": "a b c"}) == [("WORD", "a"), ("WORD", "b"), ("WORD", "c")]
        assert runner.run({"TEXT": "again"}) == [("WORD", "again")]


def test_runner_builds_resources_once_like_the_server(tmp_path: Path) -> None:
    fakes.Resourceful.loads = 0
    node = ('node { name: "r" calculator: "Resourceful" input_stream: "TEXT:in" '
            'input_side_packet: "RESOURCE:res" output_stream: "TEXT:out" }')
    with CalculatorRunner(node, registry=fakes.registry(), graph_file=tmp_path / "graph.pbtxt") as runner:
        assert runner.run({"TEXT": "x"}) == [("TEXT", "x / hello from r")]
        assert runner.run({"TEXT": "y"}) == [("TEXT", "y / hello from r")]
    assert fakes.Resourceful.loads == 1


def test_runner_raises_what_the_front_end_would_see() -> None:
    with CalculatorRunner('node { calculator: "Fail" input_stream: "TEXT:in" output_stream: "TEXT:out" }',
                          registry=fakes.registry()) as runner, pytest.raises(BadRequest) as info:
        runner.run({"TEXT": "bad"})
    assert info.value.param == "text"


def test_runner_reports_validation_problems_with_snippet_lines(tmp_path: Path) -> None:
    runner = CalculatorRunner('node {\n  calculator: "Split"\n  input_stream: "TEXT:in"\n}', registry=fakes.registry(),
                              graph_file=tmp_path / "graph.pbtxt")
    assert [str(p) for p in runner.problems()] == [
        f'{tmp_path / "graph.pbtxt"}:1: node "#0" (Split): output_stream: required port WORD '
        '(one word per packet) is not connected; add output_stream: "WORD:word"']
    with pytest.raises(ConfigError):
        runner.run({"TEXT": "x"})


def test_wrap_node_declares_unconnected_streams_after_the_snippet() -> None:
    text = wrap_node(SPLIT + '\nnode { calculator: "Exclaim" input_stream: "WORD:words" output_stream: "TEXT:out" }')
    assert text.splitlines()[-2:] == ['input_stream: "TEXT:in"', 'output_stream: "TEXT:out"']
