"""The schema: generated code matches proto/, and field numbers match MediaPipe and OVMS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from calculators.protos import image_gen_calculator_pb2 as ig
from ovms_graph.protos import calculator_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_proto_sources() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def numbers(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_image_gen_options_match_spec_section_4() -> None:
    assert numbers(ig.ImageGenCalculatorOptions) == {
        "models_path": 1, "device": 2, "plugin_config": 3, "max_resolution": 4, "default_resolution": 5,
        "max_num_images_per_prompt": 6, "default_num_inference_steps": 7, "max_num_inference_steps": 8,
        "resolution": 9, "num_images_per_prompt": 10, "guidance_scale": 11, "lora_adapters": 12,
        "composite_lora_adapters": 13,
        "default_rng_seed": 1001,  # ovms-graph's own, numbered away from OVMS's fields
    }
    opts = ig.ImageGenCalculatorOptions()
    assert (opts.max_resolution, opts.max_num_images_per_prompt, opts.default_num_inference_steps,
            opts.max_num_inference_steps) == ("4096x4096", 10, 50, 100)
    assert ig.ImageGenCalculatorOptions.DESCRIPTOR.file.package == "mediapipe"
    assert ig.ImageGenCalculatorOptions.ext.number == 116423751
    assert ig.ImageGenCalculatorOptions.ext.containing_type.full_name == "mediapipe.CalculatorOptions"
    fields = ig.ImageGenCalculatorOptions.DESCRIPTOR.fields_by_name
    assert fields["num_images_per_prompt"].type == FieldDescriptor.TYPE_INT64
    assert fields["guidance_scale"].type == FieldDescriptor.TYPE_FLOAT
    assert fields["max_num_images_per_prompt"].type == FieldDescriptor.TYPE_UINT64
    assert fields["default_rng_seed"].type == FieldDescriptor.TYPE_UINT64
    assert fields["models_path"].is_required


def test_lora_messages_match_spec_section_4() -> None:
    assert numbers(ig.LoraAdapterEntry) == {"alias": 1, "path": 2, "alpha": 3, "mode": 4}
    assert numbers(ig.CompositeLoraComponent) == {"adapter_alias": 1, "alpha": 2}
    assert numbers(ig.CompositeLoraAdapterEntry) == {"alias": 1, "components": 2}
    assert dict(ig.LoraLoadMode.items()) == {"DYNAMIC": 0, "STATIC": 1, "FUSE": 2}
    entry = ig.LoraAdapterEntry()
    assert (entry.alpha, entry.mode) == (1.0, ig.DYNAMIC)
    assert ig.CompositeLoraComponent().alpha == 1.0


@pytest.mark.parametrize(("message", "expected"), [
    (calculator_pb2.CalculatorGraphConfig, {
        "node": 1, "packet_factory": 6, "packet_generator": 7, "num_threads": 8, "status_handler": 9,
        "input_stream": 10, "output_stream": 15, "input_side_packet": 16, "output_side_packet": 17,
        "max_queue_size": 11, "report_deadlock": 21, "input_stream_handler": 12, "output_stream_handler": 13,
        "executor": 14, "profiler_config": 18, "package": 19, "type": 20, "options": 1001, "graph_options": 1002}),
    (calculator_pb2.CalculatorGraphConfig.Node, {
        "name": 1, "calculator": 2, "input_stream": 3, "output_stream": 4, "input_side_packet": 5,
        "output_side_packet": 6, "options": 7, "node_options": 8, "source_layer": 9, "buffer_size_hint": 10,
        "input_stream_handler": 11, "output_stream_handler": 12, "input_stream_info": 13, "executor": 14,
        "profiler_config": 15, "max_in_flight": 16, "option_value": 17, "external_input": 1005}),
])
def test_graph_schema_matches_mediapipe(message: type, expected: dict[str, int]) -> None:
    assert numbers(message) == expected
    assert message.DESCRIPTOR.full_name.startswith("mediapipe.")  # type: ignore[attr-defined]


def test_serialized_graphs_round_trip_through_the_binary_format() -> None:
    graph = calculator_pb2.CalculatorGraphConfig()
    node = graph.node.add(name="ImageGenExecutor", calculator="ImageGenCalculator")
    options = ig.ImageGenCalculatorOptions(models_path="./", device="CPU")
    node.node_options.add().Pack(options)
    node.options.Extensions[ig.ImageGenCalculatorOptions.ext].models_path = "legacy"
    again = calculator_pb2.CalculatorGraphConfig.FromString(graph.SerializeToString())
    unpacked = ig.ImageGenCalculatorOptions()
    assert again.node[0].node_options[0].Unpack(unpacked)
    assert unpacked == options
    assert again.node[0].options.Extensions[ig.ImageGenCalculatorOptions.ext].models_path == "legacy"
