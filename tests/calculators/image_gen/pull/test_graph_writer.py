"""graph.pbtxt written from flags: golden text per flag set, flag errors, and the real calculator's verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from calculators.image_gen.graph_writer import (
    CompositeComponentLine,
    CompositeLine,
    GraphFlags,
    LoraAdapterLine,
    check_graph_flags,
    render_graph,
    write_graph,
)
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.graph_config import parse_graph_text
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph
from tests.calculators.image_gen.pull.conftest import tiny

HEAD = '''input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"

node: {
  name: "ImageGenExecutor"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  # ImageGenCalculator needs exactly this side packet: the pipelines, built once at load.
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {
      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
          # Folder holding model_index.json, relative to this file.
          models_path: "./"
'''
TAIL = '''      }
  }
}
'''

DYNAMIC_LORAS = (
    LoraAdapterLine("pokemon", "loras/pokemon/pokemon.safetensors", None, "DYNAMIC"),
    LoraAdapterLine("ukiyo", "loras/ukiyo/Ukiyo-e Art.safetensors", 0.8, "DYNAMIC"),
    LoraAdapterLine("local", "/srv/loras/my \"style\".safetensors", None, "DYNAMIC"),
)

# (flags, the node options block between HEAD and TAIL)
GOLDEN = {
    "defaults": (GraphFlags(), ""),
    "cpu-limits": (
        GraphFlags(device="CPU", num_streams=2, max_resolution="1024x768", default_resolution="512x512",
                   max_num_images_per_prompt=4, default_num_inference_steps=20, max_num_inference_steps=40), '''\
          device: "CPU"
          # NUM_STREAMS: how many requests this node generates at once.
          plugin_config: '{"NUM_STREAMS": 2}'

          # Request limits and defaults.
          max_resolution: "1024x768"
          default_resolution: "512x512"
          max_num_images_per_prompt: 4
          default_num_inference_steps: 20
          max_num_inference_steps: 40
'''),
    "static-gpu": (
        GraphFlags(device="GPU", resolution="512x512", num_images_per_prompt=2, guidance_scale=7.5), '''\
          device: "GPU"

          # Static shape: the models are reshaped to this resolution at load.
          resolution: "512x512"
          num_images_per_prompt: 2
          guidance_scale: 7.5
'''),
    "several-static": (
        GraphFlags(device="CPU GPU GPU", resolution="512x512  768x512", default_resolution="768x512"), '''\
          device: "CPU GPU GPU"

          # Static resolutions: the only sizes a request may ask for.
          resolution: "512x512 768x512"

          # Request limits and defaults.
          default_resolution: "768x512"
'''),
    "dynamic-loras": (
        GraphFlags(lora_adapters=DYNAMIC_LORAS, composite_lora_adapters=(
            CompositeLine("mix", (CompositeComponentLine("pokemon", 0.7), CompositeComponentLine("local", None))),)),
        '''\

          # LoRA adapters (--source_loras): a request picks one with "model": "<alias>";
          # the graph's own name runs the base model. "lora_alphas" overrides alphas.
          lora_adapters { alias: "pokemon" path: "loras/pokemon/pokemon.safetensors" mode: DYNAMIC }
          lora_adapters { alias: "ukiyo" path: "loras/ukiyo/Ukiyo-e Art.safetensors" alpha: 0.8 mode: DYNAMIC }
          lora_adapters { alias: "local" path: "/srv/loras/my \\"style\\".safetensors" mode: DYNAMIC }
          # Composite adapters: blends of the adapters above, in the order listed.
          composite_lora_adapters { alias: "mix" components { adapter_alias: "pokemon" alpha: 0.7 } \
components { adapter_alias: "local" } }
'''),
    "npu-static": (
        GraphFlags(device="NPU", resolution="512x512", lora_adapters=(
            LoraAdapterLine("a", "loras/a/a.safetensors", None, "STATIC"),
            LoraAdapterLine("b", "loras/b/b.safetensors", None, "STATIC")),
            composite_lora_adapters=(CompositeLine("ab", (CompositeComponentLine("a", 0.25),
                                                          CompositeComponentLine("b", 1e-05))),)), '''\
          device: "NPU"

          # Static shape: the models are reshaped to this resolution at load.
          resolution: "512x512"

          # LoRA adapters (--source_loras), STATIC on NPU: compiled in with fixed alphas; only the
          # adapter's alias (or, with several, the composite's) is a model name.
          lora_adapters { alias: "a" path: "loras/a/a.safetensors" mode: STATIC }
          lora_adapters { alias: "b" path: "loras/b/b.safetensors" mode: STATIC }
          # Composite adapters: blends of the adapters above, in the order listed.
          composite_lora_adapters { alias: "ab" components { adapter_alias: "a" alpha: 0.25 } \
components { adapter_alias: "b" alpha: 1e-05 } }
'''),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_text(name: str) -> None:
    flags, block = GOLDEN[name]
    assert check_graph_flags(flags) == []
    assert render_graph(flags) == HEAD + block + TAIL


@pytest.mark.parametrize("name", GOLDEN)
def test_written_text_parses_into_the_options_given(name: str) -> None:
    flags, _ = GOLDEN[name]
    spec = parse_graph_text(render_graph(flags, header="a header\nsecond line"), Path("graph.pbtxt"),
                            [ImageGenCalculatorOptions])
    assert spec.problems == []
    (node,) = spec.nodes
    options = node.option(ImageGenCalculatorOptions)
    assert isinstance(options, ImageGenCalculatorOptions)
    assert options.models_path == "./"
    given = {f.name for f, _ in options.ListFields()}
    expected = {"models_path"} | {name for name in ("device", "resolution", "max_resolution", "default_resolution",
                                                    "max_num_images_per_prompt", "default_num_inference_steps",
                                                    "max_num_inference_steps", "num_images_per_prompt",
                                                    "guidance_scale") if getattr(flags, name) is not None}
    if flags.num_streams is not None:
        expected.add("plugin_config")
    if flags.lora_adapters:
        expected.add("lora_adapters")
    if flags.composite_lora_adapters:
        expected.add("composite_lora_adapters")
    assert given == expected
    if flags.device is not None:
        assert options.device == flags.device
    assert [(a.alias, a.path, a.alpha, ImageGenCalculatorOptions.DESCRIPTOR.fields_by_name["lora_adapters"]
             .message_type.fields_by_name["mode"].enum_type.values_by_number[a.mode].name, a.HasField("alpha"))
            for a in options.lora_adapters] == [
        (a.alias, a.path, pytest.approx(a.alpha if a.alpha is not None else 1.0), a.mode, a.alpha is not None)
        for a in flags.lora_adapters]


def test_header_becomes_comments() -> None:
    text = render_graph(GraphFlags(), header="Image generation graph for org/m.\n\nSecond line")
    assert text.startswith("# Image generation graph for org/m.\n#\n# Second line\n\ninput_stream:")


def test_write_graph_leaves_an_identical_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "graph.pbtxt"
    assert write_graph(path, "a\n") is True
    before = path.stat().st_mtime_ns
    assert write_graph(path, "a\n") is False
    assert path.stat().st_mtime_ns == before
    assert write_graph(path, "b\n") is True
    assert path.read_text() == "b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.pbtxt"]


FLAG_ERRORS = [
    (GraphFlags(max_resolution="4096"), ['--max_resolution: expected WIDTHxHEIGHT (e.g. 512x512), got "4096"']),
    (GraphFlags(max_resolution="0x512"),
     ['--max_resolution: expected WIDTHxHEIGHT with both values greater than 0, got "0x512"']),
    (GraphFlags(default_resolution="500x512"), ['--default_resolution: "500x512": width and height must be divisible '
                                                'by 8']),
    (GraphFlags(default_resolution="1024x1024", max_resolution="512x512"),
     ["--default_resolution: 1024x1024 exceeds the maximum resolution 512x512 (--max_resolution)"]),
    (GraphFlags(resolution="512x512 512x512"), ['--resolution: "512x512" is listed twice']),
    (GraphFlags(resolution="512x512 -8x8"), ['--resolution: expected WIDTHxHEIGHT (e.g. 512x512), got "-8x8"']),
    (GraphFlags(resolution="  "),
     ["--resolution: expected one or more space-separated WIDTHxHEIGHT values, got an empty string"]),
    (GraphFlags(resolution="512x512 1024x1024", max_resolution="768x768"),
     ['--resolution: "1024x1024" exceeds --max_resolution 768x768']),
    (GraphFlags(resolution="512x512 768x768", default_resolution="256x256"),
     ["--default_resolution: 256x256 is not one of the static resolutions of --resolution (512x512 768x768)"]),
    (GraphFlags(num_images_per_prompt=2),
     ["--num_images_per_prompt: needs a single static --resolution WIDTHxHEIGHT (it sets the reshaped model's batch "
      "and guidance)"]),
    (GraphFlags(guidance_scale=3.0, resolution="512x512 768x768"),
     ['--guidance_scale: cannot be used with several static resolutions (--resolution "512x512 768x768")']),
    (GraphFlags(resolution="512x512", max_resolution="1024x1024", max_num_images_per_prompt=3),
     ["--max_resolution: cannot be used with a single static --resolution (the models are reshaped to 512x512)",
      "--max_num_images_per_prompt: cannot be used with a single static --resolution (the models are reshaped to "
      "512x512)"]),
    (GraphFlags(device="NPU"), ["--target_device: NPU requires a single static --resolution WIDTHxHEIGHT"]),
    (GraphFlags(device="CPU GPU NPU", resolution="512x512 768x768"),
     ["--resolution: NPU requires exactly one static resolution, got 2"]),
    (GraphFlags(device="CPU GPU"),
     ['--target_device: expected CPU, GPU, NPU or three of them ("CPU GPU NPU"), got "CPU GPU"']),
    (GraphFlags(num_streams=0), ["--num_streams: must be greater than 0, got 0"]),
    (GraphFlags(guidance_scale=float("nan"), resolution="512x512"), ["--guidance_scale: must be a finite number, "
                                                                      "got nan"]),
    (GraphFlags(default_num_inference_steps=30, max_num_inference_steps=20),
     ["--default_num_inference_steps: 30 exceeds --max_num_inference_steps 20"]),
    (GraphFlags(default_num_inference_steps=120),
     ["--default_num_inference_steps: 120 exceeds the default maximum 100"]),
    (GraphFlags(max_num_inference_steps=20),
     ["--max_num_inference_steps: 20 is below the default number of steps (50); set --default_num_inference_steps "
      "too"]),
]


@pytest.mark.parametrize(("flags", "messages"), FLAG_ERRORS, ids=range(len(FLAG_ERRORS)))
def test_flag_errors(flags: GraphFlags, messages: list[str]) -> None:
    assert check_graph_flags(flags) == messages


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny SD1.5 model with two of the tiny LoRAs under loras/<alias>/."""
    root = tmp_path_factory.mktemp("model") / "sd15"
    shutil.copytree(tiny("sd15"), root, ignore=shutil.ignore_patterns("graph.pbtxt"))
    for alias, name in (("a", "lora_a"), ("b", "lora_b")):
        (root / "loras" / alias).mkdir(parents=True)
        shutil.copy(tiny("loras") / f"{name}.safetensors", root / "loras" / alias / f"{name}.safetensors")
    return root


