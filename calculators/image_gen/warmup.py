"""Warm-up before readiness: every pipeline of every set runs one small generate at load time.

OpenVINO finishes preparing a compiled model (weights made resident and repacked) at its first
inference: on the SD1.5-shaped model a set holds 0.3 GiB when compiled and 4.2 GiB after its first
request, which is also much slower than the next. :func:`warm_up` runs that first inference at load
time for every task a set serves (text-to-image, image-to-image, inpainting: edits run the VAE
encoder, and FLUX and SD3 load each task's pipeline on its own), so no user pays for it.

Some families fix settings at a pipeline's first generate (SD3: classifier-free guidance on or off;
SD3 and FLUX: the T5 sequence length), and LoRA adapters keep per-set state. The warm-up therefore
passes what a request that leaves every optional field out passes (:func:`warm_up_kwargs`): the
model's own guidance and T5 length, a reshaped node's static size, image count and guidance, and the
``adapters`` of a base-model request (every DYNAMIC adapter at alpha 0 plus the marker). Only the
size (a small square unless reshaped), the seed and the step count differ, and a pipeline keeps none
of them. A failed warm-up is logged and the node still loads; that pipeline's first request then
pays as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calculators.image_gen.genai_errors import genai_reason
from calculators.image_gen.lora import LoraPlan
from calculators.image_gen.model_info import Family, ModelInfo, Task
from calculators.image_gen.options import NodeSettings

log = logging.getLogger("calculators.image_gen")

WARMED_FAMILIES = frozenset({Family.SD, Family.SDXL, Family.SD3, Family.FLUX, Family.LCM})
#: Side of the warm-up image when the shapes are dynamic (rounded up to the model's size multiple).
WARMUP_SIDE = 64
#: Grey input image and a mask that repaints everything: the edit runs its whole path.
IMAGE_GREY = 127
MASK_REPAINT = 255


def warm_up_kwargs(settings: NodeSettings, info: ModelInfo) -> dict[str, Any]:
    """The text-to-image ``generate`` arguments of the warm-up: those of a request that leaves every
    optional field out (see the module docstring), at one step and seed 0, at the static shape or a
    small square."""
    if settings.reshaped:
        res = settings.static_resolutions[0]
        width, height = res.width, res.height
    else:
        width = height = info.size_multiple * math.ceil(WARMUP_SIDE / info.size_multiple)
    kwargs: dict[str, Any] = {"width": width, "height": height, "num_images_per_prompt": images_per_request(settings),
                              "num_inference_steps": 1, "rng_seed": 0}
    if settings.reshaped and settings.static_guidance_scale is not None:
        kwargs["guidance_scale"] = settings.static_guidance_scale
    return kwargs


def images_per_request(settings: NodeSettings) -> int:
    """The image count of a request without ``n`` (a reshaped node's static count, else 1)."""
    return settings.static_num_images_per_prompt or 1


def edit_steps(strength: float) -> int | None:
    """The fewest steps that leave one denoising step at ``strength`` (GenAI keeps
    int(steps * strength) in float32); None when no step count does."""
    if not strength > 0.0:
        return None
    steps = max(1, math.ceil(1.0 / strength))
    while int(np.float32(steps) * np.float32(strength)) < 1:
        steps += 1
    return steps


@dataclass(frozen=True)
class WarmupCall:
    """One task's warm-up ``generate``: its input tensors (edits) and keyword arguments."""

    task: Task
    kwargs: dict[str, Any]
    inputs: tuple[np.ndarray, ...] = field(default=())

    def run(self, pipe: Any) -> None:
        import openvino as ov  # type: ignore[import-untyped]

        pipe.generate("", *(ov.Tensor(array) for array in self.inputs), **self.kwargs)


def task_call(task: Task, pipe: Any, base: dict[str, Any], info: ModelInfo) -> WarmupCall | str:
    """The warm-up of ``task`` on ``pipe`` (any set's), or why the task is not warmed: an edit at the
    pipeline's default strength, with the fewest steps that run one denoising step."""
    if task is Task.TEXT2IMAGE:
        return WarmupCall(task, base)
    single = info.single_image_reason(task)
    if single is not None and base["num_images_per_prompt"] > 1:
        return f"{single} supports one image per request"
    steps = edit_steps(float(pipe.get_generation_config().strength))
    if steps is None:
        return "its default strength runs no step"
    shape = (1, base["height"], base["width"], 3)
    image = np.full(shape, IMAGE_GREY, dtype=np.uint8)
    inputs = (image,) if task is Task.IMAGE2IMAGE else (image, np.full(shape, MASK_REPAINT, dtype=np.uint8))
    return WarmupCall(task, {**base, "num_inference_steps": steps}, inputs)


@dataclass
class WarmupLog:
    """What the warm-up did, for the load log."""

    #: Each warmed task and the seconds its warm-up took (every set).
    warmed: dict[Task, float] = field(default_factory=dict)
    skipped: dict[Task, str] = field(default_factory=dict)

    def describe(self, sets: int, base: dict[str, Any], seconds: float) -> str:
        tasks = ", ".join(f"{t.value} ({s:.1f} s)" for t, s in self.warmed.items()) or "no task"
        skipped = "".join(f"; {t.value} not warmed ({why})" for t, why in self.skipped.items())
        lora = "; LoRA adapters as a base-model request" if "adapters" in base else ""
        return (f"warmed up {sets} pipeline set(s): {tasks} at {base['width']}x{base['height']}, one denoising "
                f"step each{lora}{skipped}; in {seconds:.1f} s")


def warm_task(node: str, sets: Sequence[Any], call: WarmupCall) -> str | None:
    """Run ``call`` on every set's pipeline of its task; the failure (logged) stops it, else None."""
    for pipes in sets:
        try:
            call.run(pipes.pipelines[call.task])
        except Exception as exc:  # the node still serves; this pipeline's first request prepares it instead
            log.warning('node "%s": warm-up of %s in pipeline set %d failed (%s); continuing', node,
                        call.task.value, pipes.index, genai_reason(exc))
            return f"failed in set {pipes.index}"
    return None


def warm_up(node: str, sets: Sequence[Any], settings: NodeSettings, info: ModelInfo, lora: LoraPlan) -> None:
    """Run the first inference of every pipeline of every set (see the module docstring)."""
    if info.family not in WARMED_FAMILIES or not sets:
        log.info('node "%s": no warm-up (%s models are not warmed); the first request of each set prepares its '
                 "models", node, info.family.value)
        return
    base = {**warm_up_kwargs(settings, info), **lora.generate_kwargs(lora.graph_name, None)}
    started = time.monotonic()
    done = WarmupLog()
    for task in Task:
        pipe = sets[0].pipelines.get(task)
        if pipe is None:
            continue
        task_started = time.monotonic()
        call = task_call(task, pipe, base, info)
        failure = call if isinstance(call, str) else warm_task(node, sets, call)
        if failure is None:
            done.warmed[task] = time.monotonic() - task_started
        else:
            done.skipped[task] = failure
    log.info('node "%s": %s', node, done.describe(len(sets), base, time.monotonic() - started))
