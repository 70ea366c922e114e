"""Load-time option rules of ImageGenCalculator (SPEC §4, §9), each with the exact operator message."""

from __future__ import annotations

from pathlib import Path

import pytest

from calculators.image_gen.options import (
    NodeSettings,
    Resolution,
    parse_devices,
    parse_plugin_config,
    parse_resolution,
)
from calculators.image_gen.pipelines import compile_properties
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.helpers import FIRST_OPTION_LINE, fake_model, node_text, registry

NODE = 'node "gen" (ImageGenCalculator)'


def problems(tmp_path: Path, *options: str, text: str | None = None) -> list[str]:
    """The rendered problems, with tmp_path (in file names and messages) shown as relative."""
    fake_model(tmp_path / "model")
    runner = CalculatorRunner(text or node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    return [str(p).replace(f"{tmp_path}/", "").replace(str(tmp_path), ".") for p in runner.problems()]


def at(offset: int, field: str, message: str) -> str:
    """The rendered problem for the option on line FIRST_OPTION_LINE + offset."""
    return f"graph.pbtxt:{FIRST_OPTION_LINE + offset}: {NODE}: node_options.{field}: {message}"


OK = 'models_path: "model"'

CASES = [
    ("minimal", [OK], []),
    ("all dynamic options", [OK, 'device: "CPU"',
                             'plugin_config: \'{"NUM_STREAMS": 2, "PERFORMANCE_HINT": "LATENCY"}\'',
                             'max_resolution: "1024x768"', 'default_resolution: "512x512"',
                             "max_num_images_per_prompt: 4", "default_num_inference_steps: 20",
                             "max_num_inference_steps: 40"], []),
    ("three devices", [OK, 'device: "CPU CPU CPU"'], []),
    ("empty plugin_config means {}", [OK, 'plugin_config: ""'], []),
    ("NUM_STREAMS as numeric string", [OK, 'plugin_config: \'{"NUM_STREAMS": "2"}\''], []),
    ("single static resolution with batch and guidance",
     [OK, 'resolution: "512x512"', "num_images_per_prompt: 2", "guidance_scale: 5.0"], []),
    ("several static resolutions with a listed default",
     [OK, 'resolution: "512x512 768x512"', 'default_resolution: "768x512"'], []),
    ("NPU with one static resolution", [OK, 'device: "NPU"', 'resolution: "512x512"'], []),
    ("models_path missing on disk", ['models_path: "nowhere"'],
     [at(0, "models_path", 'directory "nowhere" does not exist (resolved to nowhere)')]),
    ("models_path empty", ['models_path: ""'],
     [at(0, "models_path", 'must not be empty (use "./" for the graph\'s folder)')]),
    ("models_path without model_index.json", ['models_path: "."'],
     [at(0, "models_path", ". has no model_index.json; expected an OpenVINO GenAI image generation model folder")]),
    ("two devices", [OK, 'device: "CPU GPU"'],
     [at(1, "device", 'expected 1 device or 3 space-separated devices (text encoder, denoiser, VAE), got 2: '
                      '"CPU GPU"')]),
    ("empty device", [OK, 'device: ""'],
     [at(1, "device", 'expected 1 device or 3 space-separated devices (text encoder, denoiser, VAE), got 0: ""')]),
    ("plugin_config not JSON", [OK, "plugin_config: '{NUM_STREAMS: 2}'"],
     [at(1, "plugin_config", "expected a JSON object, got invalid JSON (Expecting property name enclosed in "
                             "double quotes at column 2)")]),
    ("plugin_config an array", [OK, "plugin_config: '[1]'"],
     [at(1, "plugin_config", "expected a JSON object, got an array")]),
    ("NUM_STREAMS not numeric", [OK, 'plugin_config: \'{"NUM_STREAMS": "two"}\''],
     [at(1, "plugin_config", 'NUM_STREAMS: expected a positive integer or numeric string, got "two"')]),
    ("NUM_STREAMS zero", [OK, 'plugin_config: \'{"NUM_STREAMS": 0}\''],
     [at(1, "plugin_config", "NUM_STREAMS: expected a positive integer or numeric string, got 0")]),
    ("NUM_STREAMS boolean", [OK, 'plugin_config: \'{"NUM_STREAMS": true}\''],
     [at(1, "plugin_config", "NUM_STREAMS: expected a positive integer or numeric string, got true")]),
    ("NUM_STREAMS float", [OK, 'plugin_config: \'{"NUM_STREAMS": 1.5}\''],
     [at(1, "plugin_config", "NUM_STREAMS: expected a positive integer or numeric string, got 1.5")]),
    ("max_resolution without x", [OK, 'max_resolution: "4096"'],
     [at(1, "max_resolution", 'expected WIDTHxHEIGHT, got "4096"')]),
    ("max_resolution with zero", [OK, 'max_resolution: "0x512"'],
     [at(1, "max_resolution", 'expected WIDTHxHEIGHT with both values greater than 0, got "0x512"')]),
    ("max_resolution negative", [OK, 'max_resolution: "-512x512"'],
     [at(1, "max_resolution", 'expected WIDTHxHEIGHT, got "-512x512"')]),
    ("default_resolution malformed", [OK, 'default_resolution: "512*512"'],
     [at(1, "default_resolution", 'expected WIDTHxHEIGHT, got "512*512"')]),
    ("default_resolution beyond max", [OK, 'max_resolution: "512x512"', 'default_resolution: "1024x512"'],
     [at(2, "default_resolution", "1024x512 exceeds max_resolution 512x512")]),
    ("default_resolution not a multiple of 8", [OK, 'default_resolution: "500x512"'],
     [at(1, "default_resolution", "500x512: width and height must be divisible by 8")]),
    ("default_resolution not a static one", [OK, 'resolution: "512x512 768x768"', 'default_resolution: "640x640"'],
     [at(2, "default_resolution", "640x640 is not one of the static resolutions (512x512 768x768)")]),
    ("default_resolution differs from the single static one", [OK, 'resolution: "512x512"',
                                                               'default_resolution: "640x640"'],
     [at(2, "default_resolution", "640x640 is not one of the static resolutions (512x512)")]),
    ("duplicate static resolution", [OK, 'resolution: "512x512 768x768 512x512"'],
     [at(1, "resolution", '"512x512" is listed twice')]),
    ("malformed static resolution", [OK, 'resolution: "512x512 big"'],
     [at(1, "resolution", 'expected WIDTHxHEIGHT, got "big"')]),
    ("empty static resolution", [OK, 'resolution: " "'],
     [at(1, "resolution", "expected one or more space-separated WIDTHxHEIGHT values, got an empty string")]),
    ("static resolution not a multiple of 8", [OK, 'resolution: "510x512"'],
     [at(1, "resolution", '"510x512": width and height must be divisible by 8')]),
    ("static resolution beyond max_resolution", [OK, 'max_resolution: "512x512"', 'resolution: "512x512 768x768"'],
     [at(2, "resolution", '"768x768" exceeds max_resolution 512x512')]),
    ("num_images_per_prompt without static", [OK, "num_images_per_prompt: 2"],
     [at(1, "num_images_per_prompt",
         'num_images_per_prompt requires a single static resolution (set resolution: "WIDTHxHEIGHT")')]),
    ("guidance_scale without static", [OK, "guidance_scale: 3"],
     [at(1, "guidance_scale", 'guidance_scale requires a single static resolution (set resolution: "WIDTHxHEIGHT")')]),
    ("num_images_per_prompt with several static", [OK, 'resolution: "512x512 768x768"', "num_images_per_prompt: 2"],
     [at(2, "num_images_per_prompt", "num_images_per_prompt cannot be used with several static resolutions")]),
    ("guidance_scale with several static", [OK, 'resolution: "512x512 768x768"', "guidance_scale: 2"],
     [at(2, "guidance_scale", "guidance_scale cannot be used with several static resolutions")]),
    ("static num_images_per_prompt zero", [OK, 'resolution: "512x512"', "num_images_per_prompt: 0"],
     [at(2, "num_images_per_prompt", "must be greater than 0, got 0")]),
    ("static guidance_scale infinite", [OK, 'resolution: "512x512"', "guidance_scale: inf"],
     [at(2, "guidance_scale", "must be a finite number, got inf")]),
    ("max_resolution with single static", [OK, 'resolution: "512x512"', 'max_resolution: "1024x1024"'],
     [at(2, "max_resolution",
         "cannot be set with a single static resolution (the models are reshaped to 512x512; remove max_resolution)")]),
    ("max_num_images_per_prompt with single static", [OK, 'resolution: "512x512"', "max_num_images_per_prompt: 4"],
     [at(2, "max_num_images_per_prompt", "cannot be set with a single static resolution (the models are reshaped "
                                         "to 512x512; remove max_num_images_per_prompt)")]),
    ("NPU without static", [OK, 'device: "NPU"'],
     [f'graph.pbtxt:7: {NODE}: node_options.resolution: NPU requires a static resolution: set resolution: '
      '"WIDTHxHEIGHT"']),
    ("NPU as denoiser with several static", [OK, 'device: "CPU NPU CPU"', 'resolution: "512x512 768x768"'],
     [at(2, "resolution", "NPU requires exactly one static resolution, got 2")]),
    ("zero limits", [OK, "max_num_images_per_prompt: 0", "default_num_inference_steps: 0",
                     "max_num_inference_steps: 0"],
     [at(1, "max_num_images_per_prompt", "must be greater than 0, got 0"),
      at(2, "default_num_inference_steps", "must be greater than 0, got 0"),
      at(3, "max_num_inference_steps", "must be greater than 0, got 0")]),
    ("default steps beyond max", [OK, "default_num_inference_steps: 60", "max_num_inference_steps: 50"],
     [at(1, "default_num_inference_steps", "60 exceeds max_num_inference_steps 50")]),
    ("every problem at once", ['models_path: "nowhere"', 'device: "A B"', 'max_resolution: "big"'],
     [at(0, "models_path", 'directory "nowhere" does not exist (resolved to nowhere)'),
      at(1, "device", 'expected 1 device or 3 space-separated devices (text encoder, denoiser, VAE), got 2: "A B"'),
      at(2, "max_resolution", 'expected WIDTHxHEIGHT, got "big"')]),
]


@pytest.mark.parametrize(("options", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_option_rules(tmp_path: Path, options: list[str], expected: list[str]) -> None:
    assert problems(tmp_path, *options) == expected  # paths shown relative to the graph folder


def test_models_path_is_relative_to_the_graph_folder(tmp_path: Path) -> None:
    fake_model(tmp_path / "graphs" / "sd" / "weights")
    runner = CalculatorRunner(node_text('models_path: "weights"'), registry=registry(),
                              graph_file=tmp_path / "graphs" / "sd" / "graph.pbtxt")
    assert runner.problems() == []


def test_missing_options_are_refused(tmp_path: Path) -> None:
    text = node_text('models_path: "model"').replace(
        "  node_options: {\n    [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {\n"
        '      models_path: "model"\n    }\n  }\n', "")
    assert "node_options" not in text
    assert problems(tmp_path, text=text) == [
        f"graph.pbtxt:1: {NODE}: node_options: ImageGenCalculator needs node_options "
        '{ [type.googleapis.com/mediapipe.ImageGenCalculatorOptions]: { models_path: "..." } }']


def test_models_path_is_required(tmp_path: Path) -> None:
    assert problems(tmp_path, 'device: "CPU"') == [
        f"graph.pbtxt:7: {NODE}: node_options.models_path: required field is missing"]


SIDE_PACKET_CASES = [
    ("renamed", 'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipelines"',
     [f'graph.pbtxt:5: {NODE}: input_side_packet: expected "IMAGE_GEN_NODE_RESOURCES:pipes" exactly, got '
      '"IMAGE_GEN_NODE_RESOURCES:pipelines"']),
    ("with an index", 'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:0:pipes"',
     [f'graph.pbtxt:5: {NODE}: input_side_packet: every ImageGenCalculator node MUST have exactly '
      'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"; got "IMAGE_GEN_NODE_RESOURCES:0:pipes"']),
    ("missing", "",
     [f"graph.pbtxt:1: {NODE}: input_side_packet: required port IMAGE_GEN_NODE_RESOURCES (the node's pipelines, "
      "built once at load and shared by its requests) is not connected; add input_side_packet: "
      '"IMAGE_GEN_NODE_RESOURCES:pipes"']),
]


@pytest.mark.parametrize(("line", "expected"), [c[1:] for c in SIDE_PACKET_CASES],
                         ids=[c[0] for c in SIDE_PACKET_CASES])
def test_side_packet_must_be_exactly_pipes(tmp_path: Path, line: str, expected: list[str]) -> None:
    text = node_text('models_path: "model"').replace('input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"', line)
    assert problems(tmp_path, text=text) == expected


def test_node_needs_a_name(tmp_path: Path) -> None:
    text = node_text('models_path: "model"').replace('  name: "gen"\n', "")
    assert problems(tmp_path, text=text) == [
        'graph.pbtxt:1: node "#0" (ImageGenCalculator): name: ImageGenCalculator nodes must have a name']


# ----- the pure parsers -----
@pytest.mark.parametrize(("text", "expected"), [
    ("512x768", Resolution(512, 768)),
    ("1x1", Resolution(1, 1)),
])
def test_parse_resolution(text: str, expected: Resolution) -> None:
    assert parse_resolution(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("512", 'expected WIDTHxHEIGHT, got "512"'),
    ("512X512", 'expected WIDTHxHEIGHT, got "512X512"'),
    (" 512x512", 'expected WIDTHxHEIGHT, got " 512x512"'),
    ("512x0", 'expected WIDTHxHEIGHT with both values greater than 0, got "512x0"'),
    ("auto", 'expected WIDTHxHEIGHT, got "auto"'),
])
def test_parse_resolution_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        parse_resolution(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("CPU", ("CPU",)), ("  GPU  ", ("GPU",)), ("CPU  GPU\tNPU", ("CPU", "GPU", "NPU")),
])
def test_parse_devices(text: str, expected: tuple[str, ...]) -> None:
    assert parse_devices(text) == expected


@pytest.mark.parametrize(("text", "config", "streams"), [
    ("", {}, 1),
    ("  ", {}, 1),
    ("{}", {}, 1),
    ('{"NUM_STREAMS": 3, "INFERENCE_PRECISION_HINT": "f32"}', {"INFERENCE_PRECISION_HINT": "f32"}, 3),
    ('{"NUM_STREAMS": " 2 "}', {}, 2),
])
def test_parse_plugin_config(text: str, config: dict[str, object], streams: int) -> None:
    assert parse_plugin_config(text) == (config, streams)


@pytest.mark.parametrize(("devices", "sets", "cores", "expected"), [
    (("CPU",), 1, 8, {"X": 1}),
    (("CPU",), 2, 8, {"X": 1, "INFERENCE_NUM_THREADS": 4, "ENABLE_CPU_PINNING": False}),
    (("CPU",), 4, 2, {"X": 1, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}),
    (("CPU", "GPU", "CPU"), 2, 8, {"X": 1}),
])
def test_compile_properties_split_cpu_threads_between_sets(devices: tuple[str, ...], sets: int, cores: int,
                                                           expected: dict[str, object]) -> None:
    settings = NodeSettings(models_path=Path("."), devices=devices, plugin_config={"X": 1}, num_streams=sets)
    assert compile_properties(settings, sets, cores) == expected


def test_compile_properties_keep_operator_thread_settings() -> None:
    settings = NodeSettings(models_path=Path("."), plugin_config={"INFERENCE_NUM_THREADS": 3}, num_streams=2)
    assert compile_properties(settings, 2, 8) == {"INFERENCE_NUM_THREADS": 3, "ENABLE_CPU_PINNING": False}
