"""Warm-up before readiness: each pipeline set of an SD or SDXL node runs one small generate at load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from calculators.image_gen.model_info import read_model_info
from calculators.image_gen.options import Resolution
from calculators.image_gen.warmup import warm_up_kwargs
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.helpers import F32, TINY, node_text, registry, wait_for_tiny_models


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models(("sd15", "flux"))


def load_log(tmp_path: Path, caplog: pytest.LogCaptureFixture, *options: str) -> list[str]:
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"), \
            CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt") as node:
        assert node.graph.concurrency >= 1
    return [r.getMessage() for r in caplog.records if "warm" in r.getMessage()]


def test_every_set_of_an_sd_node_is_warmed_at_a_small_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (line,) = load_log(tmp_path, caplog, f'models_path: "{TINY / "sd15"}"',
                       """plugin_config: '{"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 2}'""")
    assert line.startswith('node "gen": warmed up 2 pipeline set(s) (1 step at 64x64) in ')


def test_a_static_node_is_warmed_at_its_compiled_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (line,) = load_log(tmp_path, caplog, f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                       'resolution: "32x32"', "num_images_per_prompt: 2", "guidance_scale: 3.0")
    assert line.startswith('node "gen": warmed up 1 pipeline set(s) (1 step at 32x32) in ')


@pytest.mark.parametrize(("options", "reason"), [
    ((f'models_path: "{TINY / "flux"}"',), "FLUX models are not warmed"),
    ((f'models_path: "{TINY / "sd15"}"',
      f'lora_adapters {{ alias: "style" path: "{TINY / "loras" / "lora_a.safetensors"}" }}'), "LoRA adapters"),
])
def test_nodes_whose_first_generate_fixes_state_are_not_warmed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, options: tuple[str, ...], reason: str) -> None:
    (line,) = load_log(tmp_path, caplog, *options, f"plugin_config: '{F32}'")
    assert line == f'node "gen": no warm-up ({reason}); the first request of each set prepares its models'


def test_dynamic_warm_up_size_respects_the_models_size_multiple() -> None:
    from calculators.image_gen.options import NodeSettings

    info = read_model_info(TINY / "sd15")
    settings = NodeSettings(models_path=TINY / "sd15")
    kwargs = warm_up_kwargs(settings, info)
    assert kwargs["width"] == kwargs["height"] >= 64
    assert kwargs["width"] % info.size_multiple == 0
    assert Resolution(kwargs["width"], kwargs["height"]) == Resolution(64, 64)
