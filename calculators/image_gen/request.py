"""Strict parsing of image requests into a frozen :class:`ImageRequest` (SPEC §5 and §9).

``images/generations`` takes a JSON object, ``images/edits`` multipart/form-data (``image`` or
``image[]``: exactly one file; ``mask`` turns the edit into inpainting). Every field is checked
for its type before anything else (:mod:`calculators.image_gen.request_fields`), then, stage by
stage, against the model and the node's limits (the output size in
:mod:`calculators.image_gen.request_size`). Everything a pipeline would silently ignore or misread
is refused here, with a BadRequest naming the field: nothing reaches ``generate`` unchecked.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calculators.image_gen.images import (
    OUTPUT_FORMATS,
    decode_image,
    image_tensor_array,
    mask_tensor_array,
    resized,
)
from calculators.image_gen.options import MAX_RNG_SEED, NodeSettings, Resolution
from calculators.image_gen.pipelines import (
    GUIDANCE_FIXED_AT_FIRST_GENERATE,
    Family,
    ModelDefaults,
    ModelInfo,
    Task,
    edit_limit,
)
from calculators.image_gen.request_fields import (
    FIELDS,
    FILE_FIELDS,
    TEXT_FIELDS,
    UNSUPPORTED,
    Fields,
    json_raws,
    multipart_raws,
)
from calculators.image_gen.request_size import check_size, default_edit_size, default_size, requested_size
from ovms_graph.errors import BadRequest
from ovms_graph.json_body import parse_json_object
from ovms_graph.packets import HttpPayload, MultipartView

GENERATIONS = "images/generations"
EDITS = "images/edits"
MAX_SEED = MAX_RNG_SEED
#: Seeds drawn for requests without ``rng_seed``: OpenVINO GenAI seeds a 32-bit Mersenne Twister,
#: so only the low 32 bits of a seed matter.
DRAWN_SEEDS = 2**32
MAX_END_USER_LENGTH = 256
MAX_SEQUENCE_LENGTH = 512
MAX_PARTIAL_IMAGES = 3
NEGATIVE_FIELDS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3")


#: ``quality`` values and the name the response echoes (the openai SDK's ImagesResponse allows
#: low, medium, high, xhigh and max).
QUALITY_ECHO: Mapping[str, str] = {
    "auto": "medium", "standard": "medium", "medium": "medium", "low": "low",
    "high": "high", "hd": "high", "xhigh": "xhigh", "max": "max",
}
BACKGROUNDS = ("auto", "opaque")
MODERATIONS = ("auto", "low")

@dataclass(frozen=True)
class RequestRules:
    """Everything request validation depends on: node options, model facts, available tasks."""

    settings: NodeSettings
    info: ModelInfo
    defaults: ModelDefaults
    tasks: frozenset[Task]
    refused: Mapping[Task, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRequest:
    """A fully validated request: exactly what will be passed to the pipeline, and how to answer."""

    route: str
    task: Task
    prompt: str
    width: int
    height: int
    num_images: int
    num_inference_steps: int
    texts: Mapping[str, str] = field(default_factory=dict)
    guidance_scale: float | None = None
    rng_seed: int = 0
    strength: float | None = None
    max_sequence_length: int | None = None
    output_format: str = "png"
    output_compression: int | None = None
    stream: bool = False
    partial_images: int = 0
    lora_alphas: object | None = None
    quality: str = "medium"
    end_user: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline's ``generate`` (besides prompt, images and callback)."""
        kwargs: dict[str, Any] = {
            "width": self.width,
            "height": self.height,
            "num_images_per_prompt": self.num_images,
            "num_inference_steps": self.num_inference_steps,
        }
        kwargs.update(self.texts)
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        kwargs["rng_seed"] = self.rng_seed
        if self.strength is not None:
            kwargs["strength"] = self.strength
        if self.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.max_sequence_length
        return kwargs


# --------------------------------------------------------------------------------------------------
# The request


