"""What an exported image generation model is, read from its folder without compiling anything.

:func:`read_model_info` reads ``model_index.json``, the submodels' ``config.json`` and the UNet IR's
shapes: the family (SD, SDXL, SD3, FLUX, LCM), whether it is an inpainting variant, the prompt fields
and guidance it takes, the pixel multiple sizes must respect, its largest side and its step limit.
The family tables below are the rules the request checks and pipeline building read.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calculators.image_gen.sizes import unet_latent_multiple


class Task(enum.Enum):
    """What a request asks the model to do; each task has its own pipeline class."""

    TEXT2IMAGE = "text-to-image"
    IMAGE2IMAGE = "image-to-image"
    INPAINTING = "inpainting"


class Family(enum.Enum):
    """Model architectures OpenVINO GenAI serves, by the prompts and options they take."""

    SD = "SD"
    SDXL = "SDXL"
    SD3 = "SD3"
    FLUX = "FLUX"
    LCM = "LCM"
    UNKNOWN = "unknown"


class Guidance(enum.Enum):
    """What ``guidance_scale`` means to a family."""

    #: guidance_scale > 1 runs a second, unconditional pass per step (negative prompts steer it).
    CLASSIFIER_FREE = "classifier-free guidance"
    #: The scale enters the denoiser as an embedding: one pass per step, no negative prompt.
    EMBEDDED = "a guidance embedding"


#: Request text fields each family uses besides ``prompt``.
FAMILY_TEXT_FIELDS: Mapping[Family, frozenset[str]] = {
    Family.SD: frozenset({"negative_prompt"}),
    Family.SDXL: frozenset({"prompt_2", "negative_prompt", "negative_prompt_2"}),
    Family.SD3: frozenset({"prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3"}),
    Family.FLUX: frozenset({"prompt_2"}),
    # LCM distils guidance into the UNet; OpenVINO GenAI refuses a negative prompt.
    Family.LCM: frozenset(),
    Family.UNKNOWN: frozenset({"prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2",
                               "negative_prompt_3"}),
}
#: What guidance_scale means per family (FLUX.1-dev and LCM UNets take it as an embedding).
FAMILY_GUIDANCE: Mapping[Family, Guidance] = {
    Family.SD: Guidance.CLASSIFIER_FREE,
    Family.SDXL: Guidance.CLASSIFIER_FREE,
    Family.SD3: Guidance.CLASSIFIER_FREE,
    Family.FLUX: Guidance.EMBEDDED,
    Family.LCM: Guidance.EMBEDDED,
    Family.UNKNOWN: Guidance.CLASSIFIER_FREE,
}
#: Families whose pipelines fix classifier-free guidance on or off at their first generate
#: (OpenVINO GenAI 2026.4 SD3: the other way fails every later request of that pipeline).
GUIDANCE_FIXED_AT_FIRST_GENERATE = frozenset({Family.SD3})
#: Families whose pipelines may be derived from one another (sharing one weight load). OpenVINO
#: GenAI 2026.4 accepts deriving FLUX and SD3 pipelines, but their generate() then crashes the
#: process: both load every pipeline from disk.
DERIVABLE = frozenset({Family.SD, Family.SDXL, Family.LCM})
#: Families whose text encoders include T5 (``max_sequence_length`` applies).
T5_FAMILIES = frozenset({Family.SD3, Family.FLUX, Family.UNKNOWN})
#: Families with a UNet denoiser: kohya LoRA adapters (``lora_unet_...``, ``lora_te_...``) apply, and
#: each adapter's layers are checked against the model's at load. The others (SD3, FLUX) have a
#: transformer: such adapters cannot apply to them and are refused at load.
UNET_FAMILIES = frozenset({Family.SD, Family.SDXL, Family.LCM})
#: Families whose default step count, when the node does not set default_num_inference_steps, is
#: the model's own (LCM: 4) rather than OVMS's 50: LCM is distilled for a few steps.
MODEL_DEFAULT_STEPS = frozenset({Family.LCM})


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model folder that request validation needs; read without loading the model."""

    class_name: str
    family: Family
    inpainting_variant: bool
    denoiser_in_channels: int | None
    size_multiple: int
    #: The most inference steps the scheduler takes (None: unknown), and where that limit comes from.
    max_steps: int | None = None
    max_steps_source: str = "the scheduler's num_train_timesteps"
    #: The longest side the denoiser can generate, in pixels (SD3: its positional embedding covers
    #: pos_embed_max_size patches per side); None when unlimited or unknown.
    max_side: int | None = None

    @property
    def label(self) -> str:
        return f"{self.family.value} ({self.class_name})"

    @property
    def text_fields(self) -> frozenset[str]:
        return FAMILY_TEXT_FIELDS[self.family]

    @property
    def guidance(self) -> Guidance:
        return FAMILY_GUIDANCE[self.family]

    @property
    def uses_max_sequence_length(self) -> bool:
        return self.family in T5_FAMILIES

    def single_image_reason(self, task: Task) -> str | None:
        """Why ``task`` can produce only one image per request with this model, or None.

        OpenVINO GenAI 2026.4 fails for n > 1 on: inpainting with a plain 4-channel SD, SDXL or LCM
        UNet (the image latent is not batched), and every FLUX and SD3 edit (FLUX: latent shapes do
        not match; SD3: inpainting asserts batch size 1, image-to-image fails or returns one image).
        """
        if (task is Task.INPAINTING and self.family in (Family.SD, Family.SDXL, Family.LCM)
                and self.denoiser_in_channels == 4):
            return f"inpainting with this {self.family.value} model (4-channel UNet)"
        if task is not Task.TEXT2IMAGE and self.family in (Family.FLUX, Family.SD3):
            return f"{task.value} with {self.family.value} models"
        return None


