"""One set of rules between options: ``pull`` refuses exactly the flag sets whose options a node refuses."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from calculators.image_gen.graph_writer import GraphFlags, check_graph_flags
from calculators.image_gen.option_rules import FLAG_WORDING, GRAPH_WORDING, Problem, flag_message, graph_reason
from calculators.image_gen.option_table import DIRECT_FLAG_ROWS
from calculators.image_gen.options import parse_options
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import LoadContext
from tests.calculators.image_gen.helpers import fake_model

VALUES: dict[str, tuple[object, ...]] = {
    "device": (None, "NPU", "CPU GPU NPU"),
    "resolution": (None, "512x512", "512x512 768x768", "500x512", "512x512 512x512", "big"),
    "max_resolution": (None, "1024x1024", "500x500", "4096"),
    "default_resolution": (None, "512x512", "500x512", "2048x2048"),
    "num_images_per_prompt": (None, 2, 0),
    "guidance_scale": (None, 3.0),
    "max_num_images_per_prompt": (None, 3),
    "default_num_inference_steps": (None, 30, 120, 0),
    "max_num_inference_steps": (None, 20, 0),
}


def node_options(flags: GraphFlags) -> ImageGenCalculatorOptions:
    """What a hand-written graph with the same options as ``flags`` holds (static options kept)."""
    options = ImageGenCalculatorOptions(models_path="model")
    if flags.device is not None:
        options.device = flags.device
    for row in DIRECT_FLAG_ROWS:
        if getattr(flags, row.field) is not None:
            setattr(options, row.field, getattr(flags, row.field))
    return options


def test_pull_and_node_refuse_the_same_options(tmp_path: Path) -> None:
    fake_model(tmp_path / "model")
    ctx = LoadContext("g", tmp_path / "graph.pbtxt")
    disagree = []
    for combo in itertools.product(*VALUES.values()):
        flags = GraphFlags(**{k: v for k, v in zip(VALUES, combo, strict=True) if v is not None})
        refused_by_pull = bool(check_graph_flags(flags))
        refused_by_node = bool(parse_options(node_options(flags), ctx)[1])
        if refused_by_pull != refused_by_node:
            disagree.append(flags)
    assert disagree[:3] == []


@pytest.mark.parametrize("rule", sorted(GRAPH_WORDING))
def test_every_rule_is_worded_for_both(rule: str) -> None:
    """Every wording formats with the facts its rule gives (names come from the table)."""
    facts = {"reason": "r", "text": "t", "value": "v", "limit": "l", "listed": "a b", "given": "g", "size": "s",
             "count": 2}
    problem = Problem("resolution", rule, facts)
    assert graph_reason(problem) and flag_message(problem).startswith("--")
    assert sorted(FLAG_WORDING) == sorted(GRAPH_WORDING)


def test_flag_wording_names_flags() -> None:
    problem = Problem("default_num_inference_steps", "max_below_default_steps", {"value": 50, "limit": 20})
    assert flag_message(problem) == ("--max_num_inference_steps: 20 is below the default number of steps (50); "
                                     "set --default_num_inference_steps too")
    assert graph_reason(problem) == "50 exceeds max_num_inference_steps 20"
    npu = Problem("resolution", "npu_without_static")
    assert graph_reason(npu) == 'NPU requires a static resolution: set resolution: "WIDTHxHEIGHT"'
    assert flag_message(npu) == "--target_device: NPU requires a single static --resolution WIDTHxHEIGHT"
