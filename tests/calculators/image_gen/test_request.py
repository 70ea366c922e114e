"""Request parsing and validation (SPEC §5, §9): every rule with the exact message the client reads."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from calculators.image_gen.options import NodeSettings, Resolution
from calculators.image_gen.pipelines import Family, ModelDefaults, ModelInfo, Task
from calculators.image_gen.request import EDITS, GENERATIONS, ImageRequest, RequestRules, parse_request
from ovms_graph.errors import BadRequest
from ovms_graph.packets import HttpPayload, MultipartView, UploadedFile
from tests.calculators.image_gen.helpers import png_bytes

SETTINGS = NodeSettings(models_path=Path("."), max_resolution=Resolution(512, 512), max_num_images_per_prompt=4,
                        default_num_inference_steps=20, max_num_inference_steps=50)
SD = ModelInfo("StableDiffusionPipeline", Family.SD, False, 4, 8)
SD_INPAINT = ModelInfo("StableDiffusionInpaintPipeline", Family.SD, True, 9, 8)
SD16 = ModelInfo("StableDiffusionPipeline", Family.SD, False, 4, 16)  # the project's 2-block exporter
SDXL = ModelInfo("StableDiffusionXLPipeline", Family.SDXL, False, 4, 8)
SD3 = ModelInfo("StableDiffusion3Pipeline", Family.SD3, False, 16, 16)
FLUX = ModelInfo("FluxPipeline", Family.FLUX, False, 64, 16)
LCM = ModelInfo("LatentConsistencyModelPipeline", Family.LCM, False, 4, 8, max_steps=50,
                max_steps_source="the LCM scheduler's original_inference_steps")
DEFAULTS = ModelDefaults(Resolution(64, 64), 7.5)
ALL_TASKS = frozenset(Task)
RULES = RequestRules(SETTINGS, SD, DEFAULTS, ALL_TASKS)
STATIC = replace(RULES, settings=replace(SETTINGS, static_resolutions=(Resolution(64, 64),),
                                         static_num_images_per_prompt=2, static_guidance_scale=5.0,
                                         max_num_images_per_prompt=2))
MULTI_STATIC = replace(RULES, settings=replace(SETTINGS, static_resolutions=(Resolution(64, 64), Resolution(128, 64))))


def generation(body: Any, rules: RequestRules = RULES) -> ImageRequest:
    payload = HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"",
                          route=GENERATIONS, model="sd", parsed_json=body)
    return parse_request(payload, rules)


def edit(fields: dict[str, str | list[str]], files: dict[str, list[bytes]] | None = None,
         rules: RequestRules = RULES) -> ImageRequest:
    form = MultipartView(
        fields={k: tuple(v) if isinstance(v, list) else (v,) for k, v in fields.items()},
        files={k: tuple(UploadedFile(k, f"{k}.png", "image/png", data) for data in v)
               for k, v in (files if files is not None else {"image": [png_bytes(64, 64)]}).items()})
    payload = HttpPayload(uri="/v3/images/edits", method="POST", headers={}, body=b"", route=EDITS, model="sd",
                          multipart=form)
    return parse_request(payload, rules)


def error(call: Any) -> tuple[str, str | None]:
    with pytest.raises(BadRequest) as info:
        call()
    return info.value.message, info.value.param


P = {"prompt": "a cat"}

GENERATION_ERRORS: list[tuple[str, Any, RequestRules, str, str | None]] = [
    ("body not an object", ["a cat"], RULES, "JSON body must be an object", None),
    ("unknown field", {**P, "colour": "red"}, RULES, "Unhandled parameter: colour", "colour"),
    ("style", {**P, "style": "vivid"}, RULES, "style is not supported by this server: describe the style in the "
     "prompt", "style"),
    ("complexity", {**P, "complexity": "low"}, RULES, "complexity is not supported by this server: these models "
     "have no planning stage; use quality or num_inference_steps", "complexity"),
    ("frame_count", {**P, "frame_count": 4}, RULES, "frame_count is not supported by this server: this server "
     "draws still images (png, jpeg, webp)", "frame_count"),
    ("frame_duration_ms", {**P, "frame_duration_ms": 100}, RULES, "frame_duration_ms is not supported by this "
     "server: this server draws still images (png, jpeg, webp)", "frame_duration_ms"),
    ("svg", {**P, "svg": {"model": "x", "reasoning": {"effort": "low"}}}, RULES, "svg is not supported by this "
     "server: this server draws raster images (png, jpeg, webp)", "svg"),
    ("input_fidelity on generations", {**P, "input_fidelity": "high"}, RULES, "input_fidelity is not supported by "
     "this server: image-to-image follows the input as far as strength says; use strength", "input_fidelity"),
    ("quality unknown", {**P, "quality": "ultra"}, RULES,
     'quality must be one of auto, standard, medium, low, high, hd, xhigh, max, got "ultra"', "quality"),
    ("quality not a string", {**P, "quality": 3}, RULES, "quality must be a string, got 3", "quality"),
    ("background transparent", {**P, "background": "transparent"}, RULES,
     "background transparent is not supported: this server draws opaque images (use auto or opaque)", "background"),
    ("background unknown", {**P, "background": "white"}, RULES,
     'background must be one of auto, opaque, got "white"', "background"),
    ("moderation unknown", {**P, "moderation": "high"}, RULES, 'moderation must be one of auto, low, got "high"',
     "moderation"),
    ("user not a string", {**P, "user": 7}, RULES, "user must be a string, got 7", "user"),
    ("safety_identifier too long", {**P, "safety_identifier": "x" * 257}, RULES,
     "safety_identifier is longer than 256 characters", "safety_identifier"),
    ("user too long", {**P, "user": "x" * 257}, RULES, "user is longer than 256 characters", "user"),
    ("prompt missing", {"n": 1}, RULES, "prompt field is missing in JSON body", "prompt"),
    ("prompt not a string", {"prompt": 5}, RULES, "prompt must be a string, got 5", "prompt"),
    ("prompt null", {"prompt": None}, RULES, "prompt must be a string, got null", "prompt"),
    ("n float", {**P, "n": 2.0}, RULES, "n must be an integer, got 2.0", "n"),
    ("n string", {**P, "n": "2"}, RULES, 'n must be an integer, got "2"', "n"),
    ("n boolean", {**P, "n": True}, RULES, "n must be an integer, got true", "n"),
    ("n zero", {**P, "n": 0}, RULES, "n must be higher than 0", "n"),
    ("n above max", {**P, "n": 5}, RULES, "n is greater than max_num_images_per_prompt: 4", "n"),
    ("num_images_per_prompt above max", {**P, "num_images_per_prompt": 9}, RULES,
     "num_images_per_prompt is greater than max_num_images_per_prompt: 4", "num_images_per_prompt"),
    ("n with num_images_per_prompt", {**P, "n": 1, "num_images_per_prompt": 1}, RULES,
     "n and num_images_per_prompt are mutually exclusive; set only one", "n"),
    ("steps zero", {**P, "num_inference_steps": 0}, RULES, "num_inference_steps must be higher than 0",
     "num_inference_steps"),
    ("steps negative", {**P, "num_inference_steps": -3}, RULES, "num_inference_steps must be higher than 0",
     "num_inference_steps"),
    ("steps above max", {**P, "num_inference_steps": 51}, RULES,
     "num_inference_steps is greater than max_num_inference_steps: 50", "num_inference_steps"),
    ("steps beyond the scheduler's training steps", {**P, "num_inference_steps": 1001},
     replace(RULES, info=replace(SD, max_steps=1000), settings=replace(SETTINGS, max_num_inference_steps=5000)),
     "num_inference_steps is greater than the scheduler's num_train_timesteps: 1000", "num_inference_steps"),
    ("steps float", {**P, "num_inference_steps": 2.5}, RULES, "num_inference_steps must be an integer, got 2.5",
     "num_inference_steps"),
    ("guidance string", {**P, "guidance_scale": "7"}, RULES, 'guidance_scale must be a number, got "7"',
     "guidance_scale"),
    ("guidance boolean", {**P, "guidance_scale": False}, RULES, "guidance_scale must be a number, got false",
     "guidance_scale"),
    ("guidance NaN", {**P, "guidance_scale": float("nan")}, RULES, "guidance_scale must be a finite number, got NaN",
     "guidance_scale"),
    ("guidance infinite", {**P, "guidance_scale": float("inf")}, RULES,
     "guidance_scale must be a finite number, got Infinity", "guidance_scale"),
    ("seed negative", {**P, "rng_seed": -1}, RULES, "rng_seed must be between 0 and 9223372036854775807, got -1",
     "rng_seed"),
    ("seed too big", {**P, "rng_seed": 2**63}, RULES,
     "rng_seed must be between 0 and 9223372036854775807, got 9223372036854775808", "rng_seed"),
    ("seed float", {**P, "rng_seed": 1.0}, RULES, "rng_seed must be an integer, got 1.0", "rng_seed"),
    ("size malformed", {**P, "size": "64"}, RULES, "size field is not in correct format - WxH", "size"),
    ("size not a string", {**P, "size": 64}, RULES, "size must be a string, got 64", "size"),
    ("size zero", {**P, "size": "0x64"}, RULES, "size field values must be greater than 0", "size"),
    ("size overflowing 64 bits", {**P, "size": "99999999999999999999x64"}, RULES,
     "size field values are too large: each must be at most 2147483647", "size"),
    ("size overflowing 32 bits", {**P, "size": "64x2147483648"}, RULES,
     "size field values are too large: each must be at most 2147483647", "size"),
    ("size with more digits than Python converts", {**P, "size": "64x" + "9" * 5000}, RULES,
     "size field values are too large: each must be at most 2147483647", "size"),
    ("size with width", {**P, "size": "64x64", "width": 64}, RULES,
     "size and width/height are mutually exclusive; set only one", "size"),
    ("auto size with height", {**P, "size": "auto", "height": 64}, RULES,
     "size and width/height are mutually exclusive; set only one", "size"),
    ("width zero", {**P, "width": 0, "height": 64}, RULES, "width must be higher than 0", "width"),
    ("height negative", {**P, "height": -8}, RULES, "height must be higher than 0", "height"),
    # SPEC §9: a size the model cannot generate names the field and the nearest sizes that work.
    ("width not a multiple of 8", {**P, "width": 100, "height": 64}, RULES,
     "width must be divisible by 8, got 100; nearest sizes that work: 96x64, 104x64", "width"),
    ("size not a multiple of 8", {**P, "size": "64x100"}, RULES,
     "height must be divisible by 8, got 100; nearest sizes that work: 64x96, 64x104", "size"),
    ("both sides off the step", {**P, "size": "60x100"}, RULES,
     "width must be divisible by 8, got 60; nearest sizes that work: 56x96, 56x104, 64x96, 64x104", "size"),
    ("nearest sizes stay within max_resolution", {**P, "size": "516x64"}, RULES,
     "width must be divisible by 8, got 516; nearest sizes that work: 512x64", "size"),
    ("a side beyond max_resolution and off the step", {**P, "size": "1001x64"}, RULES,
     "width must be divisible by 8, got 1001; nearest sizes that work: 512x64", "size"),
    ("a side below the step", {**P, "width": 4, "height": 64}, RULES,
     "width must be divisible by 8, got 4; nearest sizes that work: 8x64", "width"),
    ("static: nearest among the static sizes", {**P, "size": "64x60"}, MULTI_STATIC,
     "height must be divisible by 8, got 60; nearest sizes that work: 64x64", "size"),
    ("static: the static sizes when none is near", {**P, "size": "300x60"}, MULTI_STATIC,
     "width must be divisible by 8, got 300; nearest sizes that work: 64x64, 128x64", "size"),
    ("a UNet that needs latent multiples of 2", {**P, "width": 64, "height": 56}, replace(RULES, info=SD16),
     "height must be divisible by 16, got 56; nearest sizes that work: 64x48, 64x64", "height"),
    ("size beyond max", {**P, "size": "1024x512"}, RULES,
     "requested resolution 1024x512 exceeds max_resolution 512x512", "size"),
    ("height beyond max", {**P, "height": 520}, RULES, "requested resolution 64x520 exceeds max_resolution 512x512",
     "height"),
    ("FLUX needs multiples of 16", {**P, "size": "72x64"}, replace(RULES, info=FLUX),
     "width must be divisible by 16, got 72; nearest sizes that work: 64x64, 80x64", "size"),
    ("strength on generations", {**P, "strength": 0.5}, RULES, "strength is only supported by images/edits",
     "strength"),
    ("prompt_2 on SD", {**P, "prompt_2": "x"}, RULES,
     "prompt_2 is not supported by SD (StableDiffusionPipeline) models; they take prompt, negative_prompt",
     "prompt_2"),
    ("prompt_3 on SDXL", {**P, "prompt_3": "x"}, replace(RULES, info=SDXL),
     "prompt_3 is not supported by SDXL (StableDiffusionXLPipeline) models; they take prompt, negative_prompt, "
     "negative_prompt_2, prompt_2", "prompt_3"),
    ("negative_prompt on FLUX", {**P, "negative_prompt": "x"}, replace(RULES, info=FLUX),
     "negative_prompt is not supported by FLUX (FluxPipeline) models; they take prompt, prompt_2",
     "negative_prompt"),
    ("negative_prompt on LCM", {**P, "negative_prompt": "x"}, replace(RULES, info=LCM),
     "negative_prompt is not supported by LCM (LatentConsistencyModelPipeline) models; they take prompt",
     "negative_prompt"),
    ("SD3 size beyond its positional embedding", {**P, "size": "512x256"},
     replace(RULES, info=replace(SD3, max_side=256)),
     "requested resolution 512x256 is larger than this SD3 model can generate: at most 256 pixels per side (its "
     "transformer's pos_embed_max_size)", "size"),
    ("LCM steps above original_inference_steps", {**P, "num_inference_steps": 51},
     replace(RULES, info=LCM, settings=replace(SETTINGS, max_num_inference_steps=100)),
     "num_inference_steps is greater than the LCM scheduler's original_inference_steps: 50", "num_inference_steps"),
    ("SD3 guidance turned off", {**P, "guidance_scale": 0.5}, replace(RULES, info=SD3),
     "guidance_scale 0.5 would turn classifier-free guidance off, but this SD3 model runs with it on "
     "(guidance_scale > 1), as its default 7.5 does: OpenVINO GenAI fixes that at a pipeline's first generate",
     "guidance_scale"),
    ("SD3 guidance turned on", {**P, "guidance_scale": 3},
     replace(RULES, info=SD3, defaults=replace(DEFAULTS, guidance_scale=1.0)),
     "guidance_scale 3 would turn classifier-free guidance on, but this SD3 model runs with it off "
     "(guidance_scale <= 1), as its default 1 does: OpenVINO GenAI fixes that at a pipeline's first generate",
     "guidance_scale"),
    ("max_sequence_length on SD", {**P, "max_sequence_length": 77}, RULES,
     "max_sequence_length is not supported by SD (StableDiffusionPipeline) models (only models with a T5 text "
     "encoder, SD3 and FLUX, use it)", "max_sequence_length"),
    ("max_sequence_length too long", {**P, "max_sequence_length": 513}, replace(RULES, info=FLUX),
     "max_sequence_length must be between 1 and 512, got 513", "max_sequence_length"),
    ("max_sequence_length other than the model's", {**P, "max_sequence_length": 256}, replace(RULES, info=FLUX),
     "max_sequence_length must be 512 for this model (its T5 text encoder runs at that length), got 256",
     "max_sequence_length"),
    ("negative prompt without guidance", {**P, "negative_prompt": "x", "guidance_scale": 1.0}, RULES,
     "negative_prompt has no effect with guidance_scale 1; negative prompts need guidance_scale > 1",
     "negative_prompt"),
    ("negative_prompt_2 with default guidance of 1", {**P, "negative_prompt_2": "x"},
     replace(RULES, info=SD3, defaults=ModelDefaults(Resolution(64, 64), 1.0)),
     "negative_prompt_2 has no effect with guidance_scale 1; negative prompts need guidance_scale > 1",
     "negative_prompt_2"),
    ("text field not a string", {**P, "negative_prompt": ["x"]}, RULES, 'negative_prompt must be a string, got ["x"]',
     "negative_prompt"),
    ("response_format url", {**P, "response_format": "url"}, RULES,
     "Unsupported response_format: url. Only b64_json is supported.", "response_format"),
    ("output_format gif", {**P, "output_format": "gif"}, RULES,
     'output_format must be one of png, jpeg, webp, got "gif"', "output_format"),
    ("output_compression above 100", {**P, "output_format": "jpeg", "output_compression": 101}, RULES,
     "output_compression must be between 0 and 100, got 101", "output_compression"),
    ("output_compression with png", {**P, "output_compression": 50}, RULES,
     "output_compression applies only to output_format jpeg or webp", "output_compression"),
    ("stream not a boolean", {**P, "stream": "true"}, RULES, 'stream must be a boolean, got "true"', "stream"),
    ("partial_images without stream", {**P, "partial_images": 2}, RULES, "partial_images requires stream: true",
     "partial_images"),
    ("partial_images above 3", {**P, "stream": True, "partial_images": 4}, RULES,
     "partial_images must be between 0 and 3, got 4", "partial_images"),
    ("streaming several images", {**P, "stream": True, "n": 2}, RULES,
     "stream: true supports one image per request, got n=2", "n"),
    ("model not a string", {**P, "model": 3}, RULES, "model must be a string, got 3", "model"),
    ("static: other size", {**P, "size": "128x128"}, STATIC,
     "requested resolution 128x128 is not supported by static reshape settings (64x64)", "size"),
    ("static: other n", {**P, "n": 1}, STATIC,
     "n doesn't match underlying model shape: the model is reshaped for 2 image(s) per prompt", "n"),
    ("static: n above the compiled batch", {**P, "n": 3}, STATIC, "n is greater than max_num_images_per_prompt: 2",
     "n"),
    ("static: other guidance", {**P, "guidance_scale": 7.5}, STATIC,
     "guidance_scale doesn't match underlying model shape: the model is reshaped for guidance_scale 5",
     "guidance_scale"),
    ("several static: unlisted size", {**P, "size": "64x128"}, MULTI_STATIC,
     "requested resolution 64x128 is not supported by static reshape settings (64x64 128x64)", "size"),
    ("text-to-image unavailable", P, replace(RULES, tasks=frozenset({Task.INPAINTING})),
     "text-to-image (images/generations) is not supported by this model", None),
]


@pytest.mark.parametrize(("body", "rules", "message", "param"), [c[1:] for c in GENERATION_ERRORS],
                         ids=[c[0] for c in GENERATION_ERRORS])
def test_generation_errors(body: Any, rules: RequestRules, message: str, param: str | None) -> None:
    assert error(lambda: generation(body, rules)) == (message, param)


GENERATION_OK: list[tuple[str, Any, RequestRules, dict[str, Any]]] = [
    ("defaults", P, RULES, {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("size", {**P, "size": "128x64"}, RULES,
     {"width": 128, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("auto size", {**P, "size": "auto"}, RULES,
     {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("width only keeps the default height", {**P, "width": 128}, RULES,
     {"width": 128, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("default_resolution", P, replace(RULES, settings=replace(SETTINGS, default_resolution=Resolution(96, 32))),
     {"width": 96, "height": 32, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("everything", {**P, "model": "sd", "n": 2, "num_inference_steps": 3, "guidance_scale": 3, "rng_seed": 7,
                    "negative_prompt": "dog", "response_format": "b64_json", "width": 32, "height": 48,
                    "output_format": "webp", "output_compression": 80},
     RULES, {"width": 32, "height": 48, "num_images_per_prompt": 2, "num_inference_steps": 3,
             "guidance_scale": 3.0, "rng_seed": 7, "negative_prompt": "dog"}),
    ("num_images_per_prompt", {**P, "num_images_per_prompt": 4}, RULES,
     {"width": 64, "height": 64, "num_images_per_prompt": 4, "num_inference_steps": 20}),
    ("nulls mean not given", {**P, "n": None, "size": None, "negative_prompt": None}, RULES,
     {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("SD3 fields", {**P, "prompt_2": "b", "prompt_3": "c", "negative_prompt_3": "d", "max_sequence_length": 512},
     replace(RULES, info=SD3), {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20,
                                "prompt_2": "b", "prompt_3": "c", "negative_prompt_3": "d",
                                "max_sequence_length": 512}),
    ("static uses the compiled batch and guidance", P, STATIC,
     {"width": 64, "height": 64, "num_images_per_prompt": 2, "num_inference_steps": 20, "guidance_scale": 5.0}),
    ("several static: first is the default", P, MULTI_STATIC,
     {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("several static: a listed size", {**P, "size": "128x64"}, MULTI_STATIC,
     {"width": 128, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20}),
    ("largest seed", {**P, "rng_seed": 2**63 - 1}, RULES,
     {"width": 64, "height": 64, "num_images_per_prompt": 1, "num_inference_steps": 20, "rng_seed": 2**63 - 1}),
]


@pytest.mark.parametrize(("body", "rules", "kwargs"), [c[1:] for c in GENERATION_OK], ids=[c[0] for c in GENERATION_OK])
def test_generation_kwargs(body: Any, rules: RequestRules, kwargs: dict[str, Any]) -> None:
    request = generation(body, rules)
    assert request.task is Task.TEXT2IMAGE
    got = request.generate_kwargs()
    seed = got.pop("rng_seed")
    expected = dict(kwargs)
    assert seed == expected.pop("rng_seed", seed)
    assert got == expected


# quality presets on a node with default_num_inference_steps 20 and max_num_inference_steps 50.
QUALITY: list[tuple[str, dict[str, Any], RequestRules, int, str]] = [
    ("no quality", {}, RULES, 20, "medium"),
    ("auto", {"quality": "auto"}, RULES, 20, "medium"),
    ("standard", {"quality": "standard"}, RULES, 20, "medium"),
    ("medium", {"quality": "medium"}, RULES, 20, "medium"),
    ("low: half, rounded up", {"quality": "low"}, RULES, 10, "low"),
    ("high: one and a half", {"quality": "high"}, RULES, 30, "high"),
    ("hd", {"quality": "hd"}, RULES, 30, "high"),
    ("xhigh: the node's most", {"quality": "xhigh"}, RULES, 50, "xhigh"),
    ("max", {"quality": "max"}, RULES, 50, "max"),
    ("high capped at max", {"quality": "high"},
     replace(RULES, settings=replace(SETTINGS, default_num_inference_steps=40)), 50, "high"),
    ("low of an odd default", {"quality": "low"},
     replace(RULES, settings=replace(SETTINGS, default_num_inference_steps=7)), 4, "low"),
    ("max capped by the scheduler", {"quality": "max"},
     replace(RULES, info=replace(SD, max_steps=30)), 30, "max"),
    ("explicit steps win", {"quality": "low", "num_inference_steps": 33}, RULES, 33, "low"),
]


@pytest.mark.parametrize(("fields", "rules", "steps", "echo"), [c[1:] for c in QUALITY], ids=[c[0] for c in QUALITY])
def test_quality_presets(fields: dict[str, Any], rules: RequestRules, steps: int, echo: str) -> None:
    request = generation({**P, **fields}, rules)
    assert (request.num_inference_steps, request.quality) == (steps, echo)
    form = edit({**P, **{k: str(v) for k, v in fields.items()}}, rules=rules)
    assert (form.num_inference_steps, form.quality) == (steps, echo)


ACCEPTED: list[tuple[str, dict[str, Any], str | None]] = [
    ("background auto", {"background": "auto"}, None),
    ("background opaque", {"background": "opaque"}, None),
    ("moderation auto", {"moderation": "auto"}, None),
    ("moderation low", {"moderation": "low"}, None),
    ("user", {"user": "alice"}, "alice"),
    ("safety_identifier", {"safety_identifier": "hash-1"}, "hash-1"),
    ("safety_identifier wins over user", {"user": "alice", "safety_identifier": "hash-1"}, "hash-1"),
    ("empty safety_identifier falls back to user", {"user": "alice", "safety_identifier": ""}, "alice"),
    ("empty user names nobody", {"user": ""}, None),
]


@pytest.mark.parametrize(("fields", "end_user"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_openai_fields(fields: dict[str, Any], end_user: str | None) -> None:
    assert generation({**P, **fields}).end_user == end_user
    assert edit({**P, **fields}).end_user == end_user


def test_without_rng_seed_each_request_draws_a_32_bit_seed() -> None:
    seeds = {generation(P).rng_seed for _ in range(8)}
    assert len(seeds) > 1  # eight equal draws out of 2**32 would mean no draw at all
    assert all(0 <= seed < 2**32 for seed in seeds)
    assert edit(P).rng_seed in range(2**32)


def test_the_node_can_pin_the_default_seed() -> None:
    pinned = replace(RULES, settings=replace(SETTINGS, default_rng_seed=1234))
    assert [generation(P, pinned).rng_seed for _ in range(3)] == [1234] * 3
    assert generation({**P, "rng_seed": 5}, pinned).rng_seed == 5


def test_response_and_stream_fields() -> None:
    request = generation({**P, "stream": True, "partial_images": 3, "output_format": "jpeg", "output_compression": 0,
                          "lora_alphas": {"a": 0.5}})
    assert (request.stream, request.partial_images, request.output_format, request.output_compression,
            request.lora_alphas) == (True, 3, "jpeg", 0, {"a": 0.5})


# ----- edits (multipart: every value is text) -----
EDIT_ERRORS: list[tuple[str, dict[str, Any], dict[str, list[bytes]] | None, RequestRules, str, str | None]] = [
    ("prompt missing", {}, None, RULES, "Missing required field: 'prompt'", "prompt"),
    ("image missing", P, {}, RULES, "Missing required field: 'image'", "image"),
    ("two images", P, {"image": [png_bytes(64, 64)], "image[]": [png_bytes(64, 64)]}, RULES,
     "one image is edited at a time; got 2 (image or image[]): send one", "image"),
    ("two image[]", P, {"image[]": [png_bytes(64, 64), png_bytes(64, 64)]}, RULES,
     "one image is edited at a time; got 2 (image or image[]): send one", "image"),
    ("two masks", P, {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)] * 2}, RULES,
     "exactly one mask is supported, got 2", "mask"),
    ("image as text", {**P, "image": "abc"}, {}, RULES, "image must be a file upload, not a text field", "image"),
    ("prompt as a file", {}, {"image": [png_bytes(64, 64)], "prompt": [b"x"]}, RULES,
     "prompt must be a text field, not a file upload", "prompt"),
    ("unknown field", {**P, "colour": "red"}, None, RULES, "Unhandled parameter: colour", "colour"),
    ("size overflowing", {**P, "size": "99999999999999999999x64"}, None, RULES,
     "size field values are too large: each must be at most 2147483647", "size"),
    ("width with more digits than Python converts", {**P, "width": "9" * 5000}, None, RULES,
     "width is out of range (5000 characters)", "width"),
    ("background transparent", {**P, "background": "transparent"}, None, RULES,
     "background transparent is not supported: this server draws opaque images (use auto or opaque)", "background"),
    ("input_fidelity", {**P, "input_fidelity": "high"}, None, RULES, "input_fidelity is not supported by this "
     "server: image-to-image follows the input as far as strength says; use strength", "input_fidelity"),
    ("markup file", P, {"image": [png_bytes(64, 64)], "markup": [png_bytes(64, 64)]}, RULES,
     "markup is not supported by this server: edits take an image and an optional mask", "markup"),
    ("quality unknown", {**P, "quality": "ultra"}, None, RULES,
     'quality must be one of auto, standard, medium, low, high, hd, xhigh, max, got "ultra"', "quality"),
    ("unknown file", P, {"image": [png_bytes(64, 64)], "reference": [b"x"]}, RULES, "Unhandled parameter: reference",
     "reference"),
    ("field twice", {**P, "n": ["1", "2"]}, None, RULES, "n is given 2 times; give it once", "n"),
    ("n as float text", {**P, "n": "2.0"}, None, RULES, 'n must be an integer, got "2.0"', "n"),
    ("n as word", {**P, "n": "two"}, None, RULES, 'n must be an integer, got "two"', "n"),
    ("strength as word", {**P, "strength": "half"}, None, RULES, 'strength must be a number, got "half"', "strength"),
    ("strength nan text", {**P, "strength": "nan"}, None, RULES, 'strength must be a number, got "nan"', "strength"),
    ("strength inf text", {**P, "strength": "inf"}, None, RULES, 'strength must be a number, got "inf"', "strength"),
    ("strength above 1", {**P, "strength": "1.5"}, None, RULES, "strength is greater than maxStrength: 1", "strength"),
    ("strength below 0", {**P, "strength": "-0.1"}, None, RULES, "strength is less than minStrength: 0", "strength"),
    ("strength leaves no step", {**P, "strength": "0.04"}, None, RULES,
     "strength 0.04 with num_inference_steps 20 leaves no denoising step (num_inference_steps * strength must be "
     "at least 1)", "strength"),
    ("strength zero", {**P, "strength": "0", "num_inference_steps": "4"}, None, RULES,
     "strength 0 with num_inference_steps 4 leaves no denoising step (num_inference_steps * strength must be "
     "at least 1)", "strength"),
    ("stream as word", {**P, "stream": "yes"}, None, RULES, 'stream must be a boolean, got "yes"', "stream"),
    ("lora_alphas not JSON", {**P, "lora_alphas": "{a: 1}"}, None, RULES,
     'lora_alphas must be a JSON object, got "{a: 1}"', "lora_alphas"),
    ("lora_alphas with NaN", {**P, "lora_alphas": '{"a": NaN}'}, None, RULES,
     'lora_alphas must be a JSON object, got "{\\"a\\": NaN}"', "lora_alphas"),
    ("lora_alphas with a duplicate key", {**P, "lora_alphas": '{"a": 1, "a": 2}'}, None, RULES,
     'lora_alphas must be a JSON object, got "{\\"a\\": 1, \\"a\\": 2}"', "lora_alphas"),
    ("not an image", P, {"image": [b"%PDF-1.4 hello"]}, RULES,
     "Image parsing failed: image is not an image Pillow can read (PNG, JPEG, WEBP, ...)", "image"),
    ("corrupt image", P, {"image": [b"\x89PNG\r\n\x1a\n garbage"]}, RULES,
     "Image parsing failed: image is truncated or corrupt (Truncated File Read)", "image"),
    ("truncated image", P, {"image": [png_bytes(64, 64)[:60]]}, RULES,
     "Image parsing failed: image is truncated or corrupt (image file is truncated)", "image"),
    ("empty image", P, {"image": [b""]}, RULES, "image is empty", "image"),
    ("corrupt mask", P, {"image": [png_bytes(64, 64)], "mask": [b"GIF89a"]}, RULES,
     "Image parsing failed: mask is not an image Pillow can read (PNG, JPEG, WEBP, ...)", "mask"),
    ("image beyond max_resolution", P, {"image": [png_bytes(520, 64)]}, RULES,
     "image is 520x64, which exceeds max_resolution 512x512", "image"),
    ("mask beyond max_resolution", P, {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 600)]}, RULES,
     "mask is 64x600, which exceeds max_resolution 512x512", "mask"),
    ("image smaller than 8 pixels", P, {"image": [png_bytes(5, 64)]}, RULES,
     "image is 5x64; it must be at least 8x8 pixels", "image"),
    ("requested size beyond max_resolution", {**P, "size": "1024x64"}, None, RULES,
     "requested resolution 1024x64 exceeds max_resolution 512x512", "size"),
    ("inpainting with n > 1 on a 4-channel SD", {**P, "n": "2"},
     {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)]}, RULES,
     "inpainting with this SD model (4-channel UNet) supports one image per request, got n=2", "n"),
    ("inpainting with n > 1 on a 4-channel SDXL", {**P, "n": "2"},
     {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)]}, replace(RULES, info=SDXL),
     "inpainting with this SDXL model (4-channel UNet) supports one image per request, got n=2", "n"),
    ("FLUX image-to-image with n > 1", {**P, "num_images_per_prompt": "2"}, {"image": [png_bytes(64, 64)]},
     replace(RULES, info=FLUX),
     "image-to-image with FLUX models supports one image per request, got num_images_per_prompt=2",
     "num_images_per_prompt"),
    ("FLUX inpainting with n > 1", {**P, "n": "3"}, {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)]},
     replace(RULES, info=FLUX), "inpainting with FLUX models supports one image per request, got n=3", "n"),
    ("inpainting unavailable", P, {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)]},
     replace(RULES, tasks=frozenset({Task.TEXT2IMAGE, Task.IMAGE2IMAGE})),
     "inpainting (images/edits with a mask) is not supported by this model", "mask"),
    ("image-to-image unavailable", P, None, replace(RULES, tasks=frozenset({Task.INPAINTING})),
     "image-to-image (images/edits without a mask) is not supported by this model", "image"),
    ("SD3 image-to-image with n > 1", {**P, "n": "2"}, None, replace(RULES, info=SD3),
     "image-to-image with SD3 models supports one image per request, got n=2", "n"),
    ("LCM edit with more steps than strength leaves", {**P, "num_inference_steps": "41", "strength": "0.8"}, None,
     replace(RULES, info=LCM), "num_inference_steps 41 is more than the LCM scheduler can take at strength 0.8: "
     "at most 40 (original_inference_steps 50 x strength)", "strength"),
    ("LCM edit at the default strength", {**P, "num_inference_steps": "45"}, None,
     replace(RULES, info=LCM, settings=replace(SETTINGS, max_num_inference_steps=100)),
     "num_inference_steps 45 is more than the LCM scheduler can take at strength 0.8: at most 40 "
     "(original_inference_steps 50 x strength)", "num_inference_steps"),
]


@pytest.mark.parametrize(("fields", "files", "rules", "message", "param"), [c[1:] for c in EDIT_ERRORS],
                         ids=[c[0] for c in EDIT_ERRORS])
def test_edit_errors(fields: dict[str, Any], files: dict[str, list[bytes]] | None, rules: RequestRules,
                     message: str, param: str | None) -> None:
    assert error(lambda: edit(fields, files, rules)) == (message, param)


def big_png(width: int, height: int) -> bytes:
    """A bilevel PNG: tiny on the wire, huge once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def test_decompression_bomb_is_refused() -> None:
    data = big_png(20000, 20000)  # 400 Mpixels, over Pillow's bomb limit
    assert len(data) < 2_000_000
    big_rules = replace(RULES, settings=replace(SETTINGS, max_resolution=Resolution(40000, 40000)))
    assert error(lambda: edit(P, {"image": [data]}, big_rules)) == (
        "Image parsing failed: image is too large to decode safely (decompression bomb)", "image")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_limit_applies_below_max_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)
    assert error(lambda: edit(P)) == (
        "Image parsing failed: image is too large to decode safely (decompression bomb)", "image")


