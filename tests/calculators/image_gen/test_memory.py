"""Memory per pipeline set: the estimate, the load-time refusal naming NUM_STREAMS, and the /metrics gauges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from calculators.image_gen import memory, pipelines
from calculators.image_gen.memory import GIB, MemoryEstimate, constant_bytes, inference_precision, resident_factor
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


def write_ir(folder: Path, constants: dict[str, int]) -> Path:
    """An IR pair whose xml declares one constant of each ``element_type: size``."""
    folder.mkdir(parents=True, exist_ok=True)
    offset, layers = 0, []
    for element_type, size in constants.items():
        layers.append(f'<layer id="{len(layers)}" type="Const"><data element_type="{element_type}" shape="{size}" '
                      f'offset="{offset}" size="{size}" /></layer>')
        offset += size
    (folder / "openvino_model.xml").write_text(f'<net><layers><layer id="p" type="Parameter"><data '
                                               f'shape="1,4" element_type="f32" /></layer>{"".join(layers)}'
                                               f"</layers></net>")
    (folder / "openvino_model.bin").write_bytes(bytes(offset))
    return folder


@pytest.mark.parametrize(("constants", "precision", "factor"), [
    ({"f16": 1000}, "bf16", 2.15),  # fp16 IR at bf16: the files plus a same-size copy (SD1.5: 4.15 GiB measured)
    ({"f16": 1000}, "f16", 2.15),
    ({"f16": 1000}, "f32", 3.15),  # expanded to f32: twice the files (SD1.5: 6.24 GiB measured)
    ({"f32": 1000}, "f32", 2.15),
    ({"f32": 1000}, "bf16", 1.65),
    ({"u8": 800, "f16": 200}, "f32", 2.35),  # int8-compressed weights stay int8; their f16 scales expand
    ({}, "f32", 2.0),  # no IR constants found: the measured default
])
def test_each_set_holds_the_files_and_a_copy_at_the_inference_precision(
        tmp_path: Path, constants: dict[str, int], precision: str, factor: float) -> None:
    folder = write_ir(tmp_path / "unet", constants) if constants else tmp_path
    found = constant_bytes(tmp_path)
    assert found == constants
    assert resident_factor(found, precision) == pytest.approx(factor)
    estimate = MemoryEstimate.for_model(2, tmp_path, {"INFERENCE_PRECISION_HINT": precision})
    assert estimate.per_set == int(sum(constants.values()) * factor)
    assert estimate.total == 2 * estimate.per_set
    assert folder.is_dir()


@pytest.mark.parametrize(("properties", "precision"), [
    ({"INFERENCE_PRECISION_HINT": "f32"}, "f32"),
    ({"INFERENCE_PRECISION_HINT": "BF16"}, "bf16"),
    ({"INFERENCE_PRECISION_HINT": "f16"}, "f16"),
    ({"EXECUTION_MODE_HINT": "ACCURACY"}, "f32"),
])
def test_the_inference_precision_comes_from_plugin_config(properties: dict[str, str], precision: str) -> None:
    assert inference_precision(properties) == precision


def test_without_a_hint_the_precision_is_the_cpus_default() -> None:
    import openvino as ov

    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert inference_precision({}) == default
    assert inference_precision({"EXECUTION_MODE_HINT": "PERFORMANCE"}) == default


def test_the_machine_reports_its_available_memory() -> None:
    available = memory.available_bytes()
    assert available is not None and available > 0


def test_too_many_sets_for_the_memory_fail_the_load_naming_plugin_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_set = MemoryEstimate.for_model(1, TINY / "sd15", {"INFERENCE_PRECISION_HINT": "f32"}).per_set
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
    assert value(r'ovms_graph_graph_memory_estimate_bytes\{graph="sd"\}') == MemoryEstimate.for_model(
        1, TINY / "sd15", json.loads(F32)).total
