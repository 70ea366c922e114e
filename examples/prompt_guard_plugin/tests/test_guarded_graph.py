"""The example graph served for real: ``ovms-graph serve`` in a subprocess, on the tiny SD1.5 model.

The calculator reaches the server only through the installed entry point. The server also runs
"plain-sd", the same ImageGenCalculator node without the guard. With f32 and a fixed seed, this
shows that the guarded graph generated from the rewritten prompt.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from prompt_guard_helpers import Server


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def generate(server: Server, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/v3/images/generations", json=body, timeout=300)


def pixels(response: requests.Response) -> np.ndarray:
    """The only image of a 200 response, checked to be a PNG."""
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(("body", "message", "param"), [
    ({"prompt": "a GORE scene"}, 'prompt contains the blocked word "gore"', "prompt"),
    ({"prompt": "a cat", "prompt_2": "blood bath"}, 'prompt_2 contains the blocked word "blood bath"', "prompt_2"),
    ({"prompt": "the Zombie Apocalypse"}, 'prompt contains the blocked word "zombie apocalypse"', "prompt"),
])
def test_a_blocked_generation_is_a_400_naming_the_field(guarded_server: Server, body: dict[str, Any], message: str,
                                                        param: str) -> None:
    response = generate(guarded_server, {"model": "guarded-sd", **body})
    assert response.status_code == 400
    assert response.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                         "code": "blocked_word"}}


def test_a_blocked_edit_is_a_400_naming_the_field(guarded_server: Server) -> None:
    response = requests.post(f"{guarded_server.url}/v3/images/edits", timeout=300,
                             data={"model": "guarded-sd", "prompt": "a weapon"},
                             files={"image": ("in.png", png(64, 64, (200, 30, 30)), "image/png")})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": 'prompt contains the blocked word "weapon"',
                                        "type": "invalid_request_error", "param": "prompt", "code": "blocked_word"}


def test_the_openai_sdk_sees_the_refusal(guarded_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{guarded_server.url}/v3", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(model="guarded-sd", prompt="blood bath at dawn")
    assert refused.value.body == {"message": 'prompt contains the blocked word "blood bath"',
                                  "type": "invalid_request_error", "param": "prompt", "code": "blocked_word"}


def test_an_allowed_prompt_is_generated_with_the_style_suffix(guarded_server: Server) -> None:
    common = {"size": "64x64", "rng_seed": 7, "num_inference_steps": 2}
    guarded = pixels(generate(guarded_server, {"model": "guarded-sd", "prompt": "a red circle", **common}))
    styled = pixels(generate(guarded_server, {"model": "plain-sd", "prompt": "a red circle, flat colors, centered",
                                              **common}))
    unstyled = pixels(generate(guarded_server, {"model": "plain-sd", "prompt": "a red circle", **common}))
    assert guarded.shape == (64, 64, 3)
    assert np.array_equal(guarded, styled)
    assert not np.array_equal(guarded, unstyled)


def test_an_allowed_edit_is_generated(guarded_server: Server) -> None:
    response = requests.post(f"{guarded_server.url}/v3/images/edits", timeout=300,
                             data={"model": "guarded-sd", "prompt": "a red circle", "num_inference_steps": "2",
                                   "strength": "0.8"},
                             files={"image": ("in.png", png(48, 32, (20, 200, 30)), "image/png")})
    assert pixels(response).shape == (32, 48, 3)