def test_huge_image_is_refused_from_its_header() -> None:
    big_rules = replace(RULES, settings=replace(SETTINGS, max_resolution=Resolution(4096, 4096)))
    assert error(lambda: edit(P, {"image": [big_png(6000, 4000)]}, big_rules)) == (
        "image is 6000x4000, which exceeds max_resolution 4096x4096", "image")


EDIT_SIZES = [
    ("the input size", P, (64, 48), (64, 48)),
    ("rounded down to a multiple of 8", P, (100, 61), (96, 56)),
    ("an explicit size", {**P, "size": "32x32"}, (100, 61), (32, 32)),
    ("explicit width and height", {**P, "width": "16", "height": "24"}, (64, 64), (16, 24)),
]


@pytest.mark.parametrize(("fields", "source", "expected"), [c[1:] for c in EDIT_SIZES], ids=[c[0] for c in EDIT_SIZES])
def test_edit_output_size(fields: dict[str, Any], source: tuple[int, int], expected: tuple[int, int]) -> None:
    request = edit(fields, {"image": [png_bytes(*source)]})
    assert request.task is Task.IMAGE2IMAGE
    assert (request.width, request.height) == expected
    assert request.image is not None and request.image.shape == (1, expected[1], expected[0], 3)


def test_static_edit_uses_the_compiled_size() -> None:
    request = edit({**P, "n": "2"}, {"image": [png_bytes(100, 100)]}, rules=STATIC)
    assert (request.width, request.height, request.num_images, request.guidance_scale) == (64, 64, 2, 5.0)


