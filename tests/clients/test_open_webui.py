"""Open WebUI's image requests, reproduced from what its "openai" image engine sends (base URL
``http://HOST:PORT/v1``): generations as JSON with its default size 512x512 and ``b64_json``, plus any
extra parameters the operator configured; edits as multipart with the picture as ``image`` (one) or
``image[]`` (several), and ``background``."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import requests
from PIL import Image

from tests.clients.conftest import Server


def headers(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (220, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def sizes(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size for item in body["data"]]


@pytest.mark.parametrize("extra", [{}, {"num_inference_steps": 1, "guidance_scale": 3.0}, {"quality": "low"}],
                         ids=["as sent", "operator extra params", "quality"])
def test_generation(server: Server, extra: dict[str, Any]) -> None:
    body = {"model": server.model, "prompt": "a red circle", "n": 1, "size": "512x512",
            "response_format": "b64_json", **extra}
    response = requests.post(server.url + "/v1/images/generations", data=json.dumps(body), timeout=300,
                             headers={**headers(server), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert sizes(response.json()) == [(512, 512)]


def edit(server: Server, fields: dict[str, str], files: list[tuple[str, bytes]]) -> requests.Response:
    parts = [(name, (f"image-{i}.png", data, "image/png")) for i, (name, data) in enumerate(files)]
    return requests.post(server.url + "/v1/images/edits", data=fields, files=parts, headers=headers(server),
                         timeout=300)


FIELDS = {"prompt": "a blue circle", "n": "1", "size": "512x512", "response_format": "b64_json"}


@pytest.mark.parametrize(("name", "background"), [("image", "auto"), ("image[]", "opaque"), ("image", None)])
def test_single_image_edit(server: Server, name: str, background: str | None) -> None:
    fields = {"model": server.model, **FIELDS, **({"background": background} if background else {})}
    response = edit(server, fields, [(name, png(64, 64))])
    assert response.status_code == 200, response.text
    assert sizes(response.json()) == [(512, 512)]
    assert response.json()["background"] == "opaque"


def test_several_images_are_a_400_saying_one_is_edited_at_a_time(server: Server) -> None:
    response = edit(server, {"model": server.model, **FIELDS, "background": "auto"},
                    [("image[]", png(64, 64)), ("image[]", png(64, 64))])
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["message"]) == ("image", "one image is edited at a time; got 2 (image or image[]): "
                                                           "send one")
