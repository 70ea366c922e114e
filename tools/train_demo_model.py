"""Trains the project's tiny SD1.5-architecture demo model and its outline-style LoRA (SPEC §10).

Stages, each resumable from checkpoints under --work (default build/demo):
  vae     AutoencoderKL (8,16,32,64), 4 latent channels, scale factor 8, on 32x32 crops;
          measures and records scaling_factor.
  unet    UNet2DConditionModel (32,64) + a 2-layer, 64-wide CLIPTextModel trained jointly;
          epsilon DDPM loss (scaled_linear, 1000 steps), min-SNR-5 weights, EMA 0.998,
          AdamW 1e-3 cosine, batch 64; ~10 % blank captions for classifier-free guidance.
  lora    rank-8 LoRA on the UNet attention and feed-forward Linear layers, trained on
          outlined shapes; saved with kohya keys (lora_unet_*.lora_down/lora_up/alpha).
  export  OpenVINO GenAI layout in models/demo/shapes, the LoRA in models/demo/loras, and
          models/demo/MANIFEST.json (sha256 of every file, versions, seeds, steps, timings).

Budgets are in steps and every step draws its data from a seed derived from (--seed, stage,
step), so a rebuild (or a resume after a crash) sees the same data.

Run with the fixtures venv (torch, diffusers, transformers, openvino):
  .venv-fixtures/bin/python tools/train_demo_model.py                  # every stage
  .venv-fixtures/bin/python tools/train_demo_model.py --stage export   # re-export only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes_data

REPO = Path(__file__).resolve().parent.parent
STAGES = ("vae", "unet", "lora", "export", "report")
MAX_LENGTH = 77
LORA_RANK = 8
LORA_TARGET_SUFFIXES = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
)


@dataclass(frozen=True)
class Budget:
    vae_steps: int
    unet_steps: int
    lora_steps: int
    seed: int
    pool_size: int


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    """Data RNG for one step; independent of how the run was interrupted and resumed."""
    return random.Random(f"{seed}/{stage}/{step}")


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{stage}/{step}/torch".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL images -> float tensor Bx3xHxW in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_images(x: torch.Tensor) -> list[np.ndarray]:
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(arr)


# --------------------------------------------------------------------------------------------------
# Tokenizer: CLIP BPE where every caption word is one token


def build_tokenizer(out_dir: Path) -> Any:
    """The demo's CLIP BPE tokenizer (every caption word one token), made once and then reused.

    Built by tools/ov_export.make_clip_tokenizer; kept in `out_dir` so that later stages and
    re-exports use exactly the ids the text encoder was trained with.
    """
    from transformers import CLIPTokenizer

    if (out_dir / "tokenizer_config.json").exists():
        tok = CLIPTokenizer.from_pretrained(str(out_dir))
    else:
        import ov_export

        tok = ov_export.make_clip_tokenizer(shapes_data.CAPTION_WORDS, out_dir)
    for word in shapes_data.CAPTION_WORDS:
        ids = tok(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"caption word {word!r} is {len(ids)} tokens: {tok.convert_ids_to_tokens(ids)}")
    if tok.pad_token != "<|endoftext|>" or tok.model_max_length != MAX_LENGTH:
        raise RuntimeError(f"unexpected tokenizer: pad {tok.pad_token!r}, max length {tok.model_max_length}")
    return tok


def tokenize(tok: Any, captions: list[str]) -> torch.Tensor:
    return tok(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
               return_tensors="pt").input_ids


# --------------------------------------------------------------------------------------------------
# Models


def make_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 64), layers_per_block=1, latent_channels=4,
        norm_num_groups=2, sample_size=shapes_data.IMAGE_SIZE,
    )


def make_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=shapes_data.IMAGE_SIZE // 8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=4,
    )


def make_text_encoder(tok: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config)


def make_noise_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def make_inference_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Stage 1: VAE


def vae_batch(seed: int, step: int, batch: int, crop: int) -> torch.Tensor:
    rng = step_rng(seed, "vae", step)
    images = []
    for _ in range(batch):
        image, _ = shapes_data.random_sample(rng, outline=rng.random() < 0.25, blank_rate=0.0)
        if crop < shapes_data.IMAGE_SIZE:
            x, y = rng.randrange(0, 65 - crop, 8), rng.randrange(0, 65 - crop, 8)
            image = image.crop((x, y, x + crop, y + crop))
        images.append(image)
    return to_tensor(images)


def train_vae(work: Path, budget: Budget, log_every: int = 100, ckpt_every: int = 500) -> Any:
    final = work / "vae"
    if (final / "config.json").exists():
        log(f"vae: using {final}")
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(str(final))
    torch.manual_seed(budget.seed)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt = work / "vae_ckpt.pt"
    start, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
        log(f"vae: resumed at step {start}")
    total = budget.vae_steps
    t0 = time.time() - elapsed
    running = running_chroma = 0.0
    vae.train()
    for step in range(start, total):
        # Mostly 32x32 crops (colour is learnt fastest there), every 4th batch whole images.
        crop = shapes_data.IMAGE_SIZE if step % 4 == 3 else 32
        x = vae_batch(budget.seed, step, 32 if crop == 32 else 16, crop)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * cosine_lr(step, total, 100)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=step_generator(budget.seed, "vae", step))
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / (x.shape[-1] * x.shape[-2] * 3)
        # Colour is learnt long after brightness (a grey plateau of several hundred steps);
        # weighting the chroma error twice shortens it.
        chroma = F.mse_loss(recon - recon.mean(1, keepdim=True), x - x.mean(1, keepdim=True))
        loss = F.mse_loss(recon, x) + chroma + 0.5 * F.l1_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running += loss.item()
        running_chroma += chroma.item()
        if (step + 1) % log_every == 0:
            log(f"vae step {step + 1}/{total} loss {running / log_every:.5f} "
                f"chroma {running_chroma / log_every:.5f} ({time.time() - t0:.0f}s)")
            running = running_chroma = 0.0
        if (step + 1) % ckpt_every == 0 or step + 1 == total:
            save_checkpoint(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(),
                                   "step": step + 1, "elapsed": time.time() - t0})
    seconds = time.time() - t0
    vae.eval()
    with torch.no_grad():
        x = vae_batch(budget.seed, 10**7, 256, shapes_data.IMAGE_SIZE)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=step_generator(budget.seed, "vae-scale", 0))
        scaling = float(1.0 / z.std())
        recon = vae.decode(posterior.mode()).sample
        ok = sum(shapes_data.score(r).color == shapes_data.score(o).color
                 for r, o in zip(to_images(recon), to_images(x), strict=True))
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(str(final))
    record_stage(work, "vae", {"steps": total, "seconds": round(seconds, 1), "scaling_factor": scaling,
                               "recon_mse": float(F.mse_loss(recon, x)),
                               "recon_color_agreement": ok / len(x)})
    log(f"vae: done in {seconds:.0f}s, scaling_factor {scaling:.4f}, colour agreement {ok}/{len(x)}")
    return vae


def record_stage(work: Path, stage: str, info: dict[str, Any]) -> None:
    path = work / "stages.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[stage] = info
    path.write_text(json.dumps(data, indent=2))


# --------------------------------------------------------------------------------------------------
# Stage 2: UNet + text encoder


@dataclass(frozen=True)
class LatentPool:
    """Pre-encoded training images: posterior mean/std per image and what each image shows.

    Encoding once instead of every step makes UNet steps ~30 % cheaper; each step still samples
    its latents from the posterior and picks a fresh caption form.
    """

    mean: torch.Tensor
    std: torch.Tensor
    specs: list[shapes_data.ShapeSpec]


def build_pool(work: Path, vae: Any, seed: int, stage: str, size: int, outline: bool) -> LatentPool:
    path = work / f"pool_{stage}_{size}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        return LatentPool(state["mean"], state["std"], state["specs"])
    t = time.time()
    means, stds, specs = [], [], []
    chunk = 256
    with torch.no_grad():
        for i in range(math.ceil(size / chunk)):
            rng = step_rng(seed, stage + "-pool", i)
            batch_specs = [shapes_data.random_spec(rng, outline) for _ in range(min(chunk, size - i * chunk))]
            images = [shapes_data.draw(spec, rng) for spec in batch_specs]
            dist = vae.encode(to_tensor(images)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            specs.extend(batch_specs)
    pool = LatentPool(torch.cat(means), torch.cat(stds), specs)
    save_checkpoint(path, {"mean": pool.mean, "std": pool.std, "specs": pool.specs})
    log(f"{stage}: encoded a pool of {size} images in {time.time() - t:.0f}s")
    return pool


def diffusion_batch(
    pool: LatentPool, seed: int, stage: str, step: int, batch: int, tok: Any, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    rng = step_rng(seed, stage, step)
    idx = [rng.randrange(len(pool.specs)) for _ in range(batch)]
    captions = [
        "" if rng.random() < 0.1 else shapes_data.caption(pool.specs[i], with_background=rng.random() < 0.5)
        for i in idx
    ]
    gen = step_generator(seed, stage + "-latent", step)
    index = torch.tensor(idx)
    latents = (pool.mean[index] + pool.std[index] * torch.randn(pool.mean[index].shape, generator=gen)) * scaling
    return latents, tokenize(tok, captions)


def diffusion_loss(
    unet: nn.Module, text_encoder: nn.Module, sched: Any, latents: torch.Tensor, ids: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Epsilon-prediction loss with min-SNR-5 weights."""
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    noisy = sched.add_noise(latents, noise, t)
    cond = text_encoder(ids)[0]
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.clamp(snr, max=5.0) / snr
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def make_pipeline(vae: Any, unet: Any, text_encoder: Any, tok: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
        scheduler=make_inference_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


EVAL_SEEDS = 2
EVAL_PROMPTS = [
    shapes_data.caption(shapes_data.ShapeSpec(shape, color, bg), True)
    for i, (color, shape, bg) in enumerate(
        (c, shapes_data.SHAPES[j % 3], shapes_data.BACKGROUNDS[(j + k) % 3])
        for j, c in enumerate(shapes_data.COLORS) for k in range(2)
    )
]


@torch.no_grad()
def evaluate(pipe: Any, prompts: list[str], seeds: int | None = None, guidance: float = 3.0) -> dict[str, float]:
    """Colour / background / triangle accuracy and mean fill ratio of the torch pipeline."""
    from PIL import Image

    seeds = EVAL_SEEDS if seeds is None else seeds
    color = bg = tri = 0
    fills: list[float] = []
    n = 0
    grid = []
    for s in range(seeds):
        out = pipe(prompts, num_inference_steps=20, guidance_scale=guidance, height=64, width=64,
                   generator=torch.Generator().manual_seed(1000 + s), output_type="np").images
        for prompt, img in zip(prompts, out, strict=True):
            words = prompt.split()
            score = shapes_data.score((img * 255).round().astype(np.uint8))
            color += score.color == words[1]
            bg += score.background == words[5]
            tri += score.is_triangle == (words[2] == "triangle")
            fills.append(score.fill_ratio)
            n += 1
            grid.append(Image.fromarray((img * 255).round().astype(np.uint8)))
    return {"color": color / n, "background": bg / n, "triangle": tri / n,
            "fill": float(np.mean(fills)), "_grid": grid}  # type: ignore[dict-item]


def save_grid(images: list[Any], path: Path, cols: int = 12) -> None:
    from PIL import Image

    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * 64, rows * 64))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * 64, (i // cols) * 64))
    grid.save(path)


def train_unet(work: Path, budget: Budget, vae: Any, tok: Any, log_every: int = 100,
               ckpt_every: int = 500, eval_every: int = 2000) -> tuple[Any, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    final_unet, final_te = work / "unet", work / "text_encoder"
    if (final_unet / "config.json").exists() and (final_te / "config.json").exists():
        log(f"unet: using {final_unet}")
        return UNet2DConditionModel.from_pretrained(str(final_unet)), CLIPTextModel.from_pretrained(str(final_te))
    torch.manual_seed(budget.seed + 1)
    unet, text_encoder = make_unet(), make_text_encoder(tok)
    vae.eval().requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    ema_unet, ema_te = EMA(unet, 0.998), EMA(text_encoder, 0.998)
    ckpt = work / "unet_ckpt.pt"
    start, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["te"])
        opt.load_state_dict(state["opt"])
        ema_unet.shadow, ema_te.shadow = state["ema_unet"], state["ema_te"]
        start, elapsed = state["step"], state["elapsed"]
        log(f"unet: resumed at step {start}")
    sched = make_noise_scheduler()
    scaling = vae.config.scaling_factor
    pool = build_pool(work, vae, budget.seed, "unet", budget.pool_size, outline=False)
    total = budget.unet_steps
    t0 = time.time() - elapsed
    running = 0.0
    unet.train()
    text_encoder.train()
    for step in range(start, total):
        latents, ids = diffusion_batch(pool, budget.seed, "unet", step, 64, tok, scaling)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * cosine_lr(step, total, 200)
        loss = diffusion_loss(unet, text_encoder, sched, latents, ids,
                              step_generator(budget.seed, "unet-noise", step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_te.update(text_encoder)
        running += loss.item()
        if (step + 1) % log_every == 0:
            log(f"unet step {step + 1}/{total} loss {running / log_every:.5f} ({time.time() - t0:.0f}s)")
            running = 0.0
        done = step + 1 == total
        if (step + 1) % ckpt_every == 0 or done:
            save_checkpoint(ckpt, {"unet": unet.state_dict(), "te": text_encoder.state_dict(),
                                   "opt": opt.state_dict(), "ema_unet": ema_unet.shadow,
                                   "ema_te": ema_te.shadow, "step": step + 1,
                                   "elapsed": time.time() - t0})
        if (step + 1) % eval_every == 0 and not done:
            report_eval(work, "unet", step + 1, vae, ema_unet, ema_te, tok)
    seconds = time.time() - t0
    eval_unet, eval_te = make_unet(), make_text_encoder(tok)
    eval_unet.load_state_dict(ema_unet.shadow)
    eval_te.load_state_dict(ema_te.shadow)
    eval_unet.eval()
    eval_te.eval()
    eval_unet.save_pretrained(str(final_unet))
    eval_te.save_pretrained(str(final_te))
    metrics = report_eval(work, "unet", total, vae, ema_unet, ema_te, tok)
    record_stage(work, "unet", {"steps": total, "seconds": round(seconds, 1), "batch": 64,
                                "eval_torch": metrics})
    log(f"unet: done in {seconds:.0f}s")
    return eval_unet, eval_te


def report_eval(work: Path, stage: str, step: int, vae: Any, ema_unet: EMA, ema_te: EMA,
                tok: Any) -> dict[str, float]:
    t = time.time()
    unet, te = make_unet(), make_text_encoder(tok)
    unet.load_state_dict(ema_unet.shadow)
    te.load_state_dict(ema_te.shadow)
    pipe = make_pipeline(vae, unet.eval(), te.eval(), tok)
    pipe.set_progress_bar_config(disable=True)
    metrics = evaluate(pipe, EVAL_PROMPTS)
    save_grid(metrics.pop("_grid"), work / f"eval_{stage}_{step}.png")  # type: ignore[arg-type]
    log(f"eval {stage} step {step}: {metrics} ({time.time() - t:.0f}s)")
    return metrics


# --------------------------------------------------------------------------------------------------
# Stage 3: outline LoRA


class LoRALinear(nn.Module):
    """base(x) + scale * up(down(x)), with up starting at zero so training starts from the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.rank, self.alpha = rank, alpha
        self.multiplier = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * (self.alpha / self.rank * self.multiplier)


def lora_targets(unet: nn.Module) -> list[str]:
    return [name for name, mod in unet.named_modules()
            if isinstance(mod, nn.Linear) and name.endswith(LORA_TARGET_SUFFIXES)]


def inject_lora(unet: nn.Module, rank: int, alpha: float) -> dict[str, LoRALinear]:
    wrapped: dict[str, LoRALinear] = {}
    for name in lora_targets(unet):
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        lora = LoRALinear(getattr(parent, child), rank, alpha)
        setattr(parent, child, lora)
        wrapped[name] = lora
    return wrapped


def kohya_key(module_path: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` -> `lora_unet_down_blocks_0_..._to_q`."""
    return "lora_unet_" + module_path.replace(".", "_")


def lora_state_dict(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, mod in wrapped.items():
        key = kohya_key(name)
        out[f"{key}.lora_down.weight"] = mod.down.weight.detach().clone().contiguous()
        out[f"{key}.lora_up.weight"] = mod.up.weight.detach().clone().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(mod.alpha))
    return out


def set_lora_multiplier(wrapped: dict[str, LoRALinear], value: float) -> None:
    for mod in wrapped.values():
        mod.multiplier = value


def train_lora(work: Path, budget: Budget, vae: Any, unet: Any, text_encoder: Any, tok: Any,
               log_every: int = 100, ckpt_every: int = 250) -> Path:
    from safetensors.torch import save_file

    final = work / "outline.safetensors"
    if final.exists():
        log(f"lora: using {final}")
        return final
    torch.manual_seed(budget.seed + 2)
    for m in (vae, unet, text_encoder):
        m.eval().requires_grad_(False)
    wrapped = inject_lora(unet, LORA_RANK, float(LORA_RANK))
    params = [p for mod in wrapped.values() for p in (mod.down.weight, mod.up.weight)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    ckpt = work / "lora_ckpt.pt"
    start, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        for name, mod in wrapped.items():
            mod.down.weight.data.copy_(state["lora"][name + ".down"])
            mod.up.weight.data.copy_(state["lora"][name + ".up"])
        opt.load_state_dict(state["opt"])
        start, elapsed = state["step"], state["elapsed"]
        log(f"lora: resumed at step {start}")
    sched = make_noise_scheduler()
    scaling = vae.config.scaling_factor
    pool = build_pool(work, vae, budget.seed, "lora", budget.pool_size // 3, outline=True)
    total = budget.lora_steps
    t0 = time.time() - elapsed
    running = 0.0
    for step in range(start, total):
        latents, ids = diffusion_batch(pool, budget.seed, "lora", step, 64, tok, scaling)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * cosine_lr(step, total, 50)
        loss = diffusion_loss(unet, text_encoder, sched, latents, ids,
                              step_generator(budget.seed, "lora-noise", step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % log_every == 0:
            log(f"lora step {step + 1}/{total} loss {running / log_every:.5f} ({time.time() - t0:.0f}s)")
            running = 0.0
        if (step + 1) % ckpt_every == 0 or step + 1 == total:
            lora = {}
            for name, mod in wrapped.items():
                lora[name + ".down"] = mod.down.weight.detach().clone()
                lora[name + ".up"] = mod.up.weight.detach().clone()
            save_checkpoint(ckpt, {"lora": lora, "opt": opt.state_dict(), "step": step + 1,
                                   "elapsed": time.time() - t0})
    seconds = time.time() - t0
    save_file(lora_state_dict(wrapped), str(final), metadata={"ss_network_dim": str(LORA_RANK),
                                                              "ss_network_alpha": str(LORA_RANK)})
    pipe = make_pipeline(vae, unet, text_encoder, tok)
    pipe.set_progress_bar_config(disable=True)
    fills = {}
    for m in (0.0, 0.5, 1.0):
        set_lora_multiplier(wrapped, m)
        metrics = evaluate(pipe, EVAL_PROMPTS, seeds=1)
        save_grid(metrics.pop("_grid"), work / f"eval_lora_{m}.png")  # type: ignore[arg-type]
        fills[str(m)] = metrics
        log(f"lora multiplier {m}: {metrics}")
    set_lora_multiplier(wrapped, 0.0)
    record_stage(work, "lora", {"steps": total, "seconds": round(seconds, 1), "rank": LORA_RANK,
                                "eval_torch": fills})
    log(f"lora: done in {seconds:.0f}s")
    return final


# --------------------------------------------------------------------------------------------------
# Export


def export(work: Path, out: Path, budget: Budget, tok: Any) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    shapes_dir = out / "shapes"
    loras_dir = out / "loras"
    vae = AutoencoderKL.from_pretrained(str(work / "vae")).eval()
    unet = UNet2DConditionModel.from_pretrained(str(work / "unet")).eval()
    te = CLIPTextModel.from_pretrained(str(work / "text_encoder")).eval()
    pipe = make_pipeline(vae, unet, te, tok)
    pipe.save_pretrained(str(work / "diffusers"))
    if shapes_dir.exists():
        shutil.rmtree(shapes_dir)
    t = time.time()
    sys.path.insert(0, str(REPO / "tools"))
    import ov_export  # the project's exporter (tools/ov_export.py)

    ov_export.export_sd15(pipe, shapes_dir)
    log(f"export: {shapes_dir} in {time.time() - t:.0f}s")
    loras_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / "outline.safetensors", loras_dir / "outline.safetensors")
    checks = {"lora_modules_applied_by_openvino_genai": verify_lora_keys(shapes_dir, loras_dir / "outline.safetensors")}
    write_manifest(work, out, budget, checks)


def verify_lora_keys(shapes_dir: Path, lora_path: Path) -> str:
    """Checks that openvino_genai applies every module of the LoRA (it silently ignores keys it
    cannot match): each module alone, with random weights, must change the generated image.

    Returns "applied/total"; raises when any module is ignored.
    """
    import tempfile

    import openvino_genai as ov_genai
    from safetensors.torch import load_file, save_file

    lora = load_file(str(lora_path))
    modules = sorted({k.split(".")[0] for k in lora})
    gen = torch.Generator().manual_seed(0)
    kw = {"width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 3.0, "rng_seed": 1}
    ignored = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = []
        for m in modules:
            one = {k: v for k, v in lora.items() if k.startswith(m + ".")}
            for part in ("lora_up", "lora_down"):
                key = f"{m}.{part}.weight"
                one[key] = torch.randn(one[key].shape, generator=gen) * 0.5
            save_file(one, str(Path(tmp) / f"{m}.safetensors"))
            adapters.append(ov_genai.Adapter(str(Path(tmp) / f"{m}.safetensors")))
        config = ov_genai.AdapterConfig()
        for a in adapters:
            config.add(a, 0.0)
        pipe = ov_genai.Text2ImagePipeline(str(shapes_dir), "CPU", adapters=config,
                                           INFERENCE_PRECISION_HINT="f32")
        base = np.array(pipe.generate("a red circle", adapters=ov_genai.AdapterConfig(), **kw).data, copy=True)
        for m, a in zip(modules, adapters, strict=True):
            image = np.array(pipe.generate("a red circle", adapters=ov_genai.AdapterConfig(a, 1.0), **kw).data)
            if np.array_equal(image, base):
                ignored.append(m)
    if ignored:
        raise RuntimeError(f"openvino_genai ignores {len(ignored)} LoRA modules: {ignored}")
    log(f"export: openvino_genai applies all {len(modules)} LoRA modules")
    return f"{len(modules)}/{len(modules)}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(work: Path, out: Path, budget: Budget, checks: dict[str, Any]) -> None:
    files = {
        str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*")) if p.is_file() and p.name != "MANIFEST.json"
    }
    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "safetensors", "openvino", "openvino-tokenizers",
                "openvino-genai", "numpy", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    stages = json.loads((work / "stages.json").read_text())
    manifest = {
        "generator": "tools/train_demo_model.py",
        "seed": budget.seed,
        "steps": {"vae": budget.vae_steps, "unet": budget.unet_steps, "lora": budget.lora_steps},
        "stages": stages,
        "training_seconds": round(sum(s.get("seconds", 0) for s in stages.values()), 1),
        "torch_threads": torch.get_num_threads(),
        "checks": checks,
        "python": sys.version.split()[0],
        "packages": versions,
        "files": files,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"manifest: {len(files)} files, {sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB")


# --------------------------------------------------------------------------------------------------
# Report: what the exported model does under openvino_genai (numbers for docs/demo-model.md)


def report(work: Path, out: Path, docs_image: Path) -> dict[str, Any]:
    """Measures the exported model with openvino_genai and writes build/demo/report.json and a
    picture for the docs: base model (rows 1-2) and the outline LoRA at alpha 1 (rows 3-4), one
    image per evaluation prompt (shapes_data.EVAL_PROMPTS), seed 11.
    """
    import openvino as ov
    import openvino_genai as ov_genai
    from PIL import Image

    shapes_dir, lora_path = out / "shapes", out / "loras" / "outline.safetensors"
    kw = {"width": 64, "height": 64, "num_inference_steps": 20, "guidance_scale": 3.0}
    result: dict[str, Any] = {
        "ir_bytes": sum(p.stat().st_size for p in shapes_dir.rglob("*") if p.is_file()),
        "lora_bytes": lora_path.stat().st_size,
    }
    t = time.time()
    pipe = ov_genai.Text2ImagePipeline(str(shapes_dir), "CPU")
    result["t2i_load_seconds"] = round(time.time() - t, 2)

    def gen(p: Any, prompt: str, seed: int, **extra: Any) -> np.ndarray:
        return np.array(p.generate(prompt, rng_seed=seed, **kw, **extra).data, copy=True)[0]

    rows: list[dict[str, Any]] = []
    times = []
    base_images = {}
    for seed in shapes_data.EVAL_SEEDS:
        for spec, prompt in zip(shapes_data.EVAL_SPECS, shapes_data.EVAL_PROMPTS, strict=True):
            t = time.perf_counter()
            image = gen(pipe, prompt, seed)
            times.append(time.perf_counter() - t)
            base_images[(prompt, seed)] = image
            s = shapes_data.score(image)
            rows.append({"prompt": prompt, "seed": seed, "color": s.color, "background": s.background,
                         "fill": round(s.fill_ratio, 3), "taper": round(s.taper, 3),
                         "foreground": round(s.foreground_fraction, 3), "shape": spec.shape,
                         "want_color": spec.color, "want_background": spec.background})
    n = len(rows)
    result["ms_per_image_64x64_20_steps"] = round(1000 * float(np.median(times)), 1)
    result["color_accuracy"] = sum(r["color"] == r["want_color"] for r in rows) / n
    result["background_accuracy"] = sum(r["background"] == r["want_background"] for r in rows) / n
    result["triangle_accuracy"] = sum((r["taper"] < shapes_data.TRIANGLE_TAPER_THRESHOLD)
                                      == (r["shape"] == "triangle") for r in rows) / n
    result["taper_by_shape"] = {
        shape: sorted(r["taper"] for r in rows if r["shape"] == shape) for shape in shapes_data.SHAPES}
    result["fill_by_shape"] = {
        shape: round(float(np.mean([r["fill"] for r in rows if r["shape"] == shape])), 3)
        for shape in shapes_data.SHAPES}
    result["misses"] = [r for r in rows if r["color"] != r["want_color"]
                        or r["background"] != r["want_background"]]

    i2i = ov_genai.Image2ImagePipeline(str(shapes_dir), "CPU")
    source = np.asarray(shapes_data.draw(shapes_data.ShapeSpec("square", "red", "black"),
                                         random.Random("i2i")), dtype=np.uint8)
    result["i2i_red_square_to_blue"] = [
        shapes_data.score(gen(i2i, "a blue circle on a black background", seed,
                              image=ov.Tensor(source[None]), strength=0.8)).color for seed in (1, 2, 3)]
    del i2i

    inpaint = ov_genai.InpaintingPipeline(str(shapes_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    src = np.asarray(shapes_data.draw(shapes_data.ShapeSpec("circle", "red", "gray"),
                                      random.Random("inpaint")), dtype=np.uint8)
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    keep = np.ones((64, 64), dtype=bool)
    keep[8:56, 8:56] = False
    inpaint_rows = []
    inpaint_images = []
    for seed in (1, 2, 3):
        image = gen(inpaint, "a green triangle on a gray background", seed, image=ov.Tensor(src[None]),
                    mask_image=ov.Tensor(mask[None]), strength=1.0)
        inpaint_images.append(image)
        hue, sat, val = shapes_data._hsv(image.astype(np.float32))
        green = (sat > 0.35) & (val > 0.25) & (np.abs(hue - shapes_data.COLOR_HUES["green"]) < 30)
        inpaint_rows.append({
            "green_in_mask": round(float(green[16:48, 16:48].mean()), 3),
            "outside_mean_abs_diff": round(float(np.abs(image.astype(np.int16) - src)[keep].mean()), 2),
            "inside_color": shapes_data.score(image[16:48, 16:48]).color,
        })
    result["inpaint"] = inpaint_rows
    del inpaint

    adapter = ov_genai.Adapter(str(lora_path))
    lpipe = ov_genai.Text2ImagePipeline(str(shapes_dir), "CPU", adapters=ov_genai.AdapterConfig(adapter))
    fills: dict[str, float] = {}
    lora_images = {}
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        values = []
        for seed in shapes_data.EVAL_SEEDS[:2]:
            for prompt in shapes_data.EVAL_PROMPTS:
                image = gen(lpipe, prompt, seed, adapters=ov_genai.AdapterConfig(adapter, alpha))
                lora_images[(prompt, seed, alpha)] = image
                values.append(shapes_data.score(image).fill_ratio)
        fills[str(alpha)] = round(float(np.mean(values)), 3)
    result["lora_mean_fill_by_alpha"] = fills

    seed = shapes_data.EVAL_SEEDS[0]
    tiles = [base_images[(p, seed)] for p in shapes_data.EVAL_PROMPTS]
    tiles += [lora_images[(p, seed, 1.0)] for p in shapes_data.EVAL_PROMPTS]
    grid = Image.new("RGB", (6 * 64, 4 * 64))
    for i, tile in enumerate(tiles):
        grid.paste(Image.fromarray(tile), ((i % 6) * 64, (i // 6) * 64))
    docs_image.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((6 * 128, 4 * 128), Image.Resampling.NEAREST).save(docs_image)
    strip = Image.new("RGB", (4 * 64, 64))
    for i, tile in enumerate([src, *inpaint_images]):
        strip.paste(Image.fromarray(tile), (i * 64, 0))
    strip.resize((4 * 128, 128), Image.Resampling.NEAREST).save(docs_image.with_name("demo-inpaint.png"))
    (work / "report.json").write_text(json.dumps(result, indent=2))
    log("report: " + json.dumps({k: v for k, v in result.items() if k not in ("misses", "taper_by_shape")}))
    return result


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all", *STAGES), default="all",
                        help="run one stage (earlier stages' results are reused from --work)")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=8000)
    parser.add_argument("--lora-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=60000,
                        help="images pre-encoded for the UNet stage (a third of it for the LoRA)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is ~10x faster than 2 when other jobs share the 2 cores")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "models" / "demo")
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--docs-image", type=Path, default=REPO / "docs" / "img" / "demo-shapes.png")
    parser.add_argument("--eval-seeds", type=int, default=2, help="seeds per prompt in the torch evaluations")
    args = parser.parse_args(argv)
    global EVAL_SEEDS
    EVAL_SEEDS = args.eval_seeds

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    budget = Budget(args.vae_steps, args.unet_steps, args.lora_steps, args.seed, args.pool_size)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    meta = work / "budget.json"
    if meta.exists() and json.loads(meta.read_text()) != budget.__dict__:
        log(f"note: {meta} records {meta.read_text().strip()}; checkpoints there belong to that budget")
    meta.write_text(json.dumps(budget.__dict__))
    tok = build_tokenizer(work / "tokenizer")
    run = STAGES if args.stage == "all" else (args.stage,)
    vae = unet = te = None
    if "vae" in run or "unet" in run or "lora" in run:
        vae = train_vae(work, budget)
    if "unet" in run or "lora" in run:
        unet, te = train_unet(work, budget, vae, tok, eval_every=args.eval_every)
    if "lora" in run:
        train_lora(work, budget, vae, unet, te, tok)
    if "export" in run:
        export(work, args.out, budget, tok)
    if "report" in run:
        report(work, args.out, args.docs_image)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
