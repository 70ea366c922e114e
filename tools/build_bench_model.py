"""Builds the full-size benchmark model: SD1.5's architecture with random weights, exported for OpenVINO GenAI.

The benches in `bench/` need a model with the real shapes (a step takes seconds on a CPU, the weights take
gigabytes), and the Hugging Face hub is out of reach, so the pipeline is instantiated from SD1.5's
configuration with weights drawn from a fixed seed:

    UNet          block_out_channels (320, 640, 1280, 1280), 2 layers per block, cross-attention 768,
                  8 heads, 64x64 latents (512x512 images); about 860 M parameters
    text encoder  CLIP ViT-L/14 text tower: 12 layers, hidden 768, 12 heads, 77 positions, vocab 49408
    VAE           SD's AutoencoderKL: (128, 256, 512, 512), 2 layers per block, 4 latent channels
    scheduler     PNDM with SD1.5's betas

It is exported with `tools/ov_export.py` and its weights are then compressed to fp16 (as optimum-cli
writes SD1.5 by default). It draws noise, not pictures: only its cost is real.
The output folder is replaced only when the build succeeds; `make bench-model` runs this only when the
model is missing.

Run in the fixtures venv (torch, diffusers, transformers, openvino, openvino-tokenizers):
    .venv-fixtures/bin/python tools/build_bench_model.py [--out build/bench-models/sd15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import openvino as ov
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ov_export

REPO = Path(__file__).resolve().parent.parent
SEED = 20261204
PACKAGES = ("torch", "diffusers", "transformers", "openvino", "openvino-tokenizers")
WORDS = ["a", "photo", "of", "the", "cat", "dog", "house", "red", "blue", "green", "sky", "city"]
CLIP_VOCAB = 49408


def build_pipeline() -> Any:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = ov_export.make_clip_tokenizer(WORDS)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )).eval()
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    ).eval()
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=4, sample_size=512,
    ).eval()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def compress_to_fp16(out: Path) -> None:
    """Rewrites every component's openvino_model.xml/.bin with fp16 weights."""
    core = ov.Core()
    for xml in sorted(out.glob("*/openvino_model.xml")):
        tmp = xml.with_name("fp16.xml")
        ov.save_model(core.read_model(str(xml)), str(tmp), compress_to_fp16=True)
        tmp.replace(xml)
        tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))


def count_parameters(pipe: Any) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("text_encoder", "unet", "vae")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-models" / "sd15")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    tmp = out.with_name(out.name + ".building")
    start = time.monotonic()
    torch.set_grad_enabled(False)
    pipe = build_pipeline()
    params = count_parameters(pipe)
    print(f"build_bench_model: parameters {params}", flush=True)
    ov_export.export_sd15(pipe, tmp)
    del pipe
    compress_to_fp16(tmp)
    manifest = {
        "architecture": "SD1.5 (random weights)", "seed": SEED, "parameters": params,
        "weights": "fp16", "seconds": round(time.monotonic() - start, 1),
        "packages": {name: metadata.version(name) for name in PACKAGES},
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    print(f"build_bench_model: {out} built in {manifest['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
