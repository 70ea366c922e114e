"""The demo model draws what it is asked through the running server (SPEC §10): the same semantic
checks as test_demo_model_direct.py, but every image comes from `graphs/demo` served over HTTP on
127.0.0.1 with the real ImageGenCalculator, as `make run` serves it."""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from ovms_graph.registry import Registry
from ovms_graph.testing import ThreadedServer
from tests.demo.test_demo_model_direct import (
    GUIDANCE,
    LORA_MIN_FILL_DROP,
    PROMPT_SPECS,
    PROMPTS,
    REPO,
    SEEDS,
    SIZE,
    TRIANGLE_ACCURACY,
    model_dir,
    red_square,
    shapes_data,
)

CONFIG = REPO / "graphs" / "demo" / "config.json"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    model_dir()
    served = ThreadedServer.start(CONFIG, registry=Registry.from_entry_points(), limit=600)
    yield served
    served.stop()


def png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def generate(server: ThreadedServer, **body: Any) -> np.ndarray:
    response = requests.post(f"{server.url}/v3/images/generations", json={"guidance_scale": GUIDANCE, **body},
                             timeout=300)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    return png(item["b64_json"])


def edit(server: ThreadedServer, files: dict[str, np.ndarray], **fields: Any) -> np.ndarray:
    parts = {}
    for name, array in files.items():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        parts[name] = (f"{name}.png", buffer.getvalue(), "image/png")
    data = {"guidance_scale": str(GUIDANCE), **{k: str(v) for k, v in fields.items()}}
    response = requests.post(f"{server.url}/v3/images/edits", data=data, files=parts, timeout=300)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    return png(item["b64_json"])


@pytest.fixture(scope="module")
def drawn(server: ThreadedServer) -> list[tuple[shapes_data.ShapeSpec, shapes_data.ShapeScore]]:
    """12 prompts x 4 seeds at guidance 3 and the graph's default 20 steps, scored."""
    return [(spec, shapes_data.score(generate(server, model="shapes", prompt=prompt, rng_seed=seed)))
            for seed in SEEDS for spec, prompt in zip(PROMPT_SPECS, PROMPTS, strict=True)]


def test_models_lists_the_demo_and_its_lora(server: ThreadedServer) -> None:
    ids = [m["id"] for m in requests.get(f"{server.url}/v3/models", timeout=60).json()["data"]]
    assert ids == ["shapes", "outline"]


def test_colour_and_background_are_right_at_least_95_percent(drawn: list[Any]) -> None:
    assert len(drawn) == 48
    colour = sum(score.color == spec.color for spec, score in drawn) / len(drawn)
    background = sum(score.background == spec.background for spec, score in drawn) / len(drawn)
    assert colour >= 0.95 and background >= 0.95, (colour, background)


def test_triangles_are_told_from_other_shapes(drawn: list[Any]) -> None:
    right = sum(score.is_triangle == (spec.shape == "triangle") for spec, score in drawn) / len(drawn)
    assert right >= TRIANGLE_ACCURACY, right


def test_a_size_the_model_cannot_draw_is_refused_naming_the_largest(server: ThreadedServer) -> None:
    doc = (REPO / "docs" / "demo-model.md").read_text(encoding="utf-8")
    body = {"model": "shapes", "prompt": "a red circle on a white background", "size": "512x512"}
    response = requests.post(f"{server.url}/v3/images/generations", json=body, timeout=300)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"
    message = response.json()["error"]["message"]
    assert message == f"requested resolution 512x512 exceeds max_resolution {SIZE}x{SIZE}"
    assert f"`{message}`" in doc


def test_image_to_image_recolours_a_red_square_blue(server: ThreadedServer) -> None:
    image = edit(server, {"image": red_square()}, model="shapes", prompt="a blue circle on a black background",
                 strength=0.8, rng_seed=1)
    assert image.shape == (SIZE, SIZE, 3)
    assert shapes_data.score(image).color == "blue"


def test_inpainting_puts_green_in_the_mask_and_keeps_the_outside(server: ThreadedServer) -> None:
    source = np.asarray(shapes_data.draw(shapes_data.ShapeSpec("circle", "red", "gray"), random.Random("inpaint")),
                        dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    image = edit(server, {"image": source, "mask": mask}, model="shapes",
                 prompt="a green triangle on a gray background", strength=1.0, rng_seed=1)
    hue, sat, val = shapes_data._hsv(image.astype(np.float32))
    green = (sat > 0.35) & (val > 0.25) & np.vectorize(lambda h: shapes_data.hue_name(h) == "green")(hue)
    assert green[mask[..., 0] > 0].mean() > 0.10
    keep = np.ones((SIZE, SIZE), dtype=bool)
    keep[8:56, 8:56] = False
    assert np.abs(image.astype(np.int16) - source.astype(np.int16))[keep].mean() < 12.0


def test_lora_alpha_moves_images_from_filled_toward_outlined(server: ThreadedServer) -> None:
    fills: dict[float, float] = {}
    for alpha in (0.0, 0.5, 1.0):
        fills[alpha] = float(np.mean([
            shapes_data.score(generate(server, model="outline", prompt=prompt, rng_seed=seed,
                                       lora_alphas={"outline": alpha})).fill_ratio
            for seed in SEEDS[:2] for prompt in PROMPTS]))
    assert fills[1.0] < fills[0.0] - LORA_MIN_FILL_DROP, fills
    assert fills[1.0] < fills[0.5] < fills[0.0], fills