def test_edit_fields_are_parsed_from_text() -> None:
    request = edit({**P, "n": "2", "strength": "0.25", "guidance_scale": "3e0", "rng_seed": "42",
                    "num_inference_steps": " 4 ", "stream": "false", "lora_alphas": '{"a": -0.5}',
                    "output_format": "jpeg", "output_compression": "70", "negative_prompt": "blur"})
    assert request.generate_kwargs() == {
        "width": 64, "height": 64, "num_images_per_prompt": 2, "num_inference_steps": 4, "guidance_scale": 3.0,
        "rng_seed": 42, "strength": 0.25, "negative_prompt": "blur"}
    assert (request.stream, request.lora_alphas, request.output_compression) == (False, {"a": -0.5}, 70)


def test_mask_switches_to_inpainting_and_is_resized_to_the_image() -> None:
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # left half white
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    request = edit(P, {"image": [png_bytes(64, 48)], "mask": [buffer.getvalue()]}, replace(RULES, info=SD_INPAINT))
    assert request.task is Task.INPAINTING
    assert request.mask is not None and request.mask.shape == (1, 48, 64, 3)
    assert request.mask.dtype == np.uint8
    assert (request.mask[0, :, :32] == 255).all() and (request.mask[0, :, 32:] == 0).all()


def test_inpainting_variant_allows_several_images() -> None:
    request = edit({**P, "n": "2"}, {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64)]},
                   replace(RULES, info=SD_INPAINT))
    assert request.num_images == 2