def parse_request(payload: HttpPayload, rules: RequestRules) -> ImageRequest:
    """The validated request ``payload`` carries; raises BadRequest naming the offending field."""
    if payload.route == GENERATIONS:
        if payload.multipart is not None:
            raise BadRequest("images/generations expects a JSON body (Content-Type: application/json)")
        body = payload.parsed_json if payload.parsed_json is not None else parse_json_object(payload.body)
        fields = Fields(json_raws(body))
        if not fields.has("prompt"):
            raise BadRequest("prompt field is missing in JSON body", param="prompt")
        return _build(fields, rules, route=GENERATIONS, form=None)
    if payload.route == EDITS:
        if payload.multipart is None:
            raise BadRequest("images/edits expects a multipart/form-data body with the image file")
        fields = Fields(multipart_raws(payload.multipart))
        if not fields.has("prompt"):
            raise BadRequest("Missing required field: 'prompt'", param="prompt")
        return _build(fields, rules, route=EDITS, form=payload.multipart)
    raise BadRequest(f"Unsupported URI: {payload.uri}")


def _build(f: Fields, rules: RequestRules, *, route: str, form: MultipartView | None) -> ImageRequest:
    """The request ``f`` describes, checked stage by stage; each stage raises the first problem it
    finds, so a request with several problems is refused for the one of the earliest stage."""
    prompt = f.get_str("prompt")
    if prompt is None:
        raise BadRequest("prompt field is not a string", param="prompt")
    _check_usable(f, rules.info, route)
    output_format, compression = _output(f)
    stream, partial_images = _streaming(f)
    quality = _quality(f)
    end_user = _end_user(f)
    count = _num_images(f, rules.settings, stream)
    steps = _steps(f, quality, rules)
    guidance = _guidance(f, rules)
    seed = _seed(f, rules.settings)
    strength = _strength(f)
    max_len = _max_sequence_length(f, rules)
    inputs = _inputs(f, rules, form, _EditLimits(steps, strength, count))
    return ImageRequest(
        route=route, task=inputs.task, prompt=prompt, width=inputs.size.width, height=inputs.size.height,
        num_images=count.value, num_inference_steps=steps,
        texts={name: value for name in TEXT_FIELDS if (value := f.get_str(name)) is not None},
        guidance_scale=guidance, rng_seed=seed, strength=strength, max_sequence_length=max_len,
        output_format=output_format, output_compression=compression, stream=stream,
        partial_images=partial_images, lora_alphas=f.values.get("lora_alphas"),
        quality=QUALITY_ECHO[quality or "auto"], end_user=end_user, image=inputs.image, mask=inputs.mask,
    )


def _check_usable(f: Fields, info: ModelInfo, route: str) -> None:
    """Fields the model or the route cannot use."""
    for name in TEXT_FIELDS:
        if f.has(name) and name not in info.text_fields:
            takes = ", ".join(["prompt", *sorted(info.text_fields)])
            raise BadRequest(f"{name} is not supported by {info.label} models; they take {takes}", param=name)
    if f.has("max_sequence_length") and not info.uses_max_sequence_length:
        raise BadRequest(f"max_sequence_length is not supported by {info.label} models (only models with a T5 "
                         "text encoder, SD3 and FLUX, use it)", param="max_sequence_length")
    if f.has("strength") and route != EDITS:
        raise BadRequest("strength is only supported by images/edits", param="strength")


def _output(f: Fields) -> tuple[str, int | None]:
    """``(output_format, output_compression)``; ``response_format`` must be b64_json."""
    response_format = f.get_str("response_format")
    if response_format is not None and response_format != "b64_json":
        raise BadRequest(f"Unsupported response_format: {response_format}. Only b64_json is supported.",
                         param="response_format")
    output_format = f.get_str("output_format") or "png"
    if output_format not in OUTPUT_FORMATS:
        raise BadRequest(f'output_format must be one of png, jpeg, webp, got "{output_format}"',
                         param="output_format")
    compression = f.get_int("output_compression")
    if compression is not None:
        if not 0 <= compression <= 100:
            raise BadRequest(f"output_compression must be between 0 and 100, got {compression}",
                             param="output_compression")
        if output_format == "png":
            raise BadRequest("output_compression applies only to output_format jpeg or webp",
                             param="output_compression")
    return output_format, compression


def _streaming(f: Fields) -> tuple[bool, int]:
    """``(stream, partial_images)``."""
    stream = bool(f.get_bool("stream"))
    partial_images = f.get_int("partial_images") or 0
    if f.has("partial_images"):
        if not 0 <= partial_images <= MAX_PARTIAL_IMAGES:
            raise BadRequest(f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}, got {partial_images}",
                             param="partial_images")
        if not stream:
            raise BadRequest("partial_images requires stream: true", param="partial_images")
    return stream, partial_images


