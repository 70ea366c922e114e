"""Conversion tests: heavy (torch, diffusers, optimum-intel), so they run only from their own target.

`make test-convert` installs the ``[convert]`` extra in its own virtual environment and sets
OVMS_GRAPH_CONVERT_TESTS=1; a plain ``pytest`` run (``make test``) does not collect this folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

if os.environ.get("OVMS_GRAPH_CONVERT_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

REPO_ROOT = Path(__file__).resolve().parents[2]
WORDS = ("a", "an", "the", "red", "green", "blue", "circle", "square", "triangle", "on", "black", "white", "gray",
         "background")
CLIP_HIDDEN = 32


def build_tiny_sd15_diffusers(out: Path) -> None:
    """A randomly initialised SD1.5-architecture pipeline saved in diffusers format (no OpenVINO IR)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import ov_export  # the project's CLIP tokenizer builder (stable API)

    torch.manual_seed(20240611)
    tokenizer = ov_export.make_clip_tokenizer(WORDS)
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=CLIP_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=CLIP_HIDDEN, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=vocab - 1, hidden_act="quick_gelu")).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8, cross_attention_dim=CLIP_HIDDEN).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=64).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


@pytest.fixture(scope="session")
def diffusers_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diffusers") / "tiny-sd15"
    build_tiny_sd15_diffusers(out)
    return out


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def hub(hf_env: Path, diffusers_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from tests.calculators.image_gen.pull.fake_hub import FakeHub, files_from_dir

    fake = FakeHub()
    fake.add_repo("tiny/sd15-diffusers", files_from_dir(diffusers_model))
    fake.add_repo("tiny/broken-diffusers", {
        "model_index.json": (diffusers_model / "model_index.json").read_bytes(),
        "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": b"not safetensors"})
    fake.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    fake.stop()
