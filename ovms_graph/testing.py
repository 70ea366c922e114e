"""Test helpers: run one calculator node in isolation (MediaPipe ``framework/calculator_runner.h``).

:class:`CalculatorRunner` builds a one-node graph from a pbtxt ``node { ... }`` snippet: every input
stream of the node becomes a graph input and every output stream a graph output. The graph is
validated and loaded exactly as the server would (``check_options``, ``create_resources``), then
packets are fed by tag and every output packet is returned in order::

    runner = CalculatorRunner('''
        node {
          name: "up"
          calculator: "UpperCalculator"
          input_stream: "TEXT:in"
          output_stream: "TEXT:out"
        }''', registry=registry)
    assert runner.run({"TEXT": "hi"}) == [("TEXT", "HI")]

The snippet is parsed as if it lived at ``graph_file`` (default ``graph.pbtxt`` in the current
folder; nothing is written there), so relative paths in node options resolve against that folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import RequestContext
from ovms_graph.errors import Problem
from ovms_graph.graph import Graph
from ovms_graph.graph_config import GraphSpec, parse_graph_text
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph


def wrap_node(node_text: str, option_types: Sequence[type[Message]] = ()) -> str:
    """A whole graph around ``node { ... }`` snippets: their unconnected streams become graph streams.

    The declarations are appended, so line numbers in messages still match the snippet.
    """
    spec = parse_graph_text(node_text, Path("graph.pbtxt"), option_types)
    produced = {ref.name for node in spec.nodes for ref in node.output_streams}
    consumed = {ref.name for node in spec.nodes for ref in node.input_streams}
    lines: list[str] = []
    for node in spec.nodes:
        lines += [f'input_stream: "{ref.raw}"' for ref in node.input_streams if ref.name not in produced]
    for node in spec.nodes:
        lines += [f'output_stream: "{ref.raw}"' for ref in node.output_streams if ref.name not in consumed]
    return node_text.rstrip("\n") + "\n" + "\n".join(dict.fromkeys(lines)) + "\n"


class CalculatorRunner:
    """One node, loaded like the server loads it, fed and drained by tag."""

    def __init__(self, node_text: str, *, registry: Registry, graph_file: Path | None = None,
                 graph_name: str = "graph") -> None:
        self.registry = registry
        self.graph_name = graph_name
        self.graph_file = graph_file or Path.cwd() / "graph.pbtxt"
        self.text = wrap_node(node_text, registry.option_types())
        self.spec: GraphSpec = parse_graph_text(self.text, self.graph_file, registry.option_types())
        self._graph: Graph | None = None

    def problems(self) -> list[Problem]:
        """Every validation problem of the node (empty when it would load)."""
        return validate_graph(self.spec, self.registry, graph_name=self.graph_name)

    @property
    def graph(self) -> Graph:
        """The loaded graph (loads it on first use; raises ConfigError listing every problem)."""
        if self._graph is None:
            self._graph = Graph.from_spec(self.graph_name, self.spec, self.registry)
        return self._graph

    async def run_async(self, inputs: Mapping[str, Any], request: RequestContext | None = None
                        ) -> list[tuple[str, Any]]:
        """Feed ``inputs`` (by graph input tag) and return every ``(tag, packet)`` output in order.

        Raises the RequestError the graph raised, as the front end would see it.
        """
        outputs: list[tuple[str, Any]] = []
        async for tag, packet in self.graph.run(inputs, request or RequestContext()):
            outputs.append((tag, packet))
        return outputs

    def run(self, inputs: Mapping[str, Any], request: RequestContext | None = None) -> list[tuple[str, Any]]:
        """``run_async`` on a private event loop, for synchronous tests."""
        return asyncio.run(self.run_async(inputs, request))

    def close(self) -> None:
        """Release the node's resources. Idempotent."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> CalculatorRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
