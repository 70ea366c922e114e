"""Builds the project's tiny, randomly initialised diffusion models and exports them for OpenVINO GenAI.

They exist so that tests run real `openvino_genai` pipelines in seconds: same architectures as the
real models (SD1.5, SD1.5 inpainting, SDXL, FLUX.1, SD3, LCM), a few hundred kilobytes each, weights drawn
from fixed seeds. They draw noise, not pictures.

    models/tiny/sd15/            StableDiffusionPipeline, DDIM, 64x64 default
    models/tiny/sd15-inpaint/    StableDiffusionInpaintPipeline (9-channel UNet), DDIM, 64x64
    models/tiny/sdxl/            StableDiffusionXLPipeline (two CLIP text encoders), Euler, 64x64
    models/tiny/flux/            FluxPipeline (CLIP + T5), FlowMatchEuler
    models/tiny/sd3/             StableDiffusion3Pipeline (two CLIPs + small T5, patch-2 transformer),
                                 FlowMatchEuler, 64x64
    models/tiny/lcm/             LatentConsistencyModelPipeline (UNet with time_cond_proj_dim, the
                                 SD1.5 layout otherwise), LCMScheduler, 64x64
    models/tiny/loras/           lora_a/b/c.safetensors: kohya-format LoRAs for sd15 (and lcm);
                                 lora_sd3.safetensors: a diffusers/PEFT-format LoRA for sd3's transformer
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
import ov_export

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611
MODELS = ("sd15", "sd15-inpaint", "sdxl", "flux", "sd3", "lcm", "loras")
PACKAGES = ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "openvino",
            "openvino-tokenizers", "numpy")

# A small vocabulary so prompts in tests and docs map to whole tokens; other text still works.
WORDS = [
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "drawing", "painting",
    "cat", "dog", "house", "tree", "car", "city", "sky", "sea", "mountain", "flower", "red", "green",
    "blue", "yellow", "black", "white", "gray", "purple", "orange", "cyan", "circle", "square",
    "triangle", "background", "outline", "filled", "big", "small", "bright", "dark", "style",
    "portrait", "landscape",
]

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


def unet(in_channels: int, offset: int, *, xl: bool = False, time_cond_proj_dim: int | None = None) -> Any:
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
        time_cond_proj_dim=time_cond_proj_dim,
        **kwargs,
    ).eval()


def vae(offset: int, *, latent_channels: int = 4, flux: bool = False, sd3: bool = False) -> Any:
    from diffusers import AutoencoderKL

    seeded(offset)
    extra: dict[str, Any] = {}
    if flux:
        extra = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1159,
                 "scaling_factor": 0.3611}
    if sd3:
        extra = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.0609,
                 "scaling_factor": 1.5305}
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
# LoRAs (kohya format: <prefix>_<module path with "_">.lora_down.weight / .lora_up.weight / .alpha)

LORA_RANK = 4
# name -> (description, scale of the delta relative to each weight's std, module-name suffixes per
# component). Only Linear and 1x1 Conv2d layers: GenAI refuses LoRA on larger kernels, and (2026.4)
# leaves kohya keys for resnets' `time_emb_proj` and `conv_shortcut` unused.
LORAS: dict[str, tuple[str, float, dict[str, tuple[str, ...]]]] = {
    "lora_a": ("UNet self- and cross-attention projections (Linear)", 20.0,
               {"unet": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                         "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")}),
    "lora_b": ("text encoder attention and MLP plus UNet feed-forward (Linear)", 20.0,
               {"te": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                       "mlp.fc1", "mlp.fc2"),
                "unet": ("ff.net.0.proj", "ff.net.2")}),
    "lora_c": ("UNet transformer proj_in/proj_out (1x1 Conv2d) and GEGLU projection (Linear)", 40.0,
               {"unet": ("proj_in", "proj_out", "ff.net.0.proj")}),
}


def lora_state_dict(
    pipe: Any, targets: dict[str, tuple[str, ...]], scale: float, offset: int
) -> dict[str, torch.Tensor]:
    """Random low-rank deltas, scaled so that W + up@down differs clearly from W at alpha 1."""
    gen = torch.Generator().manual_seed(SEED + offset)
    roots = {"unet": ("lora_unet", pipe.unet, ""),
             "te": ("lora_te", pipe.text_encoder, "text_model.")}
    state: dict[str, torch.Tensor] = {}
    for component, suffixes in targets.items():
        prefix, root, path_prefix = roots[component]
        for name, module in sorted(root.named_modules()):
            if not name.endswith(suffixes) or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                continue
            if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
                continue
            w = module.weight
            out_f, in_f = w.shape[0], w.shape[1]
            tail = (1, 1) if w.dim() == 4 else ()
            down = torch.randn((LORA_RANK, in_f, *tail), generator=gen) / in_f**0.5
            std = float(w.detach().std())
            up = torch.randn((out_f, LORA_RANK, *tail), generator=gen) * (scale * std / LORA_RANK**0.5)
            key = prefix + "_" + (path_prefix + name).replace(".", "_")
            state[key + ".lora_down.weight"] = down.contiguous()
            state[key + ".lora_up.weight"] = up.contiguous()
            state[key + ".alpha"] = torch.tensor(float(LORA_RANK))
    if not state:
        raise RuntimeError(f"no module matched LoRA targets {targets}")
    return state


#: The SD3 LoRA: diffusers/PEFT keys (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``), the
#: format SD3 adapters ship in and OpenVINO GenAI reads for SD3; kohya UNet keys do not apply to it.
SD3_LORA = ("lora_sd3", "SD3 transformer attention projections to_q/to_k/to_v/to_out.0 (diffusers/PEFT keys)",
            20.0, ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"))


def build_sd3_lora(pipe: Any, out: Path) -> None:
    from safetensors.torch import save_file

    name, desc, scale, suffixes = SD3_LORA
    gen = torch.Generator().manual_seed(SEED + 2000)
    state: dict[str, torch.Tensor] = {}
    for module_name, module in sorted(pipe.transformer.named_modules()):
        if not module_name.endswith(suffixes) or not isinstance(module, torch.nn.Linear):
            continue
        out_f, in_f = module.weight.shape
        std = float(module.weight.detach().std())
        state[f"transformer.{module_name}.lora_A.weight"] = (
            torch.randn((LORA_RANK, in_f), generator=gen) / in_f**0.5).contiguous()
        state[f"transformer.{module_name}.lora_B.weight"] = (
            torch.randn((out_f, LORA_RANK), generator=gen) * (scale * std / LORA_RANK**0.5)).contiguous()
    if not state:
        raise RuntimeError(f"no module of the SD3 transformer matched {suffixes}")
    save_file(state, str(out / f"{name}.safetensors"),
              metadata={"description": f"{desc}; rank {LORA_RANK}; base models/tiny/sd3"})


def build_loras(pipe: Any, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    for i, (name, (desc, scale, targets)) in enumerate(LORAS.items()):
        state = lora_state_dict(pipe, targets, scale, 1000 + i)
        # One metadata key only: safetensors writes the metadata map in a random order, and
        # several keys would make rebuilt files differ byte-wise.
        save_file(state, str(out / f"{name}.safetensors"),
                  metadata={"description": f"{desc}; rank {LORA_RANK}; base models/tiny/sd15"})


# --------------------------------------------------------------------------------------------------
# Pipelines


def build_sd15(out: Path, *, inpaint: bool = False, export: bool = True) -> Any:
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
    if export:
        ov_export.export_pipeline(pipe, out, kind="sd15-inpaint" if inpaint else "sd15")
    return pipe


def build_sdxl(out: Path) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = ov_export.make_clip_tokenizer(WORDS)
    seeded(201)
    te1 = CLIPTextModel(clip_text_config(len(tok))).eval()
    seeded(202)
    te2 = CLIPTextModelWithProjection(clip_text_config(len(tok))).eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae(203),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet(4, 204, xl=True),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", steps_offset=1,
                                         timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True,
    )
    ov_export.export_pipeline(pipe, out, kind="sdxl")
    return pipe


def build_flux(out: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    clip_tok = ov_export.make_clip_tokenizer(WORDS)
    t5_tok = ov_export.make_t5_tokenizer(WORDS)
    seeded(301)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False,
    )).eval()
    seeded(302)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4),
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
            max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        vae=vae(303, flux=True),
        text_encoder=clip_text_encoder(clip_tok, 304),
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    ov_export.export_pipeline(pipe, out, kind="flux")
    return pipe


def t5_encoder(tokenizer: Any, offset: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    seeded(offset)
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False,
    )).eval()


def build_sd3(out: Path, *, export: bool = True) -> Any:
    """Two CLIP encoders with projection (pooled 2 x 32 = 64), a 2-layer T5 (d_model 32 = the
    transformer's joint_attention_dim, as in diffusers' own tiny SD3), a one-block patch-2 MMDiT."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tok = ov_export.make_clip_tokenizer(WORDS)
    t5_tok = ov_export.make_t5_tokenizer(WORDS)
    seeded(401)
    te1 = CLIPTextModelWithProjection(clip_text_config(len(clip_tok))).eval()
    seeded(402)
    te2 = CLIPTextModelWithProjection(clip_text_config(len(clip_tok))).eval()
    seeded(404)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_HIDDEN, pos_embed_max_size=32,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae(405, latent_channels=16, sd3=True),
        text_encoder=te1,
        tokenizer=clip_tok,
        text_encoder_2=te2,
        tokenizer_2=clip_tok,
        text_encoder_3=t5_encoder(t5_tok, 403),
        tokenizer_3=t5_tok,
    )
    if export:
        ov_export.export_pipeline(pipe, out, kind="sd3")
    return pipe