def _quality(f: Fields) -> str | None:
    """The requested ``quality`` (None when absent), after ``background`` and ``moderation`` are checked."""
    quality = f.get_str("quality")
    if quality is not None and quality not in QUALITY_ECHO:
        raise BadRequest(f'quality must be one of {", ".join(QUALITY_ECHO)}, got "{quality}"', param="quality")
    background = f.get_str("background")
    if background == "transparent":
        raise BadRequest("background transparent is not supported: this server draws opaque images "
                         "(use auto or opaque)", param="background")
    if background is not None and background not in BACKGROUNDS:
        raise BadRequest(f'background must be one of auto, opaque, got "{background}"', param="background")
    moderation = f.get_str("moderation")
    if moderation is not None and moderation not in MODERATIONS:
        raise BadRequest(f'moderation must be one of auto, low, got "{moderation}"', param="moderation")
    return quality


@dataclass(frozen=True)
class _ImageCount:
    """How many images a request asks for, and the field it used (``n`` or ``num_images_per_prompt``)."""

    name: str
    value: int


def _num_images(f: Fields, settings: NodeSettings, stream: bool) -> _ImageCount:
    if f.has("n") and f.has("num_images_per_prompt"):
        raise BadRequest("n and num_images_per_prompt are mutually exclusive; set only one", param="n")
    n_name = "n" if f.has("n") else "num_images_per_prompt"
    num_images = f.get_int(n_name)
    if num_images is None:
        num_images = settings.static_num_images_per_prompt or 1
    else:
        _check_num_images(n_name, num_images, settings)
    if stream and num_images != 1:
        raise BadRequest(f"stream: true supports one image per request, got {n_name}={num_images}", param=n_name)
    return _ImageCount(n_name, num_images)


def _check_num_images(n_name: str, num_images: int, settings: NodeSettings) -> None:
    if num_images <= 0:
        raise BadRequest(f"{n_name} must be higher than 0", param=n_name)
    if num_images > settings.max_num_images_per_prompt:
        raise BadRequest(f"{n_name} is greater than max_num_images_per_prompt: "
                         f"{settings.max_num_images_per_prompt}", param=n_name)
    if settings.reshaped and num_images != (settings.static_num_images_per_prompt or 1):
        raise BadRequest(f"{n_name} doesn't match underlying model shape: the model is reshaped for "
                         f"{settings.static_num_images_per_prompt or 1} image(s) per prompt", param=n_name)


def _steps(f: Fields, quality: str | None, rules: RequestRules) -> int:
    settings, info = rules.settings, rules.info
    steps = f.get_int("num_inference_steps")
    if steps is None:
        return _quality_steps(quality or "auto", settings, info)
    if steps <= 0:
        raise BadRequest("num_inference_steps must be higher than 0", param="num_inference_steps")
    if steps > settings.max_num_inference_steps:
        raise BadRequest(f"num_inference_steps is greater than max_num_inference_steps: "
                         f"{settings.max_num_inference_steps}", param="num_inference_steps")
    if info.max_steps is not None and steps > info.max_steps:
        raise BadRequest(f"num_inference_steps is greater than {info.max_steps_source}: {info.max_steps}",
                         param="num_inference_steps")
    return steps


def _guidance(f: Fields, rules: RequestRules) -> float | None:
    """The ``guidance_scale`` to pass (None: the model's default), checked against a reshaped
    model, a family that fixes guidance at the first generate, and negative prompts."""
    guidance = f.get_float("guidance_scale")
    if rules.settings.reshaped:
        guidance = _reshaped_guidance(guidance, rules)
    effective = guidance if guidance is not None else rules.defaults.guidance_scale
    if rules.info.family in GUIDANCE_FIXED_AT_FIRST_GENERATE and not rules.settings.reshaped:
        _check_guidance_switch(effective, rules)
    for name in NEGATIVE_FIELDS:
        if f.has(name) and effective <= 1.0:
            raise BadRequest(f"{name} has no effect with guidance_scale {effective:g}; negative prompts "
                             "need guidance_scale > 1", param=name)
    return guidance


def _reshaped_guidance(guidance: float | None, rules: RequestRules) -> float | None:
    compiled = rules.settings.static_guidance_scale
    reference = compiled if compiled is not None else rules.defaults.guidance_scale
    if guidance is not None and not math.isclose(guidance, reference, rel_tol=1e-6, abs_tol=1e-6):
        raise BadRequest(f"guidance_scale doesn't match underlying model shape: the model is reshaped for "
                         f"guidance_scale {reference:g}", param="guidance_scale")
    return compiled if guidance is None and compiled is not None else guidance


