"""Builds the project's tiny, randomly initialised diffusion models and exports them for OpenVINO GenAI.

They exist so that tests run real `openvino_genai` pipelines in seconds: same architectures as the
real models (SD1.5, SD1.5 inpainting, SDXL, FLUX.1), a few hundred kilobytes each, weights drawn
from fixed seeds. They draw noise, not pictures.

    models/tiny/sd15/            StableDiffusionPipeline, DDIM, 64x64 default
    models/tiny/sd15-inpaint/    StableDiffusionInpaintPipeline (9-channel UNet), DDIM, 64x64
    models/tiny/sdxl/            StableDiffusionXLPipeline (two CLIP text encoders), Euler, 64x64
    models/tiny/flux/            FluxPipeline (CLIP + T5), FlowMatchEuler
    models/tiny/loras/           lora_a/b/c.safetensors: kohya-format LoRAs for sd15
    models/tiny/MANIFEST.json    sha256 of every file, package versions, seed

Run in the fixtures venv (torch, diffusers, transformers, openvino, openvino-tokenizers):
    .venv-fixtures/bin/python tools/build_tiny_models.py [--out models/tiny] [--only sd15 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ov_export  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611
MODELS = ("sd15", "sd15-inpaint", "sdxl", "flux", "loras")
PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "openvino",
            "openvino-tokenizers", "numpy")

# A small vocabulary so prompts in tests and docs map to whole tokens; other text still works.
WORDS = (
    "a an the of on in with and photo picture drawing painting cat dog house tree car city sky "
    "sea mountain flower red green blue yellow black white gray purple orange cyan circle square "
    "triangle background outline filled big small bright dark style portrait landscape"
).split()

CLIP_HIDDEN = 32


def seeded(offset: int) -> None:
    torch.manual_seed(SEED + offset)


# --------------------------------------------------------------------------------------------------
# Components


def clip_text_config(vocab_size: int, *, projection: bool = False) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=CLIP_HIDDEN,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="quick_gelu",
    )


def clip_text_encoder(tokenizer: Any, offset: int) -> Any:
    from transformers import CLIPTextModel

    seeded(offset)
    return CLIPTextModel(clip_text_config(len(tokenizer))).eval()


def unet(in_channels: int, offset: int, *, xl: bool = False) -> Any:
    from diffusers import UNet2DConditionModel

    seeded(offset)
    kwargs: dict[str, Any] = {}
    if xl:
        kwargs = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": CLIP_HIDDEN + 6 * 8,
            "cross_attention_dim": 2 * CLIP_HIDDEN,
            "transformer_layers_per_block": (1, 1),
            "use_linear_projection": True,
        }
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        cross_attention_dim=kwargs.pop("cross_attention_dim", CLIP_HIDDEN),
        **kwargs,
    ).eval()


def vae(offset: int, *, latent_channels: int = 4, flux: bool = False) -> Any:
    from diffusers import AutoencoderKL

    seeded(offset)
    extra: dict[str, Any] = {}
    if flux:
        extra = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1159,
                 "scaling_factor": 0.3611}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        **extra,
    ).eval()


def ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# --------------------------------------------------------------------------------------------------
# Pipelines


def build_sd15(out: Path, *, inpaint: bool = False) -> Any:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    tok = ov_export.make_clip_tokenizer(WORDS)
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    base = 100 if inpaint else 0
    pipe = cls(
        vae=vae(base + 1),
        text_encoder=clip_text_encoder(tok, base + 2),
        tokenizer=tok,
        unet=unet(9 if inpaint else 4, base + 3),
        scheduler=ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ov_export.export_pipeline(pipe, out, kind="sd15-inpaint" if inpaint else "sd15")
    return pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "tiny")
    parser.add_argument("--only", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if "sd15" in args.only:
        build_sd15(out / "sd15")
    print(f"built in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
