"""graph.pbtxt for a pulled image generation model, written from command-line flags.

:func:`check_graph_flags` applies the calculator's option rules (SPEC §4,
:mod:`calculators.image_gen.option_rules`) to the flags (every problem, each naming its flag) before
anything is downloaded; :func:`render_graph` builds the
ImageGenCalculatorOptions message (:func:`graph_options`) and writes it with protobuf's
``text_format``, field by field in the order of :mod:`calculators.image_gen.option_table`, with a
comment per section and only the options that were given. Defaults, ranges and the field-to-flag
map come from that table; the calculator validates the options again when the graph loads.

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

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from calculators.image_gen import option_rules
from calculators.image_gen.option_table import BY_FIELD, DIRECT_FLAG_ROWS, OPTIONS, with_flag_fields
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions, LoraLoadMode

_DEVICES = ("CPU", "GPU", "NPU")


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
class _GraphFlags:
    models_path: str = "./"
    device: str | None = None
    num_streams: int | None = None
    lora_adapters: tuple[LoraAdapterLine, ...] = ()
    composite_lora_adapters: tuple[CompositeLine, ...] = ()

    @property
    def uses_npu(self) -> bool:
        return self.device is not None and "NPU" in self.device.split()


GraphFlags = with_flag_fields(_GraphFlags, """The flags that shape graph.pbtxt; None means "not given" and keeps
    the option out. Besides the fields above, one per ``--<field>`` row of the option table (``resolution``,
    ``max_num_inference_steps``, ...), named like the proto field.""")


def check_graph_flags(flags: GraphFlags) -> list[str]:
    """Every problem with ``flags`` (empty when they make a valid ImageGenCalculator node).

    The rules are the calculator's (:mod:`calculators.image_gen.option_rules`), applied to the options
    the flags would write and worded with the flags' names; ``--target_device`` and ``--num_streams``
    have checks of their own shape.
    """
    device_problems = _device_problems(flags)
    devices = () if device_problems or flags.device is None else tuple(flags.device.split())
    checked = option_rules.check(_given_options(flags), devices, ranges_too=False)
    return (device_problems + _range_problems(flags)
            + [option_rules.flag_message(problem) for problem in checked.problems])


def _given_options(flags: GraphFlags) -> ImageGenCalculatorOptions:
    """The option fields the flags set, as given (a value the field cannot hold is left out: its range
    check names it)."""
    options = ImageGenCalculatorOptions()
    for row in DIRECT_FLAG_ROWS:
        value = getattr(flags, row.field)
        if value is not None:
            with contextlib.suppress(ValueError, TypeError):
                setattr(options, row.field, value)
    return options


def _device_problems(flags: GraphFlags) -> list[str]:
    if flags.device is None:
        return []
    parts = flags.device.split()
    if len(parts) in (1, 3) and all(p in _DEVICES for p in parts):
        return []
    return [f'--target_device: expected CPU, GPU, NPU or three of them ("CPU GPU NPU"), got "{flags.device}"']


def _range_problems(flags: GraphFlags) -> list[str]:
    """--num_streams > 0, then each flag-set field's range rule from the table."""
    problems = []
    if flags.num_streams is not None and flags.num_streams <= 0:
        problems.append(f"--num_streams: must be greater than 0, got {flags.num_streams}")
    for row in DIRECT_FLAG_ROWS:
        reason = row.range_problem(getattr(flags, row.field))
        if reason is not None:
            problems.append(f"{row.flag}: {reason}")
    return problems


# ----- rendering -----

def graph_options(flags: GraphFlags) -> ImageGenCalculatorOptions:
    """The ImageGenCalculatorOptions ``flags`` describe (assumed checked); unset flags stay unset."""
    options = ImageGenCalculatorOptions(models_path=flags.models_path)
    if flags.device is not None:
        options.device = flags.device
    if flags.num_streams is not None:
        options.plugin_config = json.dumps({"NUM_STREAMS": flags.num_streams})
    _set_direct_fields(options, flags)
    _add_loras(options, flags)
    return options