def _check_guidance_switch(effective: float, rules: RequestRules) -> None:
    default = rules.defaults.guidance_scale
    if (effective > 1.0) != (default > 1.0):
        state = "on (guidance_scale > 1)" if default > 1.0 else "off (guidance_scale <= 1)"
        raise BadRequest(f"guidance_scale {effective:g} would turn classifier-free guidance "
                         f"{'on' if effective > 1.0 else 'off'}, but this {rules.info.family.value} model runs "
                         f"with it {state}, as its default {default:g} does: OpenVINO GenAI fixes that at a "
                         "pipeline's first generate", param="guidance_scale")


def _seed(f: Fields, settings: NodeSettings) -> int:
    seed = f.get_int("rng_seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise BadRequest(f"rng_seed must be between 0 and {MAX_SEED}, got {seed}", param="rng_seed")
    if seed is None:
        seed = settings.default_rng_seed if settings.default_rng_seed is not None else secrets.randbelow(DRAWN_SEEDS)
    return seed


def _strength(f: Fields) -> float | None:
    strength = f.get_float("strength")
    if strength is not None:
        if strength > 1.0:
            raise BadRequest("strength is greater than maxStrength: 1", param="strength")
        if strength < 0.0:
            raise BadRequest("strength is less than minStrength: 0", param="strength")
    return strength


def _max_sequence_length(f: Fields, rules: RequestRules) -> int | None:
    max_len = f.get_int("max_sequence_length")
    if max_len is not None and not 1 <= max_len <= MAX_SEQUENCE_LENGTH:
        raise BadRequest(f"max_sequence_length must be between 1 and {MAX_SEQUENCE_LENGTH}, got {max_len}",
                         param="max_sequence_length")
    if max_len is not None and max_len != rules.defaults.max_sequence_length:
        # OpenVINO GenAI 2026.4 fixes the T5 input length at a pipeline's first generate; another
        # length fails every later request of that pipeline set.
        raise BadRequest(f"max_sequence_length must be {rules.defaults.max_sequence_length} for this model "
                         f"(its T5 text encoder runs at that length), got {max_len}", param="max_sequence_length")
    return max_len


@dataclass(frozen=True)
class _EditLimits:
    """What an edit's input checks need from the earlier stages."""

    steps: int
    strength: float | None
    count: _ImageCount


@dataclass(frozen=True)
class _Inputs:
    """The task, the output size and the input tensors (edits only)."""

    task: Task
    size: Resolution
    image: np.ndarray | None = None
    mask: np.ndarray | None = None


def _inputs(f: Fields, rules: RequestRules, form: MultipartView | None, limits: _EditLimits) -> _Inputs:
    """Task, input images and output size: text-to-image without a form, else an edit of its image."""
    requested = requested_size(f)
    if form is None:
        _check_task(Task.TEXT2IMAGE, rules)
        return _Inputs(Task.TEXT2IMAGE, check_size(requested, default_size(rules), rules))
    images = [*form.files.get("image", ()), *form.files.get("image[]", ())]
    if not images:
        raise BadRequest("Missing required field: 'image'", param="image")
    if len(images) > 1:
        raise BadRequest(f"one image is edited at a time; got {len(images)} (image or image[]): send one",
                         param="image")
    masks = form.files.get("mask", ())
    if len(masks) > 1:
        raise BadRequest(f"exactly one mask is supported, got {len(masks)}", param="mask")
    task = Task.INPAINTING if masks else Task.IMAGE2IMAGE
    _check_edit(task, rules, limits)
    settings = rules.settings
    source = decode_image(images[0].data, "image", settings.max_resolution)
    target = check_size(requested, default_edit_size(source.resolution, rules), rules)
    image = image_tensor_array(resized(source.image, target))
    if not masks:
        return _Inputs(task, target, image)
    mask_image = decode_image(masks[0].data, "mask", settings.max_resolution, mode="L").image
    mask_image = resized(mask_image, source.resolution, mask=True)
    return _Inputs(task, target, image, mask_tensor_array(resized(mask_image, target, mask=True)))


def _check_edit(task: Task, rules: RequestRules, limits: _EditLimits) -> None:
    _check_task(task, rules)
    _check_strength(limits.steps, limits.strength, task, rules)
    _check_lcm_steps(limits.steps, limits.strength, task, rules)
    single = rules.info.single_image_reason(task)
    if single is not None and limits.count.value > 1:
        raise BadRequest(f"{single} supports one image per request, got {limits.count.name}={limits.count.value}",
                         param=limits.count.name)


def _check_strength(steps: int, strength: float | None, task: Task, rules: RequestRules) -> None:
    """The scheduler keeps int(steps * strength) steps (in float32, as GenAI computes it); zero fails
    inside generate, also with the task's default strength."""
    default = rules.defaults.inpainting_strength if task is Task.INPAINTING else rules.defaults.strength
    effective = strength if strength is not None else default
    if int(np.float32(steps) * np.float32(effective)) >= 1:
        return
    if strength is not None:
        raise BadRequest(f"strength {strength:g} with num_inference_steps {steps} leaves no denoising "
                         "step (num_inference_steps * strength must be at least 1)", param="strength")
    raise BadRequest(f"num_inference_steps {steps} with the default strength {effective:g} leaves "
                     "no denoising step (num_inference_steps * strength must be at least 1)",
                     param="num_inference_steps")


def _check_lcm_steps(steps: int, strength: float | None, task: Task, rules: RequestRules) -> None:
    """An LCM edit picks its timesteps among int(original_inference_steps * strength) (diffusers
    refuses more; OpenVINO GenAI silently repeats timesteps)."""
    info = rules.info
    if info.family is not Family.LCM or info.max_steps is None:
        return
    default = rules.defaults.inpainting_strength if task is Task.INPAINTING else rules.defaults.strength
    effective = strength if strength is not None else default
    usable = int(np.float32(info.max_steps) * np.float32(effective))
    if steps > usable:
        raise BadRequest(f"num_inference_steps {steps} is more than the LCM scheduler can take at strength "
                         f"{effective:g}: at most {usable} (original_inference_steps {info.max_steps} x strength)",
                         param="strength" if strength is not None else "num_inference_steps")


def _end_user(f: Fields) -> str | None:
    """The end user a request names: a non-empty ``safety_identifier``, else a non-empty ``user``
    (OpenAI's precedence)."""
    for name in ("safety_identifier", "user"):
        value = f.get_str(name)
        if value is not None and len(value) > MAX_END_USER_LENGTH:
            raise BadRequest(f"{name} is longer than {MAX_END_USER_LENGTH} characters", param=name)
    return f.get_str("safety_identifier") or f.get_str("user") or None


def _quality_steps(quality: str, settings: NodeSettings, info: ModelInfo) -> int:
    """The step count a ``quality`` preset stands for: low half the node's default (rounded up),
    auto, standard and medium the default, high and hd one and a half times it (rounded up), xhigh
    and max the most the node allows; high and above never exceed that most (max_num_inference_steps,
    and the scheduler's num_train_timesteps)."""
    default = settings.default_num_inference_steps
    most = settings.max_num_inference_steps
    if info.max_steps is not None:
        most = min(most, info.max_steps)
    most = max(most, default)
    preset = QUALITY_ECHO[quality]
    if preset == "low":
        return math.ceil(default / 2)
    if preset == "high":
        return min(math.ceil(default * 1.5), most)
    if preset in ("xhigh", "max"):
        return most
    return default


_TASK_MESSAGES = {
    Task.TEXT2IMAGE: "text-to-image (images/generations)",
    Task.IMAGE2IMAGE: "image-to-image (images/edits without a mask)",
    Task.INPAINTING: "inpainting (images/edits with a mask)",
}


def _check_task(task: Task, rules: RequestRules) -> None:
    if task in rules.tasks:
        return
    param = {Task.INPAINTING: "mask", Task.IMAGE2IMAGE: "image"}.get(task)
    limit = edit_limit(rules.settings) if param is not None else None
    if limit is not None:
        raise BadRequest(f"{_TASK_MESSAGES[task]} is not available on this node: {limit}", param=param)
    raise BadRequest(f"{_TASK_MESSAGES[task]} is not supported by this model", param=param)


__all__ = ["EDITS", "FIELDS", "FILE_FIELDS", "GENERATIONS", "TEXT_FIELDS", "UNSUPPORTED", "ImageRequest",
           "RequestRules", "parse_request"]
