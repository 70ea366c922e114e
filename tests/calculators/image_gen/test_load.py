"""Load time on the tiny models: pipeline type and tasks, sizes the model cannot make, broken models,
and the calculator run through the one-node CalculatorRunner."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from calculators.image_gen.pipelines import Family, Task, read_model_info
from ovms_graph.calculator import RequestContext
from ovms_graph.errors import BadRequest, ConfigError, RequestCancelled
from ovms_graph.packets import HttpPayload, HttpResponse
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.helpers import F32, TINY, node_text, pixels, registry, wait_for_tiny_models

NODE = 'node "gen" (ImageGenCalculator)'


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models()


def runner(tmp_path: Path, *options: str) -> CalculatorRunner:
    return CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt")


def payload(body: dict[str, object]) -> HttpPayload:
    return HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"",
                       route="images/generations", model="graph", parsed_json=body)


@pytest.mark.parametrize(("model", "family", "variant", "multiple"), [
    ("sd15", Family.SD, False, 16),
    ("sd15-inpaint", Family.SD, True, 16),
    ("sdxl", Family.SDXL, False, None),
    ("flux", Family.FLUX, False, None),
    ("sd3", Family.SD3, False, 16),
    ("lcm", Family.LCM, False, 16),
])
def test_model_info_is_read_from_the_folder(model: str, family: Family, variant: bool, multiple: int | None) -> None:
    info = read_model_info(TINY / model)
    assert (info.family, info.inpainting_variant) == (family, variant)
    assert info.size_multiple % 8 == 0
    if multiple is not None:
        assert info.size_multiple == multiple
    # SD3's positional embedding covers 32 patches of 2 latents of 8 pixels per side
    assert info.max_side == (512 if family is Family.SD3 else None)
    # LCM picks its timesteps from the original_inference_steps schedule: no more steps than that
    assert (info.max_steps, info.max_steps_source) == ((50, "the LCM scheduler's original_inference_steps")
                                                       if family is Family.LCM
                                                       else (1000, "the scheduler's num_train_timesteps"))


def test_load_logs_pipeline_type_and_tasks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"), \
            runner(tmp_path, f'models_path: "{TINY / "sd15"}"') as node:
        assert node.graph.concurrency == 1
    (line,) = [r.getMessage() for r in caplog.records if "pipeline from" in r.getMessage()]
    assert line.startswith(f'node "gen": SD (StableDiffusionPipeline) pipeline from {TINY / "sd15"}; '
                           "1 pipeline set(s) on CPU, dynamic shapes; tasks: text-to-image, image-to-image, "
                           "inpainting; no model cache; loaded in ")


def test_inpainting_model_builds_only_inpainting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"), \
            runner(tmp_path, f'models_path: "{TINY / "sd15-inpaint"}"') as node:
        (resources,) = node.graph.resources.values()
        assert resources.tasks == frozenset({Task.INPAINTING})
        assert set(resources.refused) == {Task.IMAGE2IMAGE, Task.TEXT2IMAGE}
    (line,) = [r.getMessage() for r in caplog.records if "pipeline from" in r.getMessage()]
    assert "tasks: inpainting; image-to-image unavailable (RuntimeError: " in line


def test_a_model_genai_cannot_load_is_refused_naming_every_task(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(TINY / "sd15", model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "MysteryPipeline"}))
    node = runner(tmp_path, 'models_path: "model"')
    with pytest.raises(ConfigError) as info:
        _ = node.graph
    (problem,) = info.value.problems
    assert str(problem).replace(f"{tmp_path}/", "") == (
        f"graph.pbtxt:9: {NODE}: node_options.models_path: no pipeline could be built from model "
        "(inpainting: RuntimeError: Unsupported inpainting pipeline 'MysteryPipeline'; "
        "image-to-image: RuntimeError: Unsupported image to image generation pipeline 'MysteryPipeline'; "
        "text-to-image: RuntimeError: Unsupported text to image generation pipeline 'MysteryPipeline')")


def test_model_index_without_class_is_an_option_problem(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    problems = [str(p).replace(f"{tmp_path}/", "") for p in runner(tmp_path, 'models_path: "model"').problems()]
    assert problems == [f'graph.pbtxt:9: {NODE}: node_options.models_path: model/model_index.json is missing or '
                        'has no "_class_name"']


@pytest.mark.parametrize(("option", "field", "message"), [
    ('default_resolution: "40x40"', "default_resolution",
     "40x40: width and height must be divisible by 16 for this SD model; nearest sizes that work: 32x32, "
     "32x48, 48x32, 48x48"),
    ('resolution: "64x64 72x64"', "resolution", "72x64: width and height must be divisible by 16 for this SD model; "
     "nearest sizes that work: 64x64, 80x64"),
])
def test_configured_sizes_must_suit_the_model(tmp_path: Path, option: str, field: str, message: str) -> None:
    node = runner(tmp_path, f'models_path: "{TINY / "sd15"}"', option)
    assert [str(p).replace(f"{tmp_path}/", "") for p in node.problems()] == [
        f"graph.pbtxt:10: {NODE}: node_options.{field}: {message}"]


def test_calculator_runner_runs_one_node(tmp_path: Path) -> None:
    with runner(tmp_path, f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                "default_num_inference_steps: 1") as node:
        outputs = node.run({"HTTP_REQUEST_PAYLOAD": payload({"prompt": "a cat", "n": 2, "size": "32x16"})})
        ((tag, response),) = outputs
        assert tag == "HTTP_RESPONSE_PAYLOAD" and isinstance(response, HttpResponse)
        data = json.loads(response.body)["data"]
        assert [pixels(item["b64_json"]).shape for item in data] == [(16, 32, 3)] * 2
        with pytest.raises(BadRequest, match=r"^num_inference_steps must be higher than 0$"):
            node.run({"HTTP_REQUEST_PAYLOAD": payload({"prompt": "a cat", "num_inference_steps": 0})})
        cancelled = RequestContext()
        cancelled.cancel()
        with pytest.raises(RequestCancelled):
            node.run({"HTTP_REQUEST_PAYLOAD": payload({"prompt": "a cat"})}, cancelled)
        (resources,) = node.graph.resources.values()
        assert resources.pool.available == 1


def test_a_device_this_machine_lacks_is_a_load_error_naming_the_field(tmp_path: Path) -> None:
    import openvino

    available = ", ".join(openvino.Core().available_devices)
    graph = tmp_path / "graph.pbtxt"
    graph.write_text(node_text(f'models_path: "{TINY / "sd15"}"', 'device: "CPU TPU CPU"'))
    runner = CalculatorRunner(graph.read_text(), registry=registry(), graph_file=graph)
    assert runner.problems() == []  # `validate` may run where the accelerator is not
    with pytest.raises(ConfigError) as info:
        runner.graph  # noqa: B018 - loading is the point
    assert [p.field for p in info.value.problems] == ["node_options.device"]
    assert info.value.problems[0].message == f'device "TPU" is not available on this machine (available: {available})'