def _set_direct_fields(options: ImageGenCalculatorOptions, flags: GraphFlags) -> None:
    """The fields a ``--<field>`` flag sets; static-shape options only exist with a static resolution."""
    for row in DIRECT_FLAG_ROWS:
        value = getattr(flags, row.field)
        if value is None or (row.section == "static" and flags.resolution is None):
            continue
        setattr(options, row.field, " ".join(value.split()) if row.field == "resolution" else value)


def _add_loras(options: ImageGenCalculatorOptions, flags: GraphFlags) -> None:
    """lora_adapters and composite_lora_adapters from ``--source_loras``; an alpha of None stays unset."""
    for adapter in flags.lora_adapters:
        entry = options.lora_adapters.add(alias=adapter.alias, path=adapter.path,
                                          mode=LoraLoadMode.Value(adapter.mode))
        if adapter.alpha is not None:
            entry.alpha = adapter.alpha
    for composite in flags.composite_lora_adapters:
        group = options.composite_lora_adapters.add(alias=composite.alias)
        for component in composite.components:
            part = group.components.add(adapter_alias=component.adapter_alias)
            if component.alpha is not None:
                part.alpha = component.alpha


def _static_heading(options: ImageGenCalculatorOptions) -> list[str]:
    if len(options.resolution.split()) == 1:
        return ["# Static shape: the models are reshaped to this resolution at load."]
    return ["# Static resolutions: the only sizes a request may ask for."]


def _lora_heading(options: ImageGenCalculatorOptions) -> list[str]:
    if options.lora_adapters and options.lora_adapters[0].mode == LoraLoadMode.STATIC:
        return ["# LoRA adapters (--source_loras), STATIC on NPU: compiled in with fixed alphas; only the",
                "# adapter's alias (or, with several, the composite's) is a model name."]
    return ['# LoRA adapters (--source_loras): a request picks one with "model": "<alias>";',
            '# the graph\'s own name runs the base model. "lora_alphas" overrides alphas.']


#: The comment lines that open a section of the options block (after a blank line).
_SECTION_HEADINGS: dict[str, Callable[[ImageGenCalculatorOptions], list[str]]] = {
    "static": _static_heading,
    "limits": lambda options: ["# Request limits and defaults."],
    "loras": _lora_heading,
}


def _one_line(options: ImageGenCalculatorOptions) -> str:
    line: str = text_format.MessageToString(options, as_one_line=True, as_utf8=True)
    return line


def _field_lines(options: ImageGenCalculatorOptions, field: str) -> list[str]:
    """``field`` of ``options`` as text_format lines: one per repeated entry. A string holding double
    quotes (plugin_config's JSON) is written in single quotes when that needs no escaping."""
    value = getattr(options, field)
    if BY_FIELD[field].repeated:
        lines = []
        for entry in value:
            single = ImageGenCalculatorOptions()
            getattr(single, field).add().CopyFrom(entry)
            lines.append(_one_line(single))
        return lines
    if isinstance(value, str) and '"' in value and not re.search(r"['\\\x00-\x1f]", value):
        return [f"{field}: '{value}'"]
    single = ImageGenCalculatorOptions()
    setattr(single, field, value)
    return [_one_line(single)]


def render_options(options: ImageGenCalculatorOptions) -> list[str]:
    """The fields ``options`` sets, in table order: each section opened by its heading comment."""
    body: list[str] = []
    section = OPTIONS[0].section
    for row in OPTIONS:
        if not (len(getattr(options, row.field)) if row.repeated else options.HasField(row.field)):
            continue
        if row.section != section:
            section = row.section
            body += ["", *_SECTION_HEADINGS[section](options)]
        if row.comment:
            body.append(f"# {row.comment}")
        body += _field_lines(options, row.field)
    return body


def render_graph(flags: GraphFlags, *, header: str | None = None) -> str:
    """graph.pbtxt text for ``flags`` (assumed checked); ``header`` becomes leading comment lines."""
    return graph_text(graph_options(flags), header=header)


def graph_text(options: ImageGenCalculatorOptions, *, header: str | None = None) -> str:
    """graph.pbtxt text of one ImageGenCalculator node with ``options``; ``header`` becomes leading
    comment lines."""
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
    lines += [("          " + line) if line else "" for line in render_options(options)]
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
