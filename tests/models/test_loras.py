"""The three kohya-format LoRAs apply to tiny sd15 through openvino_genai.Adapter.

GenAI silently ignores LoRA keys it cannot map (it only prints a warning to stderr), so every test
here checks that keys were used and that the image changes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino_genai as ov_genai
import pytest

from tests.models.conftest import F32, TINY, mean_abs_diff, model_dir, pixels

NAMES = ["lora_a", "lora_b", "lora_c"]
PROMPT = "a red cat on a blue background"
ARGS = {"num_inference_steps": 3, "rng_seed": 21}


def adapter(name: str) -> ov_genai.Adapter:
    return ov_genai.Adapter(TINY / "loras" / f"{name}.safetensors")


def only(a: ov_genai.Adapter, alpha: float) -> ov_genai.AdapterConfig:
    config = ov_genai.AdapterConfig()
    config.add(a, alpha)
    return config


@pytest.fixture(scope="module")
def adapters() -> dict[str, ov_genai.Adapter]:
    return {name: adapter(name) for name in NAMES}


@pytest.fixture(scope="module")
def pipe(adapters: dict[str, ov_genai.Adapter]) -> Iterator[ov_genai.Text2ImagePipeline]:
    config = ov_genai.AdapterConfig()
    for a in adapters.values():
        config.add(a, 0.0)
    yield ov_genai.Text2ImagePipeline(model_dir("sd15"), "CPU", adapters=config, **F32)


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    plain = ov_genai.Text2ImagePipeline(model_dir("sd15"), "CPU", **F32)
    return pixels(plain.generate(PROMPT, **ARGS))


def test_registering_adapters_uses_every_key(capfd: pytest.CaptureFixture[str]) -> None:
    config = ov_genai.AdapterConfig()
    for name in NAMES:
        config.add(adapter(name), 1.0)
    pipe = ov_genai.Text2ImagePipeline(model_dir("sd15"), "CPU", adapters=config, **F32)
    pipe.generate(PROMPT, num_inference_steps=1, rng_seed=1)
    del pipe
    err = capfd.readouterr().err
    assert "Unused LoRA tensor" not in err, err


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal safetensors writer (f32 only), so this test needs no torch."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_unmatched_keys_are_reported(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The check above can fail: a key naming no layer of the model shows up as unused."""
    path = tmp_path / "bogus.safetensors"
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_zz"
    write_safetensors(path, {f"{stem}.lora_down.weight": np.ones((4, 32)),
                             f"{stem}.lora_up.weight": np.ones((32, 4)), f"{stem}.alpha": np.array(4.0)})
    pipe = ov_genai.Text2ImagePipeline(model_dir("sd15"), "CPU", adapters=only(ov_genai.Adapter(path), 1.0), **F32)
    pipe.generate(PROMPT, num_inference_steps=1, rng_seed=1)
    del pipe
    assert "Unused LoRA tensor" in capfd.readouterr().err


def test_empty_adapter_config_equals_plain_pipeline(pipe: ov_genai.Text2ImagePipeline,
                                                    base: np.ndarray) -> None:
    assert np.array_equal(pixels(pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), **ARGS)), base)


@pytest.mark.parametrize("name", NAMES)
def test_alpha_one_changes_the_image(name: str, pipe: ov_genai.Text2ImagePipeline,
                                     adapters: dict[str, ov_genai.Adapter], base: np.ndarray) -> None:
    image = pixels(pipe.generate(PROMPT, adapters=only(adapters[name], 1.0), **ARGS))
    pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), num_inference_steps=1)  # see test_alpha_zero
    assert mean_abs_diff(image, base) > 8, f"{name} at alpha 1.0 barely changes the image"


@pytest.mark.parametrize("name", NAMES)
def test_alpha_zero_equals_no_adapter(name: str, pipe: ov_genai.Text2ImagePipeline,
                                      adapters: dict[str, ov_genai.Adapter], base: np.ndarray) -> None:
    # GenAI 2026.4: two consecutive generate() calls with the same adapters and only the alpha
    # changed either fail ("Tensor was not initialized") or reuse the previous alpha; a call with a
    # different adapter set in between makes the new alpha take effect.
    pipe.generate(PROMPT, adapters=only(adapters[name], 1.0), num_inference_steps=1)
    pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), num_inference_steps=1)
    image = pixels(pipe.generate(PROMPT, adapters=only(adapters[name], 0.0), **ARGS))
    pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), num_inference_steps=1)
    assert np.array_equal(image, base)


def test_loras_differ_from_each_other(pipe: ov_genai.Text2ImagePipeline,
                                      adapters: dict[str, ov_genai.Adapter]) -> None:
    images = []
    for name in NAMES:
        images.append(pixels(pipe.generate(PROMPT, adapters=only(adapters[name], 1.0), **ARGS)))
        pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), num_inference_steps=1)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert mean_abs_diff(images[i], images[j]) > 5, (NAMES[i], NAMES[j])


def test_alpha_scales_the_effect(pipe: ov_genai.Text2ImagePipeline, adapters: dict[str, ov_genai.Adapter],
                                 base: np.ndarray) -> None:
    diffs = []
    for alpha in (0.25, 1.0):
        diffs.append(mean_abs_diff(pixels(pipe.generate(PROMPT, adapters=only(adapters["lora_a"], alpha),
                                                        **ARGS)), base))
        pipe.generate(PROMPT, adapters=ov_genai.AdapterConfig(), num_inference_steps=1)
    assert 0 < diffs[0] < diffs[1]
