"""Pulling a diffusers-format repository converts it to OpenVINO IR with optimum-intel, then it generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calculators.image_gen.cli import PullOptions
from calculators.image_gen.pull import convert_model, pull_model, run_pull
from tests.calculators.image_gen.pull.fake_hub import FakeHub


def test_a_diffusers_repository_is_converted_and_generates(hub: FakeHub, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "models"
    options = PullOptions(source_model="tiny/sd15-diffusers", model_repository_path=repo, weight_format="int8",
                          default_num_inference_steps=2)
    assert run_pull(options) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Converting tiny/sd15-diffusers to OpenVINO IR (int8) with optimum-intel" in out
    assert 'graph "tiny/sd15-diffusers" is valid' in out

    model_dir = repo / "tiny" / "sd15-diffusers"
    for part in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (model_dir / part / "openvino_model.xml").is_file(), part
    assert (model_dir / "tokenizer" / "openvino_tokenizer.xml").is_file()
    assert not list(model_dir.rglob("diffusion_pytorch_model.safetensors"))  # the IR, not the download
    assert sorted(p.name for p in (repo / "tiny").iterdir()) == ["sd15-diffusers"]  # no staging left

    import openvino_genai

    pipe = openvino_genai.Text2ImagePipeline(str(model_dir), "CPU")
    image = pipe.generate("a red circle", width=64, height=64, num_inference_steps=1)
    assert list(image.shape) == [1, 64, 64, 3]

    # present now: a second pull neither downloads nor converts
    before = len(hub.requests)
    pull_model(options)
    assert len(hub.requests) == before
    assert "Converting" not in capsys.readouterr().out


def test_a_conversion_that_fails_leaves_no_model(hub: FakeHub, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "models"
    assert run_pull(PullOptions(source_model="tiny/broken-diffusers", model_repository_path=repo)) == 1
    err = capsys.readouterr().err
    assert err.startswith("ovms-graph pull: error: --source_model tiny/broken-diffusers: conversion with "
                          "optimum-intel failed (exit status ")
    assert "Traceback" not in err.splitlines()[0]
    assert not (repo / "tiny" / "broken-diffusers").exists()
    assert not (repo / "tiny" / ".broken-diffusers.convert").exists()


@pytest.fixture(scope="module")
def optimum_sd15(diffusers_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny 2-block SD1.5 exported by optimum-intel (``optimum-cli export openvino``), as the
    OpenVINO models on the Hugging Face hub are."""
    out = tmp_path_factory.mktemp("optimum") / "tiny-sd15-ov"
    convert_model(diffusers_model, out, "fp32", source="tiny/sd15-diffusers", pipeline="StableDiffusionPipeline")
    return out


def test_an_optimum_export_serves_every_multiple_of_8(optimum_sd15: Path, tmp_path: Path) -> None:
    """SPEC §9: optimum's UNet upsamples to its skip connection's size, so 64x56 generates (the
    project's own exporter needs 16-pixel steps on the same architecture); edits default to the input
    size rounded down to a multiple of 8."""
    import openvino_genai

    from calculators.image_gen.pipelines import read_model_info
    from calculators.image_gen.sizes import unet_latent_multiple
    from ovms_graph.errors import BadRequest
    from ovms_graph.packets import HttpPayload, MultipartView, UploadedFile
    from ovms_graph.testing import CalculatorRunner
    from tests.calculators.image_gen.helpers import F32, node_text, pixels, png_bytes, registry

    assert unet_latent_multiple(optimum_sd15 / "unet" / "openvino_model.xml") == 1
    assert read_model_info(optimum_sd15).size_multiple == 8
    genai = openvino_genai.Text2ImagePipeline(str(optimum_sd15), "CPU", INFERENCE_PRECISION_HINT="f32")
    assert list(genai.generate("a red circle", width=64, height=56, num_inference_steps=1).shape) == [1, 56, 64, 3]

    def generation(body: dict[str, object]) -> HttpPayload:
        return HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"",
                           route="images/generations", model="graph", parsed_json=body)

    with CalculatorRunner(node_text(f'models_path: "{optimum_sd15}"', f"plugin_config: '{F32}'",
                                    "default_num_inference_steps: 1"),
                          registry=registry(), graph_file=tmp_path / "graph.pbtxt") as node:
        for size in ("64x56", "40x24", "8x8"):
            ((_, response),) = node.run({"HTTP_REQUEST_PAYLOAD": generation({"prompt": "a red circle", "size": size})})
            width, height = map(int, size.split("x"))
            assert pixels(json.loads(response.body)["data"][0]["b64_json"]).shape == (height, width, 3)
        with pytest.raises(BadRequest) as info:
            node.run({"HTTP_REQUEST_PAYLOAD": generation({"prompt": "a red circle", "size": "60x64"})})
        assert (info.value.param, info.value.message) == (
            "size", "width must be divisible by 8, got 60; nearest sizes that work: 56x64, 64x64")

        form = MultipartView(fields={"prompt": ("a red circle",), "num_inference_steps": ("2",)},
                             files={"image": (UploadedFile("image", "in.png", "image/png", png_bytes(60, 44)),)})
        edit = HttpPayload(uri="/v3/images/edits", method="POST", headers={}, body=b"", route="images/edits",
                           model="graph", multipart=form)
        ((_, response),) = node.run({"HTTP_REQUEST_PAYLOAD": edit})
        assert pixels(json.loads(response.body)["data"][0]["b64_json"]).shape == (40, 56, 3)