def family_of(class_name: str) -> Family:
    """The family of a diffusers pipeline class name (``StableDiffusionXLInpaintPipeline`` -> SDXL)."""
    if class_name.startswith("StableDiffusion3"):
        return Family.SD3
    if class_name.startswith("StableDiffusionXL"):
        return Family.SDXL
    if class_name.startswith("LatentConsistencyModel"):
        return Family.LCM
    if class_name.startswith("StableDiffusion"):
        return Family.SD
    if class_name.startswith("Flux"):
        return Family.FLUX
    return Family.UNKNOWN


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_model_info(models_path: Path) -> ModelInfo:
    """The :class:`ModelInfo` of an exported model folder; raises ValueError when
    ``model_index.json`` is missing or names no pipeline class."""
    index = _read_json(models_path / "model_index.json")
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"{models_path / 'model_index.json'} is missing or has no \"_class_name\"")
    family = family_of(class_name)
    unet = _read_json(models_path / "unet" / "config.json")
    denoiser = unet or _read_json(models_path / "transformer" / "config.json")
    in_channels = denoiser.get("in_channels")
    vae = _read_json(models_path / "vae_decoder" / "config.json")
    blocks = vae.get("block_out_channels")
    vae_scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    max_steps, source = _max_steps(models_path, family)
    return ModelInfo(
        class_name=class_name,
        family=family,
        inpainting_variant="Inpaint" in class_name or "Fill" in class_name,
        denoiser_in_channels=in_channels if isinstance(in_channels, int) else None,
        # SPEC §5: sizes are always multiples of 8, and of whatever the model itself needs.
        size_multiple=math.lcm(8, _size_multiple(models_path, family, unet, denoiser, vae_scale)),
        max_steps=max_steps,
        max_steps_source=source,
        max_side=_max_side(family, denoiser, vae_scale),
    )


def _patch(denoiser: dict[str, Any]) -> int:
    patch = denoiser.get("patch_size")
    return patch if isinstance(patch, int) and patch > 0 else 2


def _size_multiple(models_path: Path, family: Family, unet: dict[str, Any], denoiser: dict[str, Any],
                   vae_scale: int) -> int:
    """What width and height must be multiples of for the denoiser (before the SPEC's 8)."""
    # The UNet IR decides (see calculators.image_gen.sizes); only when it cannot tell, the config's
    # block count gives the strictest rule an export may have (upsampling by exactly 2 per block).
    latent = unet_latent_multiple(models_path / "unet" / "openvino_model.xml")
    unet_blocks = unet.get("block_out_channels")
    if latent is not None:
        return vae_scale * latent
    if isinstance(unet_blocks, list) and unet_blocks:
        return int(vae_scale * 2 ** (len(unet_blocks) - 1))
    if family is Family.FLUX:
        return vae_scale * 2  # latents are packed 2x2
    if family is Family.SD3 or "patch_size" in denoiser:
        return vae_scale * _patch(denoiser)
    return vae_scale


def _max_side(family: Family, denoiser: dict[str, Any], vae_scale: int) -> int | None:
    """SD3's largest side: its position embedding covers pos_embed_max_size patches."""
    pos_embed = denoiser.get("pos_embed_max_size")
    if family is Family.SD3 and isinstance(pos_embed, int) and pos_embed > 0:
        return pos_embed * _patch(denoiser) * vae_scale
    return None


def _max_steps(models_path: Path, family: Family) -> tuple[int | None, str]:
    """The most steps the scheduler can take, and where that number comes from."""
    scheduler = _read_json(models_path / "scheduler" / "scheduler_config.json")
    train_steps = scheduler.get("num_train_timesteps")
    max_steps = train_steps if isinstance(train_steps, int) and train_steps > 0 else None
    source = "the scheduler's num_train_timesteps"
    original = scheduler.get("original_inference_steps")
    if (family is Family.LCM and isinstance(original, int) and original > 0
            and (max_steps is None or original < max_steps)):
        # LCM's timesteps are a subset of its original_inference_steps schedule (diffusers refuses more).
        max_steps, source = original, "the LCM scheduler's original_inference_steps"
    return max_steps, source
