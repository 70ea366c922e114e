"""Pulling a diffusers-format repository converts it to OpenVINO IR with optimum-intel, then it generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms_graph.cli import PullOptions
from ovms_graph.pull import pull_model, run_pull
from tests.pull.fake_hub import FakeHub


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
