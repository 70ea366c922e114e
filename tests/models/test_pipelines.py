"""Each tiny model loads in the matching openvino_genai pipelines and generates deterministically.

The models are random, so the tests check shapes, step counts, determinism and that inputs matter,
not what the images look like.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openvino_genai as ov_genai
import pytest

from tests.models.conftest import (
    F32,
    StepRecorder,
    mean_abs_diff,
    model_dir,
    noise_image,
    pixels,
    square_mask,
)

PROMPT = "a red cat on a blue background"
# model -> default (and image-to-image) size; FLUX's default comes from GenAI (128 * VAE scale 8)
DEFAULT_SIZE = {"sd15": 64, "sdxl": 64, "flux": 1024}
EDIT_SIZE = 64


@pytest.fixture(scope="module", params=sorted(DEFAULT_SIZE))
def t2i(request: pytest.FixtureRequest) -> Iterator[tuple[str, ov_genai.Text2ImagePipeline]]:
    yield request.param, ov_genai.Text2ImagePipeline(model_dir(request.param), "CPU", **F32)


def test_text2image_default_size_and_steps(t2i: tuple[str, ov_genai.Text2ImagePipeline]) -> None:
    name, pipe = t2i
    steps = StepRecorder()
    image = pixels(pipe.generate(PROMPT, num_inference_steps=3, rng_seed=7, callback=steps))
    size = DEFAULT_SIZE[name]
    assert image.shape == (1, size, size, 3)
    assert image.dtype == np.uint8
    assert steps.calls == [(0, 3), (1, 3), (2, 3)]
    assert image.std() > 5, "a flat image: the model produced no signal"


def test_text2image_same_seed_same_pixels(t2i: tuple[str, ov_genai.Text2ImagePipeline]) -> None:
    _, pipe = t2i
    kwargs = {"num_inference_steps": 2, "width": 64, "height": 64}
    first = pixels(pipe.generate(PROMPT, rng_seed=11, **kwargs))
    second = pixels(pipe.generate(PROMPT, rng_seed=11, **kwargs))
    other_seed = pixels(pipe.generate(PROMPT, rng_seed=12, **kwargs))
    other_prompt = pixels(pipe.generate("a green dog", rng_seed=11, **kwargs))
    assert np.array_equal(first, second)
    assert mean_abs_diff(first, other_seed) > 5
    assert mean_abs_diff(first, other_prompt) > 0.1, "the prompt does not reach the denoiser"


def test_text2image_batch_and_size(t2i: tuple[str, ov_genai.Text2ImagePipeline]) -> None:
    _, pipe = t2i
    image = pixels(pipe.generate(PROMPT, num_inference_steps=1, width=32, height=48, num_images_per_prompt=2,
                                 rng_seed=3))
    assert image.shape == (2, 48, 32, 3)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux"])
def test_image2image(name: str) -> None:
    pipe = ov_genai.Image2ImagePipeline(model_dir(name), "CPU", **F32)
    image = noise_image(EDIT_SIZE)
    steps = StepRecorder()
    kwargs = {"strength": 0.5, "num_inference_steps": 4, "width": EDIT_SIZE, "height": EDIT_SIZE}
    first = pixels(pipe.generate(PROMPT, image, rng_seed=5, callback=steps, **kwargs))
    again = pixels(pipe.generate(PROMPT, image, rng_seed=5, **kwargs))
    assert first.shape == (1, EDIT_SIZE, EDIT_SIZE, 3)
    assert np.array_equal(first, again)
    assert steps.calls and all(n == steps.calls[0][1] for _, n in steps.calls)
    assert len(steps.calls) == steps.calls[0][1] == 2, "strength 0.5 of 4 steps runs 2"


@pytest.mark.parametrize("name", ["sd15", "sd15-inpaint", "sdxl"])
def test_inpainting(name: str) -> None:
    pipe = ov_genai.InpaintingPipeline(model_dir(name), "CPU", **F32)
    image, mask = noise_image(EDIT_SIZE), square_mask(EDIT_SIZE)
    steps = StepRecorder()
    first = pixels(pipe.generate(PROMPT, image, mask, num_inference_steps=3, strength=1.0, rng_seed=9,
                                 callback=steps))
    again = pixels(pipe.generate(PROMPT, image, mask, num_inference_steps=3, strength=1.0, rng_seed=9))
    assert first.shape == (1, EDIT_SIZE, EDIT_SIZE, 3)
    assert steps.calls == [(0, 3), (1, 3), (2, 3)]
    assert np.array_equal(first, again)


def test_sd15_derived_pipelines_share_the_inpainting_weights() -> None:
    """SPEC §7: inpainting loaded from disk, image-to-image derived from it, text-to-image from that."""
    inpaint = ov_genai.InpaintingPipeline(model_dir("sd15"), "CPU", **F32)
    i2i = ov_genai.Image2ImagePipeline(inpaint)
    t2i = ov_genai.Text2ImagePipeline(i2i)
    derived = pixels(t2i.generate(PROMPT, num_inference_steps=2, rng_seed=3))
    direct = ov_genai.Text2ImagePipeline(model_dir("sd15"), "CPU", **F32)
    assert np.array_equal(derived, pixels(direct.generate(PROMPT, num_inference_steps=2, rng_seed=3)))
    edited = pixels(i2i.generate(PROMPT, noise_image(EDIT_SIZE), strength=0.5, num_inference_steps=2,
                                 rng_seed=3))
    assert edited.shape == (1, EDIT_SIZE, EDIT_SIZE, 3)


def test_nine_channel_model_is_inpainting_only() -> None:
    with pytest.raises(RuntimeError, match="StableDiffusionInpaintPipeline"):
        ov_genai.Text2ImagePipeline(model_dir("sd15-inpaint"), "CPU", **F32)


# ----- SD3 and LCM: what OpenVINO GenAI 2026.4 does with them (the server's family rules rest on it) -----
@pytest.mark.parametrize(("name", "cls"), [
    ("sd3", ov_genai.Text2ImagePipeline), ("sd3", ov_genai.Image2ImagePipeline), ("sd3", ov_genai.InpaintingPipeline),
    ("lcm", ov_genai.Text2ImagePipeline), ("lcm", ov_genai.Image2ImagePipeline), ("lcm", ov_genai.InpaintingPipeline),
])
def test_new_families_run_every_task(name: str, cls: type) -> None:
    pipe = cls(model_dir(name), "CPU", **F32)
    config = pipe.get_generation_config()
    inputs: tuple = ()
    if cls is not ov_genai.Text2ImagePipeline:
        inputs = (noise_image(EDIT_SIZE),) if cls is ov_genai.Image2ImagePipeline else (
            noise_image(EDIT_SIZE), square_mask(EDIT_SIZE))
    first = pixels(pipe.generate(PROMPT, *inputs, num_inference_steps=4, rng_seed=2, width=64, height=64))
    again = pixels(pipe.generate(PROMPT, *inputs, num_inference_steps=4, rng_seed=2, width=64, height=64))
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, again)
    assert first.std() > 1
    # the model's own defaults, which the server reports and uses
    expected = {"sd3": (7.0, 28, 256), "lcm": (8.5, 4, -1)}[name]
    assert (config.guidance_scale, config.num_inference_steps, config.max_sequence_length) == expected


@pytest.mark.parametrize(("first", "then"), [(7.0, 1.0), (1.0, 7.0)])
def test_sd3_fixes_guidance_on_or_off_at_its_first_generate(first: float, then: float) -> None:
    """Why the server refuses an SD3 request whose guidance_scale turns classifier-free guidance the
    other way than the model's default: the pipeline fails every such request after its first one."""
    pipe = ov_genai.Text2ImagePipeline(model_dir("sd3"), "CPU", **F32)
    pipe.generate(PROMPT, num_inference_steps=1, rng_seed=1, guidance_scale=first)
    with pytest.raises(RuntimeError):
        pipe.generate(PROMPT, num_inference_steps=1, rng_seed=1, guidance_scale=then)
    assert pixels(pipe.generate(PROMPT, num_inference_steps=1, rng_seed=1, guidance_scale=first)).shape[0] == 1