def test_image_is_converted_to_rgb_pixels() -> None:
    rgba = io.BytesIO()
    Image.new("RGBA", (16, 8), (10, 20, 30, 0)).save(rgba, "PNG")
    request = edit(P, {"image": [rgba.getvalue()]})
    assert request.image is not None
    assert request.image.shape == (1, 8, 16, 3)
    assert request.image[0, 0, 0].tolist() == [10, 20, 30]


def test_edits_need_multipart_and_generations_json() -> None:
    payload = HttpPayload(uri="/v3/images/edits", method="POST", headers={}, body=b"{}", route=EDITS, model="sd",
                          parsed_json={"prompt": "x"})
    assert error(lambda: parse_request(payload, RULES)) == (
        "images/edits expects a multipart/form-data body with the image file", None)
    payload = HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"", route=GENERATIONS,
                          model="sd", multipart=MultipartView())
    assert error(lambda: parse_request(payload, RULES)) == (
        "images/generations expects a JSON body (Content-Type: application/json)", None)


def test_raw_json_body_is_parsed_when_the_front_end_did_not() -> None:
    payload = HttpPayload(uri="/v3/images/generations", method="POST", headers={},
                          body=json.dumps({"prompt": "x", "n": 2}).encode(), route=GENERATIONS, model="sd")
    assert parse_request(payload, RULES).num_images == 2
    bad = replace(payload, body=b"{")
    assert error(lambda: parse_request(bad, RULES)) == (
        "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2", None)
    for body, message in ((b'{"prompt": "x", "n": NaN}', "malformed JSON: NaN is not allowed (numbers must be finite)"),
                          (b'{"prompt": "x", "prompt": "y"}', 'malformed JSON: duplicate key "prompt"')):
        assert error(lambda body=body: parse_request(replace(payload, body=body), RULES)) == (message, None), \
            "the front end's strictness, not a lax json.loads"


