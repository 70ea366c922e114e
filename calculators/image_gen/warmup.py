"""Warm-up before readiness: one small generate per pipeline set, so no user pays for the first inference.

OpenVINO finishes preparing a compiled model (weights made resident and repacked) at its first
inference: on the SD1.5-shaped model a set holds 0.3 GiB when compiled and 4.2 GiB after its first
request, which is also much slower than the next. :func:`warm_up` runs that first inference at load
time, one 1-step text-to-image generate at a small size per set (image-to-image and inpainting share
the set's compiled models). Only SD and SDXL models without LoRA adapters are warmed: other families fix
settings at their first generate (T5 sequence length, SD3 guidance), and adapters keep per-set state.
A failed warm-up is logged and the node still loads; the first request then pays as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from calculators.image_gen.lora import LoraPlan
from calculators.image_gen.model_info import Family, ModelInfo, Task
from calculators.image_gen.options import NodeSettings

log = logging.getLogger("calculators.image_gen")

WARMED_FAMILIES = frozenset({Family.SD, Family.SDXL})
#: Side of the warm-up image when the shapes are dynamic (rounded up to the model's size multiple).
WARMUP_SIDE = 64


def warm_up_kwargs(settings: NodeSettings, info: ModelInfo) -> dict[str, Any]:
    """The generate arguments of the warm-up: one step at the static shape, or a small square."""
    if settings.reshaped:
        res = settings.static_resolutions[0]
        kwargs: dict[str, Any] = {"width": res.width, "height": res.height, "num_inference_steps": 1, "rng_seed": 0,
                                  "num_images_per_prompt": settings.static_num_images_per_prompt or 1}
        if settings.static_guidance_scale is not None:
            kwargs["guidance_scale"] = settings.static_guidance_scale
        return kwargs
    side = info.size_multiple * math.ceil(WARMUP_SIDE / info.size_multiple)
    return {"width": side, "height": side, "num_inference_steps": 1, "rng_seed": 0}


def warm_up(node: str, sets: Sequence[Any], settings: NodeSettings, info: ModelInfo, lora: LoraPlan) -> None:
    """Run the first inference of every set's text-to-image pipeline (see the module docstring)."""
    if info.family not in WARMED_FAMILIES or not lora.empty:
        reason = f"{info.family.value} models are not warmed" if info.family not in WARMED_FAMILIES else "LoRA adapters"
        log.info('node "%s": no warm-up (%s); the first request of each set prepares its models', node, reason)
        return
    kwargs = warm_up_kwargs(settings, info)
    started = time.monotonic()
    for pipes in sets:
        pipe = pipes.pipelines.get(Task.TEXT2IMAGE)
        if pipe is None:
            return
        try:
            pipe.generate("", **kwargs)
        except Exception as exc:  # the node still serves; its first request pays the preparation instead
            log.warning('node "%s": warm-up of pipeline set %d failed (%s); continuing', node, pipes.index, exc)
            return
    log.info('node "%s": warmed up %d pipeline set(s) (1 step at %dx%d) in %.1f s', node, len(sets),
             kwargs["width"], kwargs["height"], time.monotonic() - started)