def test_sd3_inpainting_is_one_image_at_a_time() -> None:
    pipe = ov_genai.InpaintingPipeline(model_dir("sd3"), "CPU", **F32)
    with pytest.raises(RuntimeError, match="Batch size 1"):
        pipe.generate(PROMPT, noise_image(EDIT_SIZE), square_mask(EDIT_SIZE), num_inference_steps=2,
                      num_images_per_prompt=2)


def test_lcm_derived_pipelines_equal_loaded_ones() -> None:
    """LCM derives like SD1.5 (the server shares one weight load per set); SD3 does not (see pipelines.py)."""
    inpaint = ov_genai.InpaintingPipeline(model_dir("lcm"), "CPU", **F32)
    t2i = ov_genai.Text2ImagePipeline(ov_genai.Image2ImagePipeline(inpaint))
    direct = ov_genai.Text2ImagePipeline(model_dir("lcm"), "CPU", **F32)
    kwargs = {"num_inference_steps": 3, "rng_seed": 4}
    assert np.array_equal(pixels(t2i.generate(PROMPT, **kwargs)), pixels(direct.generate(PROMPT, **kwargs)))


def test_lcm_guidance_is_an_embedding_not_cfg() -> None:
    """Guidance changes the image through the UNet's timestep_cond; GenAI refuses a negative prompt
    (there is no unconditional pass to steer away from)."""
    pipe = ov_genai.Text2ImagePipeline(model_dir("lcm"), "CPU", **F32)
    kwargs = {"num_inference_steps": 2, "rng_seed": 6}
    base = pixels(pipe.generate(PROMPT, guidance_scale=8.5, **kwargs))
    assert mean_abs_diff(base, pixels(pipe.generate(PROMPT, guidance_scale=1.5, **kwargs))) > 0.1
    with pytest.raises(RuntimeError, match="Negative prompt is not used by Latent Consistency Model"):
        pipe.generate(PROMPT, negative_prompt="blue", **kwargs)