@pytest.mark.parametrize(("fields", "message", "param"), [
    ({"num_inference_steps": "1"},
     "num_inference_steps 1 with the default strength 0.8 leaves no denoising step "
     "(num_inference_steps * strength must be at least 1)", "num_inference_steps"),
    ({"num_inference_steps": "4", "strength": "0.2"},
     "strength 0.2 with num_inference_steps 4 leaves no denoising step "
     "(num_inference_steps * strength must be at least 1)", "strength"),
])
def test_edits_need_one_denoising_step_with_the_default_strength_too(
        fields: dict[str, str], message: str, param: str) -> None:
    assert error(lambda: edit({"prompt": "a cat", **fields})) == (message, param)
    assert edit({"prompt": "a cat", "num_inference_steps": "2"}).strength is None


def test_inpainting_defaults_to_its_own_pipelines_strength() -> None:
    """OpenVINO GenAI's inpainting pipelines default to strength 1.0, image-to-image to 0.8: one step
    inpaints, and is refused for image-to-image only."""
    mask = {"image": [png_bytes(64, 64)], "mask": [png_bytes(64, 64, mode="L")]}
    assert edit({"prompt": "a cat", "num_inference_steps": "1"}, mask).num_inference_steps == 1
    assert error(lambda: edit({"prompt": "a cat", "num_inference_steps": "1"}))[1] == "num_inference_steps"
