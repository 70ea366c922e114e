"""Replicas are interchangeable: nothing a request needs lives in one replica's memory between requests.

Two `ovms-graph serve` processes start from the same model repository (the tiny SD graph and the
DYNAMIC LoRA graph, whose adapters switch per request on shared pipelines). A sequence of requests,
text-to-image, LoRA adapters with and without weight overrides, the base model right after an adapter,
image-to-image, several images, sent alternately to the two replicas gives exactly the answers (images
byte for byte, seeds, sizes) that the same sequence gives on one replica. So every request is answered
identically by both, whatever either served before. A seedless request's reported ``rng_seed`` replays
its image on the other replica.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from ovms_graph.testing import ServerProcess
from tests.scaleout.helpers import LIMIT, REPO, start_replica


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, "PNG")
    return buffer.getvalue()


#: (route, fields); an edit's fields are multipart parts and its source image is SOURCE.
SEQUENCE: list[tuple[str, dict[str, Any]]] = [
    ("generations", {"model": "tiny-sd", "prompt": "a red circle", "rng_seed": 7}),
    ("generations", {"model": "attn", "prompt": "a red circle", "rng_seed": 7}),
    ("generations", {"model": "sd15-lora", "prompt": "a red circle", "rng_seed": 7}),
    ("edits", {"model": "tiny-sd", "prompt": "a red circle", "rng_seed": "7", "strength": "0.6",
               "num_inference_steps": "4"}),
    ("generations", {"model": "textenc", "prompt": "a blue square", "rng_seed": 42, "lora_alphas": {"textenc": 0.9}}),
    ("generations", {"model": "tiny-sd", "prompt": "a blue square", "rng_seed": 42, "size": "128x128",
                     "num_inference_steps": 3, "n": 2}),
    ("generations", {"model": "proj", "prompt": "a red circle", "rng_seed": 7}),
    ("generations", {"model": "sd15-lora", "prompt": "a red circle", "rng_seed": 7}),
    ("generations", {"model": "tiny-sd", "prompt": "a red circle", "rng_seed": 7}),
]
SOURCE = png((120, 160, 40))


def answer(replica: ServerProcess, route: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The response body without ``created`` (the time it was made)."""
    url = f"{replica.url}/v3/images/{route}"
    if route == "edits":
        response = requests.post(url, data=fields, files={"image": ("source.png", SOURCE, "image/png")},
                                 timeout=LIMIT)
    else:
        response = requests.post(url, json=fields, timeout=LIMIT)
    assert response.status_code == 200, (route, fields, response.text)
    body: dict[str, Any] = response.json()
    assert body.pop("created") and body["data"], body
    return body


def test_any_replica_answers_any_request_in_any_order_with_the_same_images(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": "tiny-sd", "base_path": str(REPO / "graphs" / "tiny-sd")}},
        {"config": {"name": "sd15-lora", "base_path": str(REPO / "graphs" / "lora-dynamic")}}]}))
    replicas = [start_replica(config, cwd=tmp_path) for _ in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready(LIMIT)
        alternated = [answer(replicas[i % 2], route, fields) for i, (route, fields) in enumerate(SEQUENCE)]
        # On one replica: the one that served the odd half above, so every request is answered once by each.
        on_one = [answer(replicas[1], route, fields) for route, fields in SEQUENCE]
        for i, (expected, got) in enumerate(zip(on_one, alternated, strict=True)):
            assert got == expected, f"request {i} {SEQUENCE[i]} differs between the replicas"

        # Not vacuous: the prompt, the adapter and the route each change the image.
        images = [[item["b64_json"] for item in body["data"]] for body in alternated]
        assert len({tuple(i) for i in images}) == len(images) - 2, "only the repeated requests may match"
        assert images[0] == images[-1] and images[2] == images[-2]
        assert len(images[5]) == 2 and images[5][0] != images[5][1]

        # A seedless request reports the seed it drew; that seed replays its image on the other replica.
        drawn = answer(replicas[0], "generations", {"model": "attn", "prompt": "a green moon"})
        replayed = answer(replicas[1], "generations", {"model": "attn", "prompt": "a green moon",
                                                       "rng_seed": drawn["rng_seed"]})
        assert replayed == drawn
    finally:
        for replica in replicas:
            replica.stop(LIMIT)
    for replica in replicas:
        assert replica.process.returncode == 0 and "Traceback" not in replica.output(), replica.output()