VALIDATED = {
    "defaults": GraphFlags(),
    "limits": GraphFlags(device="CPU", num_streams=2, max_resolution="256x256", default_resolution="64x64",
                         max_num_images_per_prompt=2, default_num_inference_steps=2, max_num_inference_steps=4),
    "static": GraphFlags(resolution="64x64", num_images_per_prompt=1, guidance_scale=2.0),
    "several-static": GraphFlags(resolution="64x64 128x64", default_resolution="128x64"),
    "dynamic-loras": GraphFlags(lora_adapters=(
        LoraAdapterLine("a", "loras/a/lora_a.safetensors", 0.5, "DYNAMIC"),
        LoraAdapterLine("b", "loras/b/lora_b.safetensors", None, "DYNAMIC")),
        composite_lora_adapters=(CompositeLine("ab", (CompositeComponentLine("a", None),
                                                      CompositeComponentLine("b", 0.3))),)),
}


@pytest.mark.parametrize("name", VALIDATED)
def test_written_graph_passes_the_calculators_validation(name: str, model_dir: Path) -> None:
    path = model_dir / "graph.pbtxt"
    write_graph(path, render_graph(VALIDATED[name], header=f"case {name}"))
    registry = Registry.from_entry_points()
    spec = parse_graph_text(path.read_text(), path, registry.option_types())
    assert [str(p) for p in validate_graph(spec, registry, graph_name="sd15")] == []


def test_the_calculators_validation_does_look_at_what_was_written(model_dir: Path, tmp_path: Path) -> None:
    """The check above can fail: a missing adapter file is reported by the calculator."""
    path = model_dir / "graph.pbtxt"
    flags = GraphFlags(lora_adapters=(LoraAdapterLine("gone", "loras/gone/x.safetensors", None, "DYNAMIC"),))
    write_graph(path, render_graph(flags))
    registry = Registry.from_entry_points()
    spec = parse_graph_text(path.read_text(), path, registry.option_types())
    problems = [str(p) for p in validate_graph(spec, registry, graph_name="sd15")]
    assert len(problems) == 1 and 'LoRA adapter "gone"' in problems[0], problems
