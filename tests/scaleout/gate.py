"""A calculator whose graph loads only once a file exists: holds a real replica in "listening but not
ready" for as long as a test needs, so what a load balancer does with such a replica can be observed.

Installed into ``ovms-graph serve`` as a plugin (entry point), as tests/server/test_e2e.py does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import Calculator, CalculatorContext, LoadContext, Port
from ovms_graph.graph_config import NodeSpec
from ovms_graph.packets import HttpPayload, HttpResponse

#: The file, in the graph's folder, whose existence lets the graph finish loading.
OPEN_FILE = "open"
LIMIT = 120.0  # a safety net against hanging forever, not a performance assertion


class LoadGateCalculator(Calculator):
    """Loads once ``open`` exists next to its graph.pbtxt (at most ``LIMIT`` s, then a load error);
    answers every request with an empty JSON object."""

    inputs = (Port("HTTP_REQUEST_PAYLOAD", HttpPayload, "the HTTP request"),)
    outputs = (Port("HTTP_RESPONSE_PAYLOAD", HttpResponse, "the HTTP response"),)
    resources_port = "GATE"
    input_side_packets = (Port("GATE", object, "nothing; loading waits for the gate file"),)

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        gate = ctx.graph_dir / OPEN_FILE
        deadline = time.monotonic() + LIMIT
        while not gate.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{gate} did not appear within {LIMIT} s")
            time.sleep(0.02)
        return object()

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("HTTP_RESPONSE_PAYLOAD", HttpResponse.json({}))


GRAPH = """input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node {
  name: "gate"
  calculator: "LoadGateCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "GATE:gate"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
}
"""


def install_plugin(site: Path) -> None:
    """A throwaway distribution in ``site`` whose entry point registers LoadGateCalculator."""
    dist = site / "ovms_graph_scaleout_gate-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ovms-graph-scaleout-gate\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[ovms_graph.calculators]\nLoadGateCalculator = tests.scaleout.gate:LoadGateCalculator\n")
