"""LiteLLM, unmodified, against a real server: ``litellm.image_generation`` with an ``openai/``
model name and ``api_base``, as LiteLLM users configure an OpenAI-compatible image server."""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import pytest
from PIL import Image

from tests.clients.conftest import Server

# Without it LiteLLM fetches a price list from the internet when imported, and retries for seconds.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm

# LiteLLM's own TypedDicts trip a pydantic warning at import of its providers; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Item.*ReadOnly:UserWarning",
                                        "ignore:Items.*ReadOnly:UserWarning")


def generate(server: Server, **kwargs: Any) -> Any:
    return litellm.image_generation(model=f"openai/{server.model}", prompt="a red circle", api_base=server.url + "/v1",
                                    api_key=server.key, **kwargs)


def test_image_generation(server: Server) -> None:
    response = generate(server, size="64x64", n=2, quality="high", user="dave")
    assert len(response.data) == 2
    assert ' user="dave"' in server.log.read_text()  # the OpenAI fields LiteLLM forwards are accepted
    for item in response.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.size == (64, 64)


def test_extra_fields_pass_through_and_the_seed_comes_back(server: Server) -> None:
    first = generate(server, size="64x64", extra_body={"rng_seed": 1234, "num_inference_steps": 1})
    again = generate(server, size="64x64", extra_body={"rng_seed": 1234, "num_inference_steps": 1})
    assert first.data[0].b64_json == again.data[0].b64_json


def test_a_refused_field_reaches_the_caller_with_its_message(server: Server) -> None:
    with pytest.raises(litellm.exceptions.BadRequestError) as info:
        generate(server, size="64x64", extra_body={"style": "vivid"})
    assert "style is not supported by this server" in str(info.value)
