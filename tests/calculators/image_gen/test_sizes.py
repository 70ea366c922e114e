"""SPEC §9 sizes: whether a size works is decided from the exported UNet itself; a size the model can
generate is never refused, one it cannot is a 400 naming the field and the nearest sizes that work.

The project's exporter (the tiny models) upsamples by exactly 2 per UNet block: its 2-block UNets need
even latents, so 16-pixel steps. optimum-intel exports take any multiple of 8: tests/convert covers them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calculators.image_gen.options import Resolution
from calculators.image_gen.pipelines import read_model_info
from calculators.image_gen.sizes import nearest_sizes, unet_latent_multiple
from ovms_graph.errors import BadRequest
from ovms_graph.packets import HttpPayload, HttpResponse
from ovms_graph.testing import CalculatorRunner
from tests.calculators.image_gen.helpers import F32, TINY, node_text, pixels, registry, wait_for_tiny_models


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models()


def payload(body: dict[str, object]) -> HttpPayload:
    return HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"",
                       route="images/generations", model="graph", parsed_json=body)


@pytest.mark.parametrize("model", ["sd15", "sd15-inpaint", "sdxl"])
def test_the_projects_2_block_unets_take_even_latents(model: str) -> None:
    assert unet_latent_multiple(TINY / model / "unet" / "openvino_model.xml") == 2
    assert read_model_info(TINY / model).size_multiple == 16


def test_the_transformer_rule_is_kept_for_flux() -> None:
    assert read_model_info(TINY / "flux").size_multiple == 16  # 8 (VAE) x 2 (latents packed 2x2)


def test_without_a_readable_unet_ir_the_config_gives_the_strictest_rule(tmp_path: Path) -> None:
    model = tmp_path / "sd"
    model.mkdir()
    shutil.copy(TINY / "sd15" / "model_index.json", model)
    for part in ("unet", "vae_decoder"):
        (model / part).mkdir()
        shutil.copy(TINY / "sd15" / part / "config.json", model / part)
    (model / "unet" / "config.json").write_text(json.dumps(
        {**json.loads((TINY / "sd15" / "unet" / "config.json").read_text()), "block_out_channels": [8, 16, 32]}))
    assert read_model_info(model).size_multiple == 32  # no IR: 8 * 2**(3 - 1)
    (model / "unet" / "openvino_model.xml").write_text("<not an IR")
    assert unet_latent_multiple(model / "unet" / "openvino_model.xml") is None
    assert read_model_info(model).size_multiple == 32


def test_every_size_the_server_accepts_generates_and_every_size_it_refuses_fails_in_openvino_genai(
        tmp_path: Path) -> None:
    import openvino_genai

    sizes = [(48, 48), (32, 80), (16, 16), (64, 56), (56, 56), (40, 64), (24, 24)]
    genai = openvino_genai.Text2ImagePipeline(str(TINY / "sd15"), "CPU", INFERENCE_PRECISION_HINT="f32")
    accepted, refused = [], []
    with CalculatorRunner(node_text(f'models_path: "{TINY / "sd15"}"', f"plugin_config: '{F32}'",
                                    "default_num_inference_steps: 1"),
                          registry=registry(), graph_file=tmp_path / "graph.pbtxt") as node:
        for width, height in sizes:
            try:
                ((_, response),) = node.run({"HTTP_REQUEST_PAYLOAD": payload(
                    {"prompt": "a red circle", "size": f"{width}x{height}"})})
            except BadRequest as exc:
                assert exc.param == "size"
                assert "nearest sizes that work: " in exc.message
                with pytest.raises(RuntimeError):
                    genai.generate("a red circle", width=width, height=height, num_inference_steps=1)
                refused.append((width, height))
            else:
                assert isinstance(response, HttpResponse)
                assert pixels(json.loads(response.body)["data"][0]["b64_json"]).shape == (height, width, 3)
                accepted.append((width, height))
    assert accepted == [(48, 48), (32, 80), (16, 16)]
    assert refused == [(64, 56), (56, 56), (40, 64), (24, 24)]


# (size, multiple, limit, nearest)
NEAREST = [
    ((64, 56), 16, None, [(64, 48), (64, 64)]),
    ((60, 100), 8, None, [(56, 96), (56, 104), (64, 96), (64, 104)]),
    ((4, 64), 8, None, [(8, 64)]),
    ((516, 64), 8, (512, 512), [(512, 64)]),
    ((99999, 64), 16, (1024, 1024), [(1024, 64)]),
]


@pytest.mark.parametrize(("size", "multiple", "limit", "nearest"), NEAREST, ids=range(len(NEAREST)))
def test_nearest_sizes(size: tuple[int, int], multiple: int, limit: tuple[int, int] | None,
                       nearest: list[tuple[int, int]]) -> None:
    found = nearest_sizes(Resolution(*size), multiple, Resolution(*limit) if limit else None)
    assert found == [Resolution(*n) for n in nearest]


@pytest.mark.parametrize("model", ["sd15", "sdxl", "lcm", "sd3", "flux"])
def test_the_size_rule_agrees_with_openvino_genai_for_every_family(model: str) -> None:
    """UNets (SD, SDXL, LCM) by their IR, transformers (SD3, FLUX) by their patches: a size passes the
    rule exactly when OpenVINO GenAI generates it."""
    import openvino_genai

    step = read_model_info(TINY / model).size_multiple
    pipe = openvino_genai.Text2ImagePipeline(str(TINY / model), "CPU")
    agreed = []
    for width, height in [(48, 48), (32, 16), (64, 56), (40, 40), (24, 24)]:
        try:
            pipe.generate("a red circle", width=width, height=height, num_inference_steps=1)
            generates = True
        except RuntimeError:
            generates = False
        agreed.append((width % step == 0 and height % step == 0) == generates)
    assert agreed == [True] * 5
