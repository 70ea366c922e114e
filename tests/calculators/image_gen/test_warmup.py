"""Warm-up before readiness: every pipeline set of every family runs each task it serves once at load,
with what a request that leaves every optional field out passes, so the first request after load
gives exactly the pixels a fresh openvino_genai pipeline gives (warm-up changes nothing a user sees)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import calculators.image_gen.warmup as warmup
from calculators.image_gen.model_info import read_model_info
from calculators.image_gen.options import NodeSettings, Resolution
from calculators.image_gen.pipelines import Task, compile_properties
from calculators.image_gen.warmup import edit_steps, warm_up_kwargs
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.conftest import start_server
from tests.calculators.image_gen.helpers import (
    F32,
    TINY,
    graph_text,
    node_text,
    png_bytes,
    registry,
    wait_for_tiny_models,
)
from tests.calculators.image_gen.test_families import GENAI_CLASSES, direct_images, served_images

LORA_A = TINY / "loras" / "lora_a.safetensors"
ALL_TASKS = "text-to-image, image-to-image, inpainting"


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models(("sd15", "sd15-inpaint", "sdxl", "sd3", "flux", "lcm"))


def load_log(tmp_path: Path, caplog: pytest.LogCaptureFixture, *options: str) -> list[str]:
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"), \
            CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt") as node:
        assert node.graph.concurrency >= 1
    return [r.getMessage() for r in caplog.records if "warm" in r.getMessage()]


def seconds_removed(line: str) -> str:
    """``line`` without its total and per-task seconds (" (0.1 s)"), which are checked to be numbers."""
    head, sep, tail = line.rpartition("; in ")
    assert sep and tail.endswith(" s") and float(tail[:-2]) >= 0, line
    return re.sub(r" \(\d+\.\d s\)", "", head)


@pytest.mark.parametrize(("model", "streams", "tasks"), [
    ("sd15", 2, ALL_TASKS),
    ("sd15-inpaint", 1, "inpainting"),
    ("sdxl", 1, ALL_TASKS),
    ("sd3", 2, ALL_TASKS),
    ("flux", 1, ALL_TASKS),
    ("lcm", 1, ALL_TASKS),
])
def test_every_family_warms_every_set_and_task(tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str,
                                               streams: int, tasks: str) -> None:
    (line,) = load_log(tmp_path, caplog, f'models_path: "{TINY / model}"',
                       f"""plugin_config: '{{"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": {streams}}}'""")
    assert seconds_removed(line) == (f'node "gen": warmed up {streams} pipeline set(s): {tasks} at 64x64, '
                                     "one denoising step each")
    assert len(re.findall(r"\w \(\d+\.\d s\)", line)) == len(tasks.split(", ")), "seconds per task"


def test_a_static_node_is_warmed_at_its_compiled_shape(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (line,) = load_log(tmp_path, caplog, f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                       'resolution: "32x32"', "guidance_scale: 3.0")
    assert seconds_removed(line) == (f'node "gen": warmed up 1 pipeline set(s): {ALL_TASKS} at 32x32, '
                                     "one denoising step each")


def test_a_task_the_node_cannot_serve_is_neither_built_nor_warmed(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Static for 2 images per prompt: openvino_genai cannot edit there, so only text-to-image is built.
    lines = load_log(tmp_path, caplog, f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                     'resolution: "32x32"', "num_images_per_prompt: 2")
    assert seconds_removed(lines[-1]) == ('node "gen": warmed up 1 pipeline set(s): text-to-image at 32x32, '
                                          "one denoising step each")


def test_a_lora_node_is_warmed_with_a_base_requests_adapters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (line,) = load_log(tmp_path, caplog, f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                       f'lora_adapters {{ alias: "style" path: "{LORA_A}" }}')
    assert seconds_removed(line) == (f'node "gen": warmed up 1 pipeline set(s): {ALL_TASKS} at 64x64, one denoising '
                                     "step each; LoRA adapters as a base-model request")


def test_a_failed_warm_up_is_logged_and_the_node_still_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_size(settings: NodeSettings, info: Any) -> dict[str, Any]:  # a size OpenVINO GenAI refuses
        return {"width": 12, "height": 12, "num_images_per_prompt": 1, "num_inference_steps": 1, "rng_seed": 0}

    monkeypatch.setattr(warmup, "warm_up_kwargs", bad_size)
    options = (f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'", "default_num_inference_steps: 1")
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"), \
            CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt") as node:
        (out,) = node.run({"HTTP_REQUEST_PAYLOAD": node.json_payload(b'{"prompt": "a cat", "size": "64x64"}')})
        assert out[1].status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "warm-up" in r.getMessage()]
    assert [w.split(" failed (")[0] for w in warnings] == [
        f'node "gen": warm-up of {task} in pipeline set 0' for task in ALL_TASKS.split(", ")]
    assert all(w.endswith("; continuing") and "Exception from" not in w for w in warnings)
    (line,) = [r.getMessage() for r in caplog.records if "warmed up" in r.getMessage()]
    assert seconds_removed(line) == ('node "gen": warmed up 1 pipeline set(s): no task at 12x12, one denoising step '
                                     "each; text-to-image not warmed (failed in set 0); image-to-image not warmed "
                                     "(failed in set 0); inpainting not warmed (failed in set 0)")


def test_dynamic_warm_up_size_respects_the_models_size_multiple() -> None:
    info = read_model_info(TINY / "sd15")
    kwargs = warm_up_kwargs(NodeSettings(models_path=TINY / "sd15"), info)
    assert kwargs["width"] % info.size_multiple == 0
    assert Resolution(kwargs["width"], kwargs["height"]) == Resolution(64, 64)
    assert kwargs == {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 1, "rng_seed": 0}


@pytest.mark.parametrize(("strength", "steps"), [(1.0, 1), (0.8, 2), (0.75, 2), (0.5, 2), (0.3, 4), (0.1, 10),
                                                 (0.01, 100), (0.0, None)])
def test_an_edit_warm_up_runs_exactly_one_denoising_step(strength: float, steps: int | None) -> None:
    assert edit_steps(strength) == steps
    if steps is not None:
        assert int(np.float32(steps) * np.float32(strength)) == 1


# ----- the first request after load equals a fresh openvino_genai pipeline -----
#: Graphs loaded fresh for these tests: model folder, node options besides models_path, model name to request.
FRESH: dict[str, tuple[str, tuple[str, ...], str]] = {
    "sd15": ("sd15", (f"plugin_config: '{F32}'", "default_num_inference_steps: 4"), "sd15"),
    "sdxl": ("sdxl", (f"plugin_config: '{F32}'", "default_num_inference_steps: 4"), "sdxl"),
    "sd3": ("sd3", ("plugin_config: '{\"INFERENCE_PRECISION_HINT\": \"f32\", \"NUM_STREAMS\": 2}'",
                    "default_num_inference_steps: 4"), "sd3"),
    "flux": ("flux", (f"plugin_config: '{F32}'", "default_num_inference_steps: 4"), "flux"),
    "lcm": ("lcm", (f"plugin_config: '{F32}'",), "lcm"),  # the model's own 4 steps and guidance
    "lora-f32": ("sd15", (f"plugin_config: '{F32}'", "default_num_inference_steps: 4",
                          f'lora_adapters {{ alias: "warm-style" path: "{LORA_A}" }}'), "warm-style"),
    # The CPU's default precision (bf16 where it has it) on both sides.
    "lora-default": ("sd15", ("default_num_inference_steps: 4",
                              f'lora_adapters {{ alias: "warm-style-default" path: "{LORA_A}" }}'),
                     "warm-style-default"),
}


def direct_pipeline(res: Any, task: Task, lora: bool) -> Any:
    """A fresh openvino_genai pipeline compiled with the server's properties (and, for a LoRA node,
    the adapter registered at alpha 0 as the server registers it)."""
    import openvino_genai

    props = compile_properties(res.settings, res.pool.size)
    if lora:
        props["adapters"] = openvino_genai.AdapterConfig([(openvino_genai.Adapter(str(LORA_A)), 0.0)],
                                                         openvino_genai.AdapterConfig.Mode.MODE_DYNAMIC)
    return GENAI_CLASSES[task](str(res.settings.models_path), "CPU", **props)


@pytest.mark.parametrize("graph", list(FRESH))
def test_the_first_request_of_every_task_after_load_equals_openvino_genai(tmp_path: Path, graph: str) -> None:
    model, options, name = FRESH[graph]
    server = start_server(tmp_path, graph, graph_text(f'models_path: "{TINY / model}"', *options))
    try:
        res = server.resources(graph)
        assert res.tasks == frozenset(Task)
        source = png_bytes(64, 64, (30, 160, 90))
        for task in (Task.INPAINTING, Task.TEXT2IMAGE, Task.IMAGE2IMAGE):  # each pipeline's first request
            served = served_images(server, task, source, {"model": name, "rng_seed": 5, "size": "64x64"})
            kwargs: dict[str, Any] = {"rng_seed": 5, "width": 64, "height": 64,
                                      "num_inference_steps": res.settings.default_num_inference_steps}
            lora = name != graph
            if lora:
                import openvino_genai

                kwargs["adapters"] = openvino_genai.AdapterConfig([(openvino_genai.Adapter(str(LORA_A)), 1.0)])
            direct = direct_images(direct_pipeline(res, task, lora), task, source, **kwargs)
            assert served[0].std() > 1, task
            assert np.array_equal(served[0], direct[0]), f"{graph} {task.value}: the warm-up changed the first image"
    finally:
        server.stop()
