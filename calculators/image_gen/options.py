"""ImageGenCalculatorOptions at load time: every option rule of SPEC §4 and §9, as pure functions.

:func:`parse_options` turns a node's options into a frozen :class:`NodeSettings`, or into the list
of every problem found (each naming its field, e.g. ``node_options.max_resolution``). It only
looks at the filesystem (``models_path`` must exist); it never loads a model. Defaults and per-field
ranges come from :mod:`calculators.image_gen.option_table`; the rules between fields are the small
named functions below, one stage each, run in the order of the table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calculators.image_gen.option_table import MAX_RNG_SEED, OPTIONS, default, range_problem
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import LoadContext, NodeIssue

__all__ = [
    "FIELD_PREFIX",
    "MAX_RNG_SEED",
    "NodeSettings",
    "Resolution",
    "json_kind",
    "parse_devices",
    "parse_options",
    "parse_plugin_config",
    "parse_resolution",
]

#: Prefix of every field name this module reports; the runtime renders it after the node.
FIELD_PREFIX = "node_options."

_RESOLUTION_RE = re.compile(r"^([0-9]+)x([0-9]+)$")
_NUMERIC_RE = re.compile(r"^[0-9]+$")


@dataclass(frozen=True, order=True)
class Resolution:
    """A WIDTHxHEIGHT pair of positive pixel counts."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    def fits_in(self, limit: Resolution) -> bool:
        """Whether both sides are within ``limit``."""
        return self.width <= limit.width and self.height <= limit.height


def parse_resolution(text: str) -> Resolution:
    """``"512x768"`` as a Resolution; raises ValueError with the user-facing reason otherwise."""
    match = _RESOLUTION_RE.match(text)
    if match is None:
        raise ValueError(f'expected WIDTHxHEIGHT, got "{text}"')
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise ValueError(f'expected WIDTHxHEIGHT with both values greater than 0, got "{text}"')
    return Resolution(width, height)


@dataclass(frozen=True)
class NodeSettings:
    """The validated options of one ImageGenCalculator node.

    ``plugin_config`` no longer contains NUM_STREAMS: it became ``num_streams`` (the number of
    pipeline sets in the node's pool). ``static_resolutions`` is empty for dynamic shapes; with one
    entry the models are reshaped to it (``reshaped``).
    """

    models_path: Path
    devices: tuple[str, ...] = ("CPU",)
    plugin_config: Mapping[str, Any] = field(default_factory=dict)
    num_streams: int = 1
    max_resolution: Resolution = Resolution(4096, 4096)
    default_resolution: Resolution | None = None
    max_num_images_per_prompt: int = 10
    default_num_inference_steps: int = 50
    #: Whether the node sets default_num_inference_steps (else some families use the model's own).
    default_steps_given: bool = False
    max_num_inference_steps: int = 100
    static_resolutions: tuple[Resolution, ...] = ()
    static_num_images_per_prompt: int | None = None
    static_guidance_scale: float | None = None
    default_rng_seed: int | None = None

    @property
    def reshaped(self) -> bool:
        """Whether the models are reshaped to a single static resolution before compiling."""
        return len(self.static_resolutions) == 1

    @property
    def uses_npu(self) -> bool:
        return any(d.upper().startswith("NPU") for d in self.devices)


def parse_devices(text: str) -> tuple[str, ...]:
    """``"CPU"`` or ``"CPU GPU NPU"`` (text encoder, denoiser, VAE); raises ValueError otherwise."""
    devices = tuple(text.split())
    if len(devices) not in (1, 3):
        raise ValueError(
            f"expected 1 device or 3 space-separated devices (text encoder, denoiser, VAE), "
            f'got {len(devices)}: "{text}"')
    return devices


def parse_plugin_config(text: str) -> tuple[dict[str, Any], int]:
    """The plugin_config JSON object (``""`` means ``{}``) without NUM_STREAMS, and NUM_STREAMS.

    Raises ValueError with the user-facing reason when it is not a JSON object or NUM_STREAMS is
    not a positive integer (a JSON integer or a numeric string).
    """
    if not text.strip():
        return {}, 1
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, got invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {json_kind(value)}")
    config = dict(value)
    streams_value = config.pop("NUM_STREAMS", 1)
    streams: int | None = None
    if isinstance(streams_value, int) and not isinstance(streams_value, bool):
        streams = streams_value
    elif isinstance(streams_value, str) and _NUMERIC_RE.match(streams_value.strip()):
        streams = int(streams_value.strip())
    if streams is None or streams < 1:
        raise ValueError(f"NUM_STREAMS: expected a positive integer or numeric string, got {json.dumps(streams_value)}")
    return config, streams


