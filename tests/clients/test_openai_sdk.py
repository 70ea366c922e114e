"""The openai SDK, unmodified, against a real server: the fields it sends, the response models it
reads (validated with the SDK's own pydantic models), and seeds that reproduce a picture."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
)
from PIL import Image

from tests.clients.conftest import Server

FAST: dict[str, Any] = {"size": "64x64"}


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v3", api_key=server.key, max_retries=0, timeout=120)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 160, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def generate(client: openai.OpenAI, server: Server, **kwargs: Any) -> ImagesResponse:
    """One generation through the SDK; the raw body is validated strictly with ImagesResponse."""
    raw = client.images.with_raw_response.generate(model=server.model, prompt="a red circle", **{**FAST, **kwargs})
    return ImagesResponse.model_validate(raw.http_response.json())


def seed_of(response: ImagesResponse) -> int:
    assert response.model_extra is not None
    seed = response.model_extra["rng_seed"]
    assert isinstance(seed, int)
    return seed


@pytest.mark.parametrize(("quality", "echo"), [
    ("auto", "medium"), ("standard", "medium"), ("low", "low"), ("medium", "medium"), ("high", "high"),
    ("hd", "high"), ("xhigh", "xhigh"), ("max", "max"),
])
def test_generate_with_the_fields_clients_send(client: openai.OpenAI, server: Server, quality: str,
                                               echo: str) -> None:
    response = generate(client, server, quality=quality, background="auto", moderation="low", user="alice",
                        output_format="webp", n=2)
    assert (response.quality, response.background, response.output_format, response.size) == (
        echo, "opaque", "webp", "64x64")
    assert response.safety_identifier == "alice"
    assert response.data is not None and len(response.data) == 2
    assert all(pixels(item.b64_json or "").shape == (64, 64, 3) for item in response.data)
    assert 0 <= seed_of(response) < 2**32


def test_safety_identifier_wins_over_user(client: openai.OpenAI, server: Server) -> None:
    response = generate(client, server, user="alice", safety_identifier="hash-1", background="opaque")
    assert response.safety_identifier == "hash-1"
    assert "safety_identifier" not in generate(client, server).model_fields_set


def test_each_request_draws_a_seed_and_sending_it_back_reproduces_the_image(client: openai.OpenAI,
                                                                             server: Server) -> None:
    first, second = generate(client, server), generate(client, server)
    assert seed_of(first) != seed_of(second)
    assert first.data and second.data
    assert first.data[0].b64_json != second.data[0].b64_json
    again = generate(client, server, extra_body={"rng_seed": seed_of(first)})
    assert seed_of(again) == seed_of(first)
    assert again.data and again.data[0].b64_json == first.data[0].b64_json


def streamed(client: openai.OpenAI, server: Server, **kwargs: Any) -> list[Any]:
    stream = client.images.generate(model=server.model, prompt="a red circle", stream=True, partial_images=1,
                                    **{**FAST, **kwargs})
    return list(stream)


def test_a_streamed_seed_reproduces_the_image_streamed_and_not(client: openai.OpenAI, server: Server) -> None:
    events = streamed(client, server, user="bob", quality="high")
    *partials, done = events
    assert partials and all(ImageGenPartialImageEvent.model_validate(e.to_dict()) for e in partials)
    completed = ImageGenCompletedEvent.model_validate(done.to_dict())
    assert (completed.type, completed.quality, completed.safety_identifier) == ("image_generation.completed",
                                                                                "high", "bob")
    seed = (completed.model_extra or {})["rng_seed"]
    assert all((e.model_extra or {})["rng_seed"] == seed for e in partials)

    other = ImageGenCompletedEvent.model_validate(streamed(client, server, quality="high")[-1].to_dict())
    assert (other.model_extra or {})["rng_seed"] != seed and other.b64_json != completed.b64_json

    replay = ImageGenCompletedEvent.model_validate(
        streamed(client, server, quality="high", extra_body={"rng_seed": seed})[-1].to_dict())
    assert replay.b64_json == completed.b64_json
    plain = generate(client, server, quality="high", extra_body={"rng_seed": seed})
    assert plain.data and np.array_equal(pixels(plain.data[0].b64_json or ""), pixels(completed.b64_json))


def test_edit_with_the_fields_clients_send(client: openai.OpenAI, server: Server) -> None:
    raw = client.images.with_raw_response.edit(
        model=server.model, prompt="a blue square", image=("in.png", png(64, 64), "image/png"), background="opaque",
        quality="high", user="carol", extra_body={"strength": 0.75})
    response = ImagesResponse.model_validate(raw.http_response.json())
    assert (response.size, response.quality, response.safety_identifier) == ("64x64", "high", "carol")
    seed = seed_of(response)
    again = ImagesResponse.model_validate(client.images.with_raw_response.edit(
        model=server.model, prompt="a blue square", image=("in.png", png(64, 64), "image/png"), quality="high",
        extra_body={"strength": 0.75, "rng_seed": seed}).http_response.json())
    assert response.data and again.data and again.data[0].b64_json == response.data[0].b64_json


def test_streamed_edit_events_validate(client: openai.OpenAI, server: Server) -> None:
    stream = client.images.edit(model=server.model, prompt="a blue square", image=("in.png", png(64, 64), "image/png"),
                                stream=True, partial_images=1, background="auto", extra_body={"strength": 1.0})
    *partials, done = list(stream)
    assert all(ImageEditPartialImageEvent.model_validate(e.to_dict()) for e in partials)
    completed = ImageEditCompletedEvent.model_validate(done.to_dict())
    assert completed.type == "image_edit.completed" and (completed.model_extra or {})["rng_seed"] >= 0


@pytest.mark.parametrize(("kwargs", "param", "message"), [
    ({"style": "vivid"}, "style", "style is not supported by this server: describe the style in the prompt"),
    ({"background": "transparent"}, "background",
     "background transparent is not supported: this server draws opaque images (use auto or opaque)"),
    ({"complexity": "high"}, "complexity", "complexity is not supported by this server: these models have no "
     "planning stage; use quality or num_inference_steps"),
    ({"output_format": "gif", "frame_count": 4}, "frame_count",
     "frame_count is not supported by this server: this server draws still images (png, jpeg, webp)"),
    ({"response_format": "url"}, "response_format", "Unsupported response_format: url. Only b64_json is supported."),
])
def test_fields_these_models_cannot_honour_are_a_400_naming_them(client: openai.OpenAI, server: Server,
                                                                 kwargs: dict[str, Any], param: str,
                                                                 message: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=server.model, prompt="a red circle", **kwargs)
    assert isinstance(info.value.body, dict)
    assert (info.value.body.get("param"), info.value.body.get("message")) == (param, message)


def test_input_fidelity_on_an_edit_is_a_400(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model=server.model, prompt="x", image=("in.png", png(64, 64), "image/png"),
                           input_fidelity="high")
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == "input_fidelity"
