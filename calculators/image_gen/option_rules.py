"""The rules between ImageGenCalculatorOptions fields (SPEC §4, §9), written once.

Each rule is a small function of an options message (plus what earlier rules parsed) that returns the
:class:`Problem` list it finds: the field to fix, the rule broken and the values involved. It does not
word them. :func:`check` runs them all, in order; a new rule is one function called there plus its
wording. Node validation (:mod:`calculators.image_gen.options`) words a problem for a graph.pbtxt
reader (:func:`graph_reason`, fields by name); the ``pull`` checks
(:func:`calculators.image_gen.graph_writer.check_graph_flags`) word the same problem for the command
line (:func:`flag_message`, fields by their flag from the option table). The two wordings differ beyond
the names only where the command line has always said more (:data:`FLAG_WORDING`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from calculators.image_gen.option_table import FLAGS, OPTIONS, default
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions

_RESOLUTION_RE = re.compile(r"^([0-9]+)x([0-9]+)$")

#: Options that shape a reshaped (single static resolution) model, besides the resolution itself.
STATIC_ONLY_FIELDS: tuple[str, ...] = tuple(row.field for row in OPTIONS
                                            if row.section == "static" and row.field != "resolution")
#: Request limits a reshaped model has no room for.
DYNAMIC_ONLY_FIELDS: tuple[str, ...] = ("max_resolution", "max_num_images_per_prompt")


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

    @property
    def multiple_of_8(self) -> bool:
        return not (self.width % 8 or self.height % 8)


#: max_resolution when a node does not set it (or sets a value that does not parse).
DEFAULT_MAX_RESOLUTION = Resolution(*(int(side) for side in str(default("max_resolution")).split("x")))


@dataclass(frozen=True)
class Problem:
    """A rule ``field`` breaks: ``rule`` keys its wording, ``facts`` are the values the wording shows."""

    field: str
    rule: str
    facts: Mapping[str, object] = field(default_factory=dict)


#: Per rule, the reason a graph.pbtxt reader is given after ``node_options.<field>:``. ``{this}`` is the
#: field itself, ``{<field>}`` another field, as the reader names them; the rest are the problem's facts.
GRAPH_WORDING: dict[str, str] = {
    "range": "{reason}",
    "not_wxh": 'expected WIDTHxHEIGHT, got "{text}"',
    "not_positive_wxh": 'expected WIDTHxHEIGHT with both values greater than 0, got "{text}"',
    "no_static_values": "expected one or more space-separated WIDTHxHEIGHT values, got an empty string",
    "static_twice": '"{text}" is listed twice',
    "static_not_multiple_of_8": '"{text}": width and height must be divisible by 8',
    "static_exceeds_max": '"{text}" exceeds {max_resolution} {limit}',
    "default_not_multiple_of_8": "{value}: width and height must be divisible by 8",
    "default_exceeds_max": "{value} exceeds {max_resolution} {limit}",
    "default_not_static": "{value} is not one of the static resolutions ({listed})",
    "needs_single_static": '{this} requires a single static resolution (set {resolution}: "WIDTHxHEIGHT")',
    "several_static": "{this} cannot be used with several static resolutions",
    "single_static": "cannot be set with a single static resolution (the models are reshaped to {size}; "
                     "remove {this})",
    "steps_above_max": "{value} exceeds {max_num_inference_steps} {limit}",
    "steps_above_default_max": "{value} exceeds {max_num_inference_steps} {limit}",
    "max_below_default_steps": "{value} exceeds {max_num_inference_steps} {limit}",
    "npu_without_static": 'NPU requires a static resolution: set {resolution}: "WIDTHxHEIGHT"',
    "npu_several_static": "NPU requires exactly one static resolution, got {count}",
}

#: Where the command line words a rule its own way (and, for two rules, blames another flag: the one the
#: user gave); every other rule reads as in :data:`GRAPH_WORDING`, with flags for fields.
FLAG_WORDING: dict[str, str] = {
    **GRAPH_WORDING,
    "not_wxh": 'expected WIDTHxHEIGHT (e.g. 512x512), got "{text}"',
    "default_not_multiple_of_8": '"{text}": width and height must be divisible by 8',
    "default_exceeds_max": "{value} exceeds the maximum resolution {limit} ({max_resolution})",
    "default_not_static": "{value} is not one of the static resolutions of {resolution} ({listed})",
    "needs_single_static": "needs a single static {resolution} WIDTHxHEIGHT (it sets the reshaped model's "
                           "batch and guidance)",
    "several_static": 'cannot be used with several static resolutions ({resolution} "{given}")',
    "single_static": "cannot be used with a single static {resolution} (the models are reshaped to {size})",
    "steps_above_default_max": "{value} exceeds the default maximum {limit}",
    "max_below_default_steps": "{limit} is below the default number of steps ({value}); set "
                               "{default_num_inference_steps} too",
    "npu_without_static": "NPU requires a single static {resolution} WIDTHxHEIGHT",
}
_FLAG_BLAME: dict[str, str] = {"max_below_default_steps": "max_num_inference_steps", "npu_without_static": "device"}


def graph_reason(problem: Problem) -> str:
    """``problem`` worded for a graph.pbtxt reader (the text after ``node_options.<field>:``)."""
    return _word(GRAPH_WORDING[problem.rule], problem, {row.field: row.field for row in OPTIONS})


def flag_message(problem: Problem) -> str:
    """``problem`` worded for the command line, ``--flag: reason``, each field named by its flag."""
    names = {row.field: FLAGS.get(row.field, row.field) for row in OPTIONS}
    blamed = _FLAG_BLAME.get(problem.rule, problem.field)
    return f"{names[blamed]}: {_word(FLAG_WORDING[problem.rule], problem, names)}"


def _word(template: str, problem: Problem, names: Mapping[str, str]) -> str:
    return template.format(this=names[problem.field], **names, **problem.facts)


@dataclass(frozen=True)
class Checked:
    """What :func:`check` found: the parsed sizes (a size that does not parse is the default or None)
    and every problem, in rule order."""

    max_resolution: Resolution
    static: list[Resolution]
    default_resolution: Resolution | None
    problems: list[Problem]


def check(options: ImageGenCalculatorOptions, devices: tuple[str, ...], *, ranges_too: bool = True) -> Checked:
    """Every rule below, in order, on ``options`` (``devices`` parsed from its device; empty when that does
    not parse). ``ranges_too=False`` leaves the per-field ranges to a caller that checks them itself."""
    max_resolution, problems = parse_size("max_resolution", options.max_resolution)
    max_resolution = max_resolution or DEFAULT_MAX_RESOLUTION
    static, found = static_resolutions(options, max_resolution)
    problems += found
    default, found = default_resolution(options, max_resolution, static)
    problems += found + static_only_options(options, static)
    problems += (ranges(options) if ranges_too else []) + steps(options)
    problems += npu_needs_one_static_resolution(options, devices, static)
    return Checked(max_resolution, static, default, problems)


def parse_size(fld: str, text: str) -> tuple[Resolution | None, list[Problem]]:
    """``text`` (``"512x768"``) as a Resolution of ``fld``, or None and why not."""
    match = _RESOLUTION_RE.match(text)
    if match is None:
        return None, [Problem(fld, "not_wxh", {"text": text})]
    size = Resolution(int(match.group(1)), int(match.group(2)))
    if size.width <= 0 or size.height <= 0:
        return None, [Problem(fld, "not_positive_wxh", {"text": text})]
    return size, []


def ranges(options: ImageGenCalculatorOptions) -> list[Problem]:
    """Every set field within its table range (counts > 0, finite scales, seeds below 2**63)."""
    problems = []
    for row in OPTIONS:
        reason = row.range_problem(getattr(options, row.field)) if row.range and options.HasField(row.field) else None
        if reason is not None:
            problems.append(Problem(row.field, "range", {"reason": reason}))
    return problems


def static_resolutions(options: ImageGenCalculatorOptions, max_resolution: Resolution
                       ) -> tuple[list[Resolution], list[Problem]]:
    """The static resolutions: each WIDTHxHEIGHT once, divisible by 8, within a given max_resolution."""
    static: list[Resolution] = []
    problems: list[Problem] = []
    if not options.HasField("resolution"):
        return static, problems
    tokens = options.resolution.split()
    if not tokens:
        problems.append(Problem("resolution", "no_static_values"))
    for token in tokens:
        size, bad = parse_size("resolution", token)
        problems += bad
        if size is None:
            continue
        if size in static:
            problems.append(Problem("resolution", "static_twice", {"text": token}))
            continue
        if not size.multiple_of_8:
            problems.append(Problem("resolution", "static_not_multiple_of_8", {"text": token}))
        elif options.HasField("max_resolution") and not size.fits_in(max_resolution):
            problems.append(Problem("resolution", "static_exceeds_max", {"text": token, "limit": max_resolution}))
        static.append(size)
    return static, problems


def default_resolution(options: ImageGenCalculatorOptions, max_resolution: Resolution,
                       static: list[Resolution]) -> tuple[Resolution | None, list[Problem]]:
    """default_resolution: divisible by 8, within max_resolution, one of the static resolutions if any."""
    if not options.HasField("default_resolution"):
        return None, []
    text = options.default_resolution
    size, problems = parse_size("default_resolution", text)
    if size is None:
        return None, problems
    facts = {"text": text, "value": size}
    if not size.multiple_of_8:
        problems.append(Problem("default_resolution", "default_not_multiple_of_8", facts))
    if not size.fits_in(max_resolution):
        problems.append(Problem("default_resolution", "default_exceeds_max", {**facts, "limit": max_resolution}))
    if static and size not in static:
        listed = " ".join(str(r) for r in static)
        problems.append(Problem("default_resolution", "default_not_static", {**facts, "listed": listed}))
    return size, problems


def static_only_options(options: ImageGenCalculatorOptions, static: list[Resolution]) -> list[Problem]:
    """The static-shape options need one static resolution; with one, the dynamic limits cannot be set."""
    problems = []
    for name in STATIC_ONLY_FIELDS:
        if not options.HasField(name):
            continue
        if not options.HasField("resolution"):
            problems.append(Problem(name, "needs_single_static"))
        elif len(static) > 1:
            problems.append(Problem(name, "several_static", {"given": options.resolution}))
    if len(static) == 1:
        problems += [Problem(name, "single_static", {"size": static[0]})
                     for name in DYNAMIC_ONLY_FIELDS if options.HasField(name)]
    return problems


def steps(options: ImageGenCalculatorOptions) -> list[Problem]:
    """The default number of steps (given or the proto's) within the maximum (given or the proto's)."""
    default_steps, max_steps = options.default_num_inference_steps, options.max_num_inference_steps
    if not 0 < max_steps < default_steps:
        return []
    if not options.HasField("default_num_inference_steps"):
        rule = "max_below_default_steps"
    elif not options.HasField("max_num_inference_steps"):
        rule = "steps_above_default_max"
    else:
        rule = "steps_above_max"
    return [Problem("default_num_inference_steps", rule, {"value": default_steps, "limit": max_steps})]


def npu_needs_one_static_resolution(options: ImageGenCalculatorOptions, devices: tuple[str, ...],
                                    static: list[Resolution]) -> list[Problem]:
    """A node with an NPU device is reshaped: exactly one static resolution."""
    if not any(d.upper().startswith("NPU") for d in devices):
        return []
    if not options.HasField("resolution"):
        return [Problem("resolution", "npu_without_static")]
    if len(static) > 1:
        return [Problem("resolution", "npu_several_static", {"count": len(static)})]
    return []
