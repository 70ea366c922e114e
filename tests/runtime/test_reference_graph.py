"""The reference document's graph loads and validates against an ImageGenCalculator contract."""

from __future__ import annotations

from pathlib import Path

from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import Calculator, Port
from ovms_graph.graph import Graph, load_spec
from ovms_graph.packets import HttpPayload, HttpResponse, ServerSentEvent
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph

REFERENCE = Path(__file__).resolve().parents[2] / "graphs" / "reference" / "graph.pbtxt"


class ImageGenContractStub(Calculator):
    """The ports and options of ImageGenCalculator, without OpenVINO."""

    name = "ImageGenCalculator"
    inputs = (Port("HTTP_REQUEST_PAYLOAD", HttpPayload, "request"),)
    outputs = (Port("HTTP_RESPONSE_PAYLOAD", (HttpResponse, ServerSentEvent), "response"),)
    input_side_packets = (Port("IMAGE_GEN_NODE_RESOURCES", object, "pipelines", exact_name="pipes"),)
    resources_port = "IMAGE_GEN_NODE_RESOURCES"
    requires_name = True
    options_types = (ImageGenCalculatorOptions,)


def registry() -> Registry:
    reg = Registry()
    reg.register(ImageGenContractStub)
    return reg


def test_reference_graph_validates() -> None:
    spec = load_spec(REFERENCE, registry())
    assert validate_graph(spec, registry()) == []
    (node,) = spec.nodes
    options = node.option(ImageGenCalculatorOptions)
    assert isinstance(options, ImageGenCalculatorOptions)
    assert (options.models_path, options.device, options.max_resolution) == ("./", "CPU", "4096x4096")


def test_reference_graph_loads_with_resources_keyed_by_node_name() -> None:
    graph = Graph.load("reference", REFERENCE, registry())
    assert list(graph.resources) == ["ImageGenExecutor"]
    assert graph.input_streams == {"HTTP_REQUEST_PAYLOAD": "input"}
    assert graph.output_streams == {"output": "HTTP_RESPONSE_PAYLOAD"}


def test_legacy_options_extension_form_is_read(tmp_path: Path) -> None:
    text = REFERENCE.read_text().replace(
        "node_options: {\n      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {",
        "options: {\n      [mediapipe.ImageGenCalculatorOptions.ext]: {")
    assert "[mediapipe.ImageGenCalculatorOptions.ext]" in text
    path = tmp_path / "graph.pbtxt"
    path.write_text(text)
    spec = load_spec(path, registry())
    assert validate_graph(spec, registry()) == []
    options = spec.nodes[0].option(ImageGenCalculatorOptions)
    assert options is not None and options.models_path == "./"
