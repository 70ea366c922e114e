"""The option table covers the proto, and what the writer renders parses back to the same message."""

from __future__ import annotations

from google.protobuf import text_format

from calculators.image_gen.graph_writer import (
    CompositeComponentLine,
    CompositeLine,
    GraphFlags,
    LoraAdapterLine,
    graph_options,
    render_options,
)
from calculators.image_gen.option_table import BY_FIELD, FLAGS, OPTIONS, default, range_problem
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions


def test_every_proto_field_has_exactly_one_row() -> None:
    assert sorted(row.field for row in OPTIONS) == sorted(ImageGenCalculatorOptions.DESCRIPTOR.fields_by_name)


def test_defaults_are_the_protos() -> None:
    assert (default("max_resolution"), default("max_num_images_per_prompt"), default("default_num_inference_steps"),
            default("max_num_inference_steps"), default("device")) == ("4096x4096", 10, 50, 100, None)


def test_flags_and_ranges() -> None:
    assert FLAGS["device"] == "--target_device"
    assert "models_path" not in FLAGS and "default_rng_seed" not in FLAGS
    assert range_problem("max_num_inference_steps", 0) == "must be greater than 0, got 0"
    assert range_problem("guidance_scale", float("inf")) == "must be a finite number, got inf"
    assert range_problem("default_rng_seed", 2**63) == f"must be between 0 and {2**63 - 1}, got {2**63}"
    assert range_problem("max_num_inference_steps", 1) is None
    assert BY_FIELD["lora_adapters"].repeated and not BY_FIELD["device"].repeated


def test_rendered_options_parse_back_to_the_message() -> None:
    flags = GraphFlags(device="NPU", num_streams=3, resolution="512x512", num_images_per_prompt=2, guidance_scale=7.25,
                       default_resolution="512x512", default_num_inference_steps=7,
                       lora_adapters=(LoraAdapterLine("a", 'odd "name".safetensors', 0.5, "STATIC"),),
                       composite_lora_adapters=(CompositeLine("c", (CompositeComponentLine("a", None),)),))
    message = graph_options(flags)
    parsed = text_format.Parse("\n".join(render_options(message)), ImageGenCalculatorOptions())
    assert parsed == message
    assert message.plugin_config == '{"NUM_STREAMS": 3}'


def test_range_rules_are_on_scalar_fields() -> None:
    assert [row.field for row in OPTIONS if row.range is not None and row.repeated] == []
