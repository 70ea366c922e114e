"""Memory per pipeline set: the estimate, the load-time refusal naming NUM_STREAMS, and the /metrics gauges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from calculators.image_gen import memory, pipelines
from calculators.image_gen.memory import GIB, MemoryEstimate, weights_bytes
from ovms_graph.cli import ServerOptions
from ovms_graph.errors import ConfigError
from ovms_graph.testing import CalculatorRunner, ThreadedServer
from tests.calculators.image_gen.helpers import F32, TINY, graph_text, node_text, registry, wait_for_tiny_models


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models(("sd15",))


@pytest.mark.parametrize(("sets", "weights_gib", "available_gib", "message"), [
    (1, 1.0, 4.0, None),
    (2, 1.0, 4.0, None),
    (3, 1.0, 4.0,
     "NUM_STREAMS 3 needs an estimated 6.00 GiB (3 pipeline set(s) x 2.00 GiB (weights 1.00 GiB on disk; each set "
     "holds its own copy)), but only 4.00 GiB of memory is available; lower NUM_STREAMS in "
     "plugin_config (at most 2 set(s) fit) or give the server more memory"),
    (1, 3.0, 4.0,
     "NUM_STREAMS 1 needs an estimated 6.00 GiB (1 pipeline set(s) x 6.00 GiB (weights 3.00 GiB on disk; each set "
     "holds its own copy)), but only 4.00 GiB of memory is available; lower NUM_STREAMS in "
     "plugin_config (at most 0 set(s) fit) or give the server more memory"),
    (8, 1.0, None, None),  # unknown available memory: never refused
])
def test_refusal_names_num_streams_the_estimate_and_the_available_memory(
        sets: int, weights_gib: float, available_gib: float | None, message: str | None) -> None:
    estimate = MemoryEstimate(sets, int(weights_gib * GIB))
    available = None if available_gib is None else int(available_gib * GIB)
    assert estimate.refusal(available) == message


def test_the_machine_reports_its_available_memory() -> None:
    available = memory.available_bytes()
    assert available is not None and available > 0


def test_too_many_sets_for_the_memory_fail_the_load_naming_plugin_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_set = MemoryEstimate(1, weights_bytes(TINY / "sd15")).per_set
    monkeypatch.setattr(pipelines, "available_bytes", lambda: int(2.5 * per_set))

    def load(streams: int) -> CalculatorRunner:
        plugin = json.dumps({"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": streams})
        return CalculatorRunner(node_text(f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{plugin}'"),
                                registry=registry(), graph_file=tmp_path / "graph.pbtxt")

    with pytest.raises(ConfigError) as info:
        _ = load(3).graph
    (problem,) = info.value.problems
    assert problem.field == "node_options.plugin_config"
    assert problem.message.startswith("NUM_STREAMS 3 needs an estimated ")
    assert "at most 2 set(s) fit" in problem.message
    with load(2) as runner:  # two sets fit: loads for real
        assert runner.graph.concurrency == 2
        assert runner.graph.memory_estimate == 2 * per_set


def test_metrics_show_the_process_and_per_graph_memory(tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "graph.pbtxt").write_text(graph_text(f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}]}))
    server = ThreadedServer.start(config, registry=registry(), options=ServerOptions(rest_port=0, metrics_enable=True))
    try:
        text = requests.get(f"{server.url}/metrics", timeout=30).text
    finally:
        server.stop()

    def value(pattern: str) -> float:
        found = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
        assert found, f"{pattern} missing from /metrics:\n{text}"
        return float(found.group(1))

    assert value("ovms_graph_resident_memory_bytes") > 0
    assert value(r'ovms_graph_graph_memory_estimate_bytes\{graph="sd"\}') == MemoryEstimate(
        1, weights_bytes(TINY / "sd15")).total