def build_lcm(out: Path) -> Any:
    """The SD1.5 layout (so the sd15 LoRAs' layers exist in it too) with a UNet that takes the
    guidance scale as an embedding (time_cond_proj_dim) and the LCM scheduler."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    tok = ov_export.make_clip_tokenizer(WORDS)
    pipe = LatentConsistencyModelPipeline(
        vae=vae(501),
        text_encoder=clip_text_encoder(tok, 502),
        tokenizer=tok,
        unet=unet(4, 503, time_cond_proj_dim=32),
        scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                               original_inference_steps=50, set_alpha_to_one=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ov_export.export_pipeline(pipe, out, kind="lcm")
    return pipe


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(out: Path) -> dict[str, Any]:
    """MANIFEST.json: every file's sha256 and size, the package versions and the seed.

    Holds nothing that varies between two builds with the same versions (no timestamps, no
    timings), so a rebuild reproduces it byte for byte.
    """
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.json":
            p.chmod(0o644)
            files[p.relative_to(out).as_posix()] = {"sha256": sha256(p), "bytes": p.stat().st_size}
    packages = {}
    for pkg in PACKAGES:
        try:
            packages[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            packages[pkg] = None
    manifest = {
        "generator": "tools/build_tiny_models.py",
        "seed": SEED,
        "python": ".".join(map(str, sys.version_info[:2])),
        "packages": packages,
        "loras": {**{name: {"description": desc, "base": "sd15", "scale": scale}
                     for name, (desc, scale, _) in LORAS.items()},
                  SD3_LORA[0]: {"description": SD3_LORA[1], "base": "sd3", "scale": SD3_LORA[2]}},
        "files": files,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "models" / "tiny",
                        help="output folder (default: models/tiny)")
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS),
                        help="rebuild only these (the manifest always covers the whole folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = {
        "sd15": lambda: build_sd15(out / "sd15"),
        "sd15-inpaint": lambda: build_sd15(out / "sd15-inpaint", inpaint=True),
        "sdxl": lambda: build_sdxl(out / "sdxl"),
        "flux": lambda: build_flux(out / "flux"),
        "sd3": lambda: build_sd3(out / "sd3"),
        "lcm": lambda: build_lcm(out / "lcm"),
    }
    t_all = time.time()
    sd15 = sd3 = None
    for name, step in steps.items():
        if name in args.only:
            t = time.time()
            pipe = step()
            if name == "sd15":
                sd15 = pipe
            if name == "sd3":
                sd3 = pipe
            print(f"{name}: {time.time() - t:.1f}s", flush=True)
    if "loras" in args.only:
        t = time.time()
        if sd15 is None:  # the LoRAs are shaped after sd15: rebuild it in memory (same seeds)
            sd15 = build_sd15(Path(os.devnull), export=False)
        lora_dir = out / "loras"
        if lora_dir.exists():
            shutil.rmtree(lora_dir)
        build_loras(sd15, lora_dir)
        if sd3 is None:
            sd3 = build_sd3(Path(os.devnull), export=False)
        build_sd3_lora(sd3, lora_dir)
        print(f"loras: {time.time() - t:.1f}s", flush=True)
    manifest = write_manifest(out)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{out}: {len(manifest['files'])} files, {size / 1e6:.2f} MB, {time.time() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