def json_kind(value: object) -> str:
    """How a JSON value reads in a message: "an array", "a string", "a boolean", "null", "a number"."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class _Issues:
    """The problems found so far, each naming its ``node_options.`` field."""

    def __init__(self) -> None:
        self.found: list[NodeIssue] = []

    def add(self, fld: str, message: str) -> None:
        self.found.append(NodeIssue(message, field=FIELD_PREFIX + fld))

    def range(self, options: ImageGenCalculatorOptions, fld: str) -> None:
        """The table's range rule for ``fld`` when the node sets it."""
        if options.HasField(fld) and (reason := range_problem(fld, getattr(options, fld))) is not None:
            self.add(fld, reason)


def parse_options(options: ImageGenCalculatorOptions | None, ctx: LoadContext
                  ) -> tuple[NodeSettings | None, list[NodeIssue]]:
    """The node's settings, or None and every problem found (never raises on bad options)."""
    if options is None:
        return None, [NodeIssue(
            "ImageGenCalculator needs node_options "
            "{ [type.googleapis.com/mediapipe.ImageGenCalculatorOptions]: { models_path: \"...\" } }",
            field="node_options")]
    issues = _Issues()
    models_path = _models_path(options, ctx, issues)
    devices = _devices(options, issues)
    plugin_config, num_streams = _plugin_config(options, issues)
    max_resolution = _max_resolution(options, issues)
    static = _static_resolutions(options, max_resolution, issues)
    default_resolution = _default_resolution(options, max_resolution, static, issues)
    _static_only_options(options, static, issues)
    _ranges(options, issues)
    _steps(options, issues)
    _npu_needs_one_static_resolution(options, devices, static, issues)
    if issues.found:
        return None, issues.found
    static_images = options.num_images_per_prompt if options.HasField("num_images_per_prompt") else None
    max_images = options.max_num_images_per_prompt
    if len(static) == 1:
        # The reshaped batch is fixed: the static value is the only count a request may ask for.
        max_images = static_images if static_images is not None else 1
    return NodeSettings(
        models_path=models_path,
        devices=devices,
        plugin_config=plugin_config,
        num_streams=num_streams,
        max_resolution=max_resolution,
        default_resolution=default_resolution,
        max_num_images_per_prompt=max_images,
        default_num_inference_steps=options.default_num_inference_steps,
        default_steps_given=options.HasField("default_num_inference_steps"),
        max_num_inference_steps=options.max_num_inference_steps,
        static_resolutions=tuple(static),
        static_num_images_per_prompt=static_images,
        static_guidance_scale=options.guidance_scale if options.HasField("guidance_scale") else None,
        default_rng_seed=options.default_rng_seed if options.HasField("default_rng_seed") else None,
    ), []


def _models_path(options: ImageGenCalculatorOptions, ctx: LoadContext, issues: _Issues) -> Path:
    """models_path resolved against the graph's folder: required, non-empty, a model folder."""
    models_path = ctx.resolve_path(options.models_path) if options.models_path else ctx.graph_dir
    if not options.HasField("models_path"):
        issues.add("models_path", "required field is missing")
    elif not options.models_path.strip():
        issues.add("models_path", "must not be empty (use \"./\" for the graph's folder)")
    elif not models_path.is_dir():
        issues.add("models_path", f'directory "{options.models_path}" does not exist (resolved to {models_path})')
    elif not (models_path / "model_index.json").is_file():
        issues.add("models_path", f"{models_path} has no model_index.json; expected an OpenVINO GenAI image "
                                  "generation model folder")
    return models_path


def _devices(options: ImageGenCalculatorOptions, issues: _Issues) -> tuple[str, ...]:
    if options.HasField("device"):
        try:
            return parse_devices(options.device)
        except ValueError as exc:
            issues.add("device", str(exc))
    return ("CPU",)


def _plugin_config(options: ImageGenCalculatorOptions, issues: _Issues) -> tuple[dict[str, Any], int]:
    if options.HasField("plugin_config"):
        try:
            return parse_plugin_config(options.plugin_config)
        except ValueError as exc:
            issues.add("plugin_config", str(exc))
    return {}, 1


