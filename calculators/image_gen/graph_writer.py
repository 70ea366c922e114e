"""graph.pbtxt for a pulled image generation model, written from command-line flags.

:func:`check_graph_flags` applies the option rules of SPEC §4 to the flags (every problem, each
naming its flag) before anything is downloaded; :func:`render_graph` writes the text in the
reference document's layout, with a comment per section and only the options that were given.
The runtime never depends on calculators, so the ImageGenCalculatorOptions block is rendered as
text here; the calculator validates it again when the graph loads.

Example output::

    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"

    node: {
      name: "ImageGenExecutor"
      calculator: "ImageGenCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:input"
      input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
      output_stream: "HTTP_RESPONSE_PAYLOAD:output"
      node_options: {
          [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
              models_path: "./"
              device: "CPU"
          }
      }
    }
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_encoding

_RESOLUTION_RE = re.compile(r"^([0-9]+)x([0-9]+)$")
_DEVICES = ("CPU", "GPU", "NPU")
DEFAULT_MAX_RESOLUTION = (4096, 4096)
DEFAULT_NUM_INFERENCE_STEPS = 50
DEFAULT_MAX_NUM_INFERENCE_STEPS = 100


@dataclass(frozen=True)
class LoraAdapterLine:
    """One ``lora_adapters`` entry; ``alpha`` None leaves the field out (1.0)."""

    alias: str
    path: str
    alpha: float | None
    mode: str  # "DYNAMIC" or "STATIC"


@dataclass(frozen=True)
class CompositeComponentLine:
    adapter_alias: str
    alpha: float | None


@dataclass(frozen=True)
class CompositeLine:
    """One ``composite_lora_adapters`` entry."""

    alias: str
    components: tuple[CompositeComponentLine, ...]


@dataclass(frozen=True)
class GraphFlags:
    """The flags that shape graph.pbtxt; None means "not given" and keeps the option out."""

    models_path: str = "./"
    device: str | None = None
    num_streams: int | None = None
    resolution: str | None = None
    max_resolution: str | None = None
    default_resolution: str | None = None
    max_num_images_per_prompt: int | None = None
    default_num_inference_steps: int | None = None
    max_num_inference_steps: int | None = None
    num_images_per_prompt: int | None = None
    guidance_scale: float | None = None
    lora_adapters: tuple[LoraAdapterLine, ...] = ()
    composite_lora_adapters: tuple[CompositeLine, ...] = ()

    @property
    def uses_npu(self) -> bool:
        return self.device is not None and "NPU" in self.device.split()


def _resolution(flag: str, text: str, problems: list[str]) -> tuple[int, int] | None:
    match = _RESOLUTION_RE.match(text)
    if match is None:
        problems.append(f'{flag}: expected WIDTHxHEIGHT (e.g. 512x512), got "{text}"')
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        problems.append(f'{flag}: expected WIDTHxHEIGHT with both values greater than 0, got "{text}"')
        return None
    if width % 8 or height % 8:
        problems.append(f'{flag}: "{text}": width and height must be divisible by 8')
        return None
    return width, height


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _fits(size: tuple[int, int], limit: tuple[int, int]) -> bool:
    return size[0] <= limit[0] and size[1] <= limit[1]


def check_graph_flags(flags: GraphFlags) -> list[str]:
    """Every problem with ``flags`` (empty when they make a valid ImageGenCalculator node).

    The rules are the calculator's load-time rules, phrased for the command line.
    """
    problems: list[str] = []
    if flags.device is not None:
        parts = flags.device.split()
        if len(parts) not in (1, 3) or any(p not in _DEVICES for p in parts):
            problems.append(f'--target_device: expected CPU, GPU, NPU or three of them ("CPU GPU NPU"), '
                            f'got "{flags.device}"')
    for flag, value in (("--num_streams", flags.num_streams),
                        ("--max_num_images_per_prompt", flags.max_num_images_per_prompt),
                        ("--default_num_inference_steps", flags.default_num_inference_steps),
                        ("--max_num_inference_steps", flags.max_num_inference_steps),
                        ("--num_images_per_prompt", flags.num_images_per_prompt)):
        if value is not None and value <= 0:
            problems.append(f"{flag}: must be greater than 0, got {value}")
    if flags.guidance_scale is not None and not math.isfinite(flags.guidance_scale):
        problems.append(f"--guidance_scale: must be a finite number, got {flags.guidance_scale}")

    max_resolution = DEFAULT_MAX_RESOLUTION
    if flags.max_resolution is not None:
        parsed = _resolution("--max_resolution", flags.max_resolution, problems)
        max_resolution = parsed or max_resolution

    static: list[tuple[int, int]] = []
    if flags.resolution is not None:
        tokens = flags.resolution.split()
        if not tokens:
            problems.append("--resolution: expected one or more space-separated WIDTHxHEIGHT values, got an empty "
                            "string")
        for token in tokens:
            size = _resolution("--resolution", token, problems)
            if size is None:
                continue
            if size in static:
                problems.append(f'--resolution: "{token}" is listed twice')
                continue
            if flags.max_resolution is not None and not _fits(size, max_resolution):
                problems.append(f'--resolution: "{token}" exceeds --max_resolution {_fmt(max_resolution)}')
            static.append(size)

    if flags.default_resolution is not None:
        default = _resolution("--default_resolution", flags.default_resolution, problems)
        if default is not None:
            if not _fits(default, max_resolution):
                problems.append(f"--default_resolution: {_fmt(default)} exceeds the maximum resolution "
                                f"{_fmt(max_resolution)} (--max_resolution)")
            if static and default not in static:
                listed = " ".join(_fmt(s) for s in static)
                problems.append(f"--default_resolution: {_fmt(default)} is not one of the static resolutions "
                                f"of --resolution ({listed})")

    for flag, given in (("--num_images_per_prompt", flags.num_images_per_prompt is not None),
                        ("--guidance_scale", flags.guidance_scale is not None)):
        if not given:
            continue
        if flags.resolution is None:
            problems.append(f"{flag}: needs a single static --resolution WIDTHxHEIGHT (it sets the reshaped "
                            "model's batch and guidance)")
        elif len(static) > 1:
            problems.append(f"{flag}: cannot be used with several static resolutions (--resolution "
                            f'"{flags.resolution}")')
    if len(static) == 1:
        for flag, given in (("--max_resolution", flags.max_resolution is not None),
                            ("--max_num_images_per_prompt", flags.max_num_images_per_prompt is not None)):
            if given:
                problems.append(f"{flag}: cannot be used with a single static --resolution (the models are "
                                f"reshaped to {_fmt(static[0])})")

    default_steps = flags.default_num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS
    max_steps = flags.max_num_inference_steps or DEFAULT_MAX_NUM_INFERENCE_STEPS
    if default_steps > max_steps:
        if flags.default_num_inference_steps is None:
            problems.append(f"--max_num_inference_steps: {max_steps} is below the default number of steps "
                            f"({default_steps}); set --default_num_inference_steps too")
        else:
            which = "--max_num_inference_steps" if flags.max_num_inference_steps else "the default maximum"
            problems.append(f"--default_num_inference_steps: {default_steps} exceeds {which} {max_steps}")

    if flags.uses_npu:
        if flags.resolution is None:
            problems.append('--target_device: NPU requires a single static --resolution WIDTHxHEIGHT')
        elif len(flags.resolution.split()) > 1:
            problems.append(f"--resolution: NPU requires exactly one static resolution, got "
                            f"{len(flags.resolution.split())}")
    return problems


def _string(value: str) -> str:
    escaped: str = text_encoding.CEscape(value, as_utf8=True)  # type: ignore[arg-type]  # str is accepted
    return '"' + escaped + '"'


def _float(value: float) -> str:
    return repr(float(value))


def render_graph(flags: GraphFlags, *, header: str | None = None) -> str:
    """graph.pbtxt text for ``flags`` (assumed checked); ``header`` becomes leading comment lines."""
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()]
        lines.append("")
    lines += [
        'input_stream: "HTTP_REQUEST_PAYLOAD:input"',
        'output_stream: "HTTP_RESPONSE_PAYLOAD:output"',
        "",
        "node: {",
        '  name: "ImageGenExecutor"',
        '  calculator: "ImageGenCalculator"',
        '  input_stream: "HTTP_REQUEST_PAYLOAD:input"',
        "  # ImageGenCalculator needs exactly this side packet: the pipelines, built once at load.",
        '  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"',
        '  output_stream: "HTTP_RESPONSE_PAYLOAD:output"',
        "  node_options: {",
        "      [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {",
    ]
    body: list[str] = []

    def opt(name: str, value: str) -> None:
        body.append(f"{name}: {value}")

    body.append("# Folder holding model_index.json, relative to this file.")
    opt("models_path", _string(flags.models_path))
    if flags.device is not None:
        opt("device", _string(flags.device))
    if flags.num_streams is not None:
        body.append("# NUM_STREAMS: how many requests this node generates at once.")
        opt("plugin_config", "'" + json.dumps({"NUM_STREAMS": flags.num_streams}) + "'")

    if flags.resolution is not None:
        body.append("")
        if len(flags.resolution.split()) == 1:
            body.append("# Static shape: the models are reshaped to this resolution at load.")
        else:
            body.append("# Static resolutions: the only sizes a request may ask for.")
        opt("resolution", _string(" ".join(flags.resolution.split())))
        if flags.num_images_per_prompt is not None:
            opt("num_images_per_prompt", str(flags.num_images_per_prompt))
        if flags.guidance_scale is not None:
            opt("guidance_scale", _float(flags.guidance_scale))

    limits = [(name, value) for name, value in (
        ("max_resolution", flags.max_resolution), ("default_resolution", flags.default_resolution))
        if value is not None]
    counts = [(name, value) for name, value in (
        ("max_num_images_per_prompt", flags.max_num_images_per_prompt),
        ("default_num_inference_steps", flags.default_num_inference_steps),
        ("max_num_inference_steps", flags.max_num_inference_steps)) if value is not None]
    if limits or counts:
        body.append("")
        body.append("# Request limits and defaults.")
        for name, text in limits:
            opt(name, _string(text))
        for name, number in counts:
            opt(name, str(number))

    if flags.lora_adapters:
        mode = flags.lora_adapters[0].mode
        body.append("")
        if mode == "STATIC":
            body.append("# LoRA adapters (--source_loras), STATIC on NPU: compiled in with fixed alphas; only the")
            body.append("# adapter's alias (or, with several, the composite's) is a model name.")
        else:
            body.append('# LoRA adapters (--source_loras): a request picks one with "model": "<alias>";')
            body.append('# the graph\'s own name runs the base model. "lora_alphas" overrides alphas.')
        for adapter in flags.lora_adapters:
            alpha = f" alpha: {_float(adapter.alpha)}" if adapter.alpha is not None else ""
            body.append(f"lora_adapters {{ alias: {_string(adapter.alias)} path: {_string(adapter.path)}{alpha} "
                        f"mode: {adapter.mode} }}")
    if flags.composite_lora_adapters:
        body.append("# Composite adapters: blends of the adapters above, in the order listed.")
        for composite in flags.composite_lora_adapters:
            parts = []
            for component in composite.components:
                alpha = f" alpha: {_float(component.alpha)}" if component.alpha is not None else ""
                parts.append(f"components {{ adapter_alias: {_string(component.adapter_alias)}{alpha} }}")
            body.append(f"composite_lora_adapters {{ alias: {_string(composite.alias)} {' '.join(parts)} }}")

    lines += [("          " + line) if line else "" for line in body]
    lines += [
        "      }",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def write_graph(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically; False (and the file untouched) when it already holds it."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True
