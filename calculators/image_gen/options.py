"""ImageGenCalculatorOptions at load time: every option rule of SPEC §4 and §9, as pure functions.

:func:`parse_options` turns a node's options into a frozen :class:`NodeSettings`, or into the list
of every problem found (each naming its field, e.g. ``node_options.max_resolution``). It only
looks at the filesystem (``models_path`` must exist); it never loads a model. Defaults and per-field
ranges come from :mod:`calculators.image_gen.option_table`; the rules between fields are those of
:mod:`calculators.image_gen.option_rules` (the ``pull`` flags are checked with the same ones), worded
here with field names. What only a node has (models_path, devices, plugin_config) is checked below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calculators.image_gen import option_rules
from calculators.image_gen.option_rules import Problem, Resolution, graph_reason, parse_size
from calculators.image_gen.option_table import MAX_RNG_SEED
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

_NUMERIC_RE = re.compile(r"^[0-9]+$")


def parse_resolution(text: str) -> Resolution:
    """``"512x768"`` as a Resolution; raises ValueError with the user-facing reason otherwise."""
    size, problems = parse_size("resolution", text)
    if size is None:
        raise ValueError(graph_reason(problems[0]))
    return size


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
    max_resolution: Resolution = field(default=Resolution(4096, 4096))
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

    def broken(self, problems: list[Problem]) -> None:
        """Rules of :mod:`calculators.image_gen.option_rules` that the node breaks, worded for its graph."""
        for problem in problems:
            self.add(problem.field, graph_reason(problem))


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
    checked = option_rules.check(options, devices)
    issues.broken(checked.problems)
    if issues.found:
        return None, issues.found
    static_images = options.num_images_per_prompt if options.HasField("num_images_per_prompt") else None
    max_images = options.max_num_images_per_prompt
    static = checked.static
    if len(static) == 1:
        # The reshaped batch is fixed: the static value is the only count a request may ask for.
        max_images = static_images if static_images is not None else 1
    return NodeSettings(
        models_path=models_path,
        devices=devices,
        plugin_config=plugin_config,
        num_streams=num_streams,
        max_resolution=checked.max_resolution,
        default_resolution=checked.default_resolution,
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