def _max_resolution(options: ImageGenCalculatorOptions, issues: _Issues) -> Resolution:
    try:
        return parse_resolution(options.max_resolution)
    except ValueError as exc:
        issues.add("max_resolution", str(exc))
    return parse_resolution(default("max_resolution"))


def _static_resolutions(options: ImageGenCalculatorOptions, max_resolution: Resolution,
                        issues: _Issues) -> list[Resolution]:
    """The static resolutions: each WIDTHxHEIGHT once, divisible by 8, within a given max_resolution."""
    static: list[Resolution] = []
    if not options.HasField("resolution"):
        return static
    tokens = options.resolution.split()
    if not tokens:
        issues.add("resolution", "expected one or more space-separated WIDTHxHEIGHT values, got an empty string")
    for token in tokens:
        try:
            res = parse_resolution(token)
        except ValueError as exc:
            issues.add("resolution", str(exc))
            continue
        if res in static:
            issues.add("resolution", f'"{token}" is listed twice')
            continue
        if res.width % 8 or res.height % 8:
            issues.add("resolution", f'"{token}": width and height must be divisible by 8')
        elif options.HasField("max_resolution") and not res.fits_in(max_resolution):
            issues.add("resolution", f'"{token}" exceeds max_resolution {max_resolution}')
        static.append(res)
    return static


def _default_resolution(options: ImageGenCalculatorOptions, max_resolution: Resolution, static: list[Resolution],
                        issues: _Issues) -> Resolution | None:
    """default_resolution: divisible by 8, within max_resolution, one of the static resolutions if any."""
    if not options.HasField("default_resolution"):
        return None
    try:
        default_resolution = parse_resolution(options.default_resolution)
    except ValueError as exc:
        issues.add("default_resolution", str(exc))
        return None
    if default_resolution.width % 8 or default_resolution.height % 8:
        issues.add("default_resolution", f"{default_resolution}: width and height must be divisible by 8")
    if not default_resolution.fits_in(max_resolution):
        issues.add("default_resolution", f"{default_resolution} exceeds max_resolution {max_resolution}")
    if static and default_resolution not in static:
        listed = " ".join(str(r) for r in static)
        issues.add("default_resolution", f"{default_resolution} is not one of the static resolutions ({listed})")
    return default_resolution


def _static_only_options(options: ImageGenCalculatorOptions, static: list[Resolution], issues: _Issues) -> None:
    """num_images_per_prompt and guidance_scale need one static resolution; with one, the dynamic
    limits max_resolution and max_num_images_per_prompt cannot be set."""
    for name in ("num_images_per_prompt", "guidance_scale"):
        if not options.HasField(name):
            continue
        if not options.HasField("resolution"):
            issues.add(name, f'{name} requires a single static resolution (set resolution: "WIDTHxHEIGHT")')
        elif len(static) > 1:
            issues.add(name, f"{name} cannot be used with several static resolutions")
    if len(static) == 1:
        for name in ("max_resolution", "max_num_images_per_prompt"):
            if options.HasField(name):
                issues.add(name, f"cannot be set with a single static resolution (the models are reshaped to "
                                 f"{static[0]}; remove {name})")


def _ranges(options: ImageGenCalculatorOptions, issues: _Issues) -> None:
    """Every set field within its table range (counts > 0, finite scales, seeds below 2**63)."""
    for row in OPTIONS:
        if row.range is not None:
            issues.range(options, row.field)


def _steps(options: ImageGenCalculatorOptions, issues: _Issues) -> None:
    """The default number of steps within the maximum."""
    if 0 < options.max_num_inference_steps < options.default_num_inference_steps:
        issues.add("default_num_inference_steps",
                   f"{options.default_num_inference_steps} exceeds max_num_inference_steps "
                   f"{options.max_num_inference_steps}")


def _npu_needs_one_static_resolution(options: ImageGenCalculatorOptions, devices: tuple[str, ...],
                                     static: list[Resolution], issues: _Issues) -> None:
    if not any(d.upper().startswith("NPU") for d in devices):
        return
    if not options.HasField("resolution"):
        issues.add("resolution", 'NPU requires a static resolution: set resolution: "WIDTHxHEIGHT"')
    elif len(static) > 1:
        issues.add("resolution", f"NPU requires exactly one static resolution, got {len(static)}")
