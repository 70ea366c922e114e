"""ImageGenCalculator through a real server on the tiny models: results, sizes, formats, tasks,
streaming, concurrency and cancellation; pixel-exact against openvino_genai itself (f32)."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import openai
import openvino as ov
import openvino_genai
import pytest
import requests
from PIL import Image

from calculators.image_gen.model_info import Task
from tests.calculators.image_gen.conftest import LiveServer, Servers
from tests.calculators.image_gen.helpers import TINY, decode_b64, pixels, png_bytes

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def images(response: requests.Response) -> list[np.ndarray]:
    body = ok(response)
    assert set(body) == {"created", "data", "rng_seed", "size", "quality", "output_format", "background"}
    assert isinstance(body["created"], int) and isinstance(body["rng_seed"], int)
    return [pixels(item["b64_json"]) for item in body["data"]]


def edit(server: LiveServer, fields: dict[str, str], files: dict[str, bytes]) -> requests.Response:
    return server.post("images/edits", data=fields,
                       files={name: (f"{name}.png", data, "image/png") for name, data in files.items()})


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ----- text to image -----
def test_same_seed_same_image_other_seed_other_image(servers: Servers) -> None:
    server = servers["sd15"]
    body = {"prompt": "a red circle", "rng_seed": 11, "num_inference_steps": 2}
    first, again = images(server.generate(body)), images(server.generate(body))
    other = images(server.generate({**body, "rng_seed": 12}))
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_n_images(servers: Servers) -> None:
    result = images(servers["sd15"].generate({"prompt": "a cat", "n": 3, "rng_seed": 1}))
    assert [image.shape for image in result] == [(64, 64, 3)] * 3
    assert not np.array_equal(result[0], result[1])


@pytest.mark.parametrize(("fields", "shape"), [
    ({"size": "32x48"}, (48, 32, 3)),
    ({"width": 48, "height": 16}, (16, 48, 3)),
    ({"width": 128}, (64, 128, 3)),
    ({"size": "auto"}, (64, 64, 3)),
    ({}, (64, 64, 3)),
])
def test_sizes(servers: Servers, fields: dict[str, Any], shape: tuple[int, ...]) -> None:
    (image,) = images(servers["sd15"].generate({"prompt": "a cat", **fields}))
    assert image.shape == shape


def test_default_resolution(servers: Servers) -> None:
    (image,) = images(servers["sd15-default"].generate({"prompt": "a cat"}))
    assert image.shape == (48, 32, 3)


def test_static_reshape_serves_only_the_compiled_shape(servers: Servers) -> None:
    server = servers["sd15-static"]
    result = images(server.generate({"prompt": "a cat", "rng_seed": 5}))
    assert [image.shape for image in result] == [(32, 32, 3)] * 2
    assert server.resources("sd15-static").settings.static_resolutions[0].width == 32
    response = server.generate({"prompt": "a cat", "size": "64x64"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "requested resolution 64x64 is not supported by static reshape settings (32x32)")


@pytest.mark.parametrize(("files", "param", "task"), [
    ({"image": png_bytes(32, 32)}, "image", "image-to-image (images/edits without a mask)"),
    ({"image": png_bytes(32, 32), "mask": png_bytes(32, 32, (255, 255, 255))}, "mask",
     "inpainting (images/edits with a mask)"),
])
def test_a_static_node_for_several_images_refuses_edits_by_name(
        servers: Servers, files: dict[str, bytes], param: str, task: str) -> None:
    # openvino_genai's VAE encoder takes one image; on a pipeline reshaped for 2 every edit used to fail (500).
    server = servers["sd15-static"]
    response = server.post("images/edits", data={"prompt": "a cat", "model": "sd15-static"},
                           files={name: (f"{name}.png", data, "image/png") for name, data in files.items()})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["message"] == (
        f"{task} is not available on this node: the node is reshaped for static_num_images_per_prompt 2, and "
        "openvino_genai edits one image at a time; serve edits from a node with static_num_images_per_prompt 1")
    assert server.resources("sd15-static").tasks == frozenset({Task.TEXT2IMAGE})
    assert len(images(server.generate({"prompt": "a cat", "rng_seed": 5}))) == 2  # still serving


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(servers: Servers, fmt: str, pil: str) -> None:
    body = ok(servers["sd15"].generate({"prompt": "a cat", "output_format": fmt, "rng_seed": 3}))
    image = decode_b64(body["data"][0]["b64_json"])
    assert (image.format, image.size) == (pil, (64, 64))


def test_output_compression_changes_jpeg_size(servers: Servers) -> None:
    def size(quality: int) -> int:
        body = ok(servers["sd15"].generate({"prompt": "a cat", "output_format": "jpeg",
                                            "output_compression": quality, "rng_seed": 3}))
        return len(base64.b64decode(body["data"][0]["b64_json"]))

    assert size(10) < size(100)


# ----- pixel-exact against openvino_genai -----
@pytest.fixture(scope="module")
def direct_sd15() -> dict[str, Any]:
    """openvino_genai pipelines loaded on their own, f32, for the same requests."""
    folder = str(TINY / "sd15")
    t2i = openvino_genai.Text2ImagePipeline(folder, "CPU", **F32)
    i2i = openvino_genai.Image2ImagePipeline(folder, "CPU", **F32)
    inpaint = openvino_genai.InpaintingPipeline(folder, "CPU", **F32)
    return {"t2i": t2i, "i2i": i2i, "inpaint": inpaint}


@pytest.mark.parametrize("body", [
    {"prompt": "a red circle on a white background", "rng_seed": 42, "num_inference_steps": 3},
    {"prompt": "a cat", "rng_seed": 7, "num_inference_steps": 2, "n": 2, "size": "32x48", "guidance_scale": 3.5,
     "negative_prompt": "blue"},
    {"prompt": "a dog", "num_inference_steps": 1},
])
def test_text_to_image_equals_openvino_genai(servers: Servers, direct_sd15: dict[str, Any],
                                             body: dict[str, Any]) -> None:
    response = servers["sd15"].generate(body)
    served = images(response)
    # Without rng_seed the server draws one and says which.
    kwargs: dict[str, Any] = {"num_inference_steps": body["num_inference_steps"],
                              "rng_seed": response.json()["rng_seed"]}
    assert kwargs["rng_seed"] == body.get("rng_seed", kwargs["rng_seed"])
    for key in ("guidance_scale", "negative_prompt"):
        if key in body:
            kwargs[key] = body[key]
    if "n" in body:
        kwargs["num_images_per_prompt"] = body["n"]
    if "size" in body:
        kwargs["width"], kwargs["height"] = map(int, body["size"].split("x"))
    direct = np.array(direct_sd15["t2i"].generate(body["prompt"], **kwargs).data, copy=True)
    assert len(served) == direct.shape[0]
    for image, expected in zip(served, direct, strict=True):
        assert np.array_equal(image, expected)


def test_image_to_image_equals_openvino_genai(servers: Servers, direct_sd15: dict[str, Any]) -> None:
    source = png_bytes(64, 64, (30, 160, 90))
    fields = {"prompt": "a green square", "rng_seed": "9", "num_inference_steps": "4", "strength": "0.5"}
    served = images(edit(servers["sd15"], fields, {"image": source}))
    tensor = ov.Tensor(np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))[None].copy())
    direct = np.array(direct_sd15["i2i"].generate("a green square", tensor, rng_seed=9, num_inference_steps=4,
                                                  strength=0.5).data, copy=True)
    assert np.array_equal(served[0], direct[0])


def test_inpainting_equals_openvino_genai(servers: Servers, direct_sd15: dict[str, Any]) -> None:
    source = png_bytes(64, 64, (200, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    fields = {"prompt": "a purple triangle", "rng_seed": "4", "num_inference_steps": "3"}
    served = images(edit(servers["sd15"], fields, {"image": source, "mask": buffer.getvalue()}))
    image = ov.Tensor(np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))[None].copy())
    mask_rgb = np.repeat(np.asarray(mask)[None, :, :, None], 3, axis=3).copy()
    direct = np.array(direct_sd15["inpaint"].generate("a purple triangle", image, ov.Tensor(mask_rgb), rng_seed=4,
                                                      num_inference_steps=3).data, copy=True)
    assert np.array_equal(served[0], direct[0])


@pytest.mark.parametrize(("graph", "alias"), [("sd15-lora", "style"), ("sd15-lora-f32", "style-f32")],
                         ids=["default-precision", "f32"])
def test_lora_then_plain_edit_then_lora_again_on_shared_pipelines(servers: Servers, graph: str, alias: str) -> None:
    """Derived pipelines share weights and adapter state: a base image-to-image between two LoRA
    text-to-image requests must neither inherit the LoRA nor break the next LoRA request."""
    server = servers[graph]
    lora_body = {"model": alias, "prompt": "a cat", "rng_seed": 5}
    fields = {"model": graph, "prompt": "a cat", "rng_seed": "1", "num_inference_steps": "4", "strength": "0.5"}
    source = {"image": png_bytes(64, 64, (120, 120, 120))}
    plain_first = images(edit(server, fields, source))[0]
    base = images(server.generate({**lora_body, "model": graph}))[0]
    lora_first = images(server.generate(lora_body))[0]
    plain_between = images(edit(server, fields, source))[0]
    lora_again = images(server.generate(lora_body))[0]
    assert lora_first.std() > 1 and lora_again.std() > 1  # not blank
    assert not np.array_equal(lora_first, base)
    assert np.array_equal(lora_first, lora_again)
    assert np.array_equal(plain_first, plain_between)


# ----- edits -----
@pytest.mark.parametrize(("source", "fields", "shape"), [
    ((64, 48), {}, (48, 64, 3)),
    ((100, 61), {}, (48, 96, 3)),
    ((100, 61), {"size": "32x32"}, (32, 32, 3)),
])
def test_image_to_image_output_size(servers: Servers, source: tuple[int, int], fields: dict[str, str],
                                    shape: tuple[int, ...]) -> None:
    result = images(edit(servers["sd15"], {"prompt": "a cat", **fields}, {"image": png_bytes(*source)}))
    assert [image.shape for image in result] == [shape]


def test_image_array_field_name(servers: Servers) -> None:
    response = servers["sd15"].post("images/edits", data={"prompt": "a cat"},
                                    files=[("image[]", ("a.png", png_bytes(32, 32), "image/png"))])
    assert [image.shape for image in images(response)] == [(32, 32, 3)]


def test_inpainting_model_serves_inpainting_only(servers: Servers) -> None:
    server = servers["sd15-inpaint"]
    assert server.resources("sd15-inpaint").info.inpainting_variant
    result = images(edit(server, {"prompt": "a cat", "n": "2"}, {"image": png_bytes(64, 64),
                                                                  "mask": png_bytes(32, 32, (255, 255, 255))}))
    assert [image.shape for image in result] == [(64, 64, 3)] * 2
    for response, message, param in [
        (server.generate({"prompt": "a cat"}),
         "text-to-image (images/generations) is not supported by this model", None),
        (edit(server, {"prompt": "a cat"}, {"image": png_bytes(64, 64)}),
         "image-to-image (images/edits without a mask) is not supported by this model", "image"),
    ]:
        assert response.status_code == 400
        assert response.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                             "code": None}}


def test_plain_sd_inpaints_one_image_at_a_time(servers: Servers) -> None:
    files = {"image": png_bytes(64, 64), "mask": png_bytes(64, 64, (255, 255, 255))}
    assert len(images(edit(servers["sd15"], {"prompt": "a cat"}, files))) == 1
    response = edit(servers["sd15"], {"prompt": "a cat", "n": "2"}, files)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "inpainting with this SD model (4-channel UNet) supports one image per request, got n=2")


# ----- model families -----
@pytest.mark.parametrize(("graph", "extra"), [
    ("sdxl", {"prompt_2": "a dog", "negative_prompt_2": "blur"}),
    ("flux", {"prompt_2": "a dog", "max_sequence_length": 512, "size": "32x32"}),
])
def test_other_families_generate(servers: Servers, graph: str, extra: dict[str, Any]) -> None:
    result = images(servers[graph].generate({"prompt": "a cat", "rng_seed": 1, **extra}))
    assert len(result) == 1 and result[0].shape[2] == 3


def test_flux_keeps_serving_after_a_refused_sequence_length(servers: Servers) -> None:
    server = servers["flux"]
    response = server.generate({"prompt": "a cat", "max_sequence_length": 32, "size": "32x32"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "max_sequence_length must be 512 for this model (its T5 text encoder runs at that length), got 32")
    assert len(images(server.generate({"prompt": "a cat", "size": "32x32", "num_inference_steps": 1}))) == 1


@pytest.mark.parametrize("files", [
    {"image": png_bytes(48, 32)},
    {"image": png_bytes(48, 32), "mask": png_bytes(48, 32, (255, 255, 255))},
], ids=["image-to-image", "inpainting"])
def test_flux_edits(servers: Servers, files: dict[str, bytes]) -> None:
    result = images(edit(servers["flux"], {"prompt": "a cat", "num_inference_steps": "2"}, files))
    assert [image.shape for image in result] == [(32, 48, 3)]


@pytest.mark.parametrize(("graph", "field", "message"), [
    ("sd15", "prompt_2", "prompt_2 is not supported by SD (StableDiffusionPipeline) models; they take prompt, "
                         "negative_prompt"),
    ("sdxl", "prompt_3", "prompt_3 is not supported by SDXL (StableDiffusionXLPipeline) models; they take prompt, "
                         "negative_prompt, negative_prompt_2, prompt_2"),
    ("flux", "negative_prompt", "negative_prompt is not supported by FLUX (FluxPipeline) models; they take prompt, "
                                "prompt_2"),
])
def test_fields_the_model_cannot_use_are_400(servers: Servers, graph: str, field: str, message: str) -> None:
    response = servers[graph].generate({"prompt": "a cat", field: "x"})
    assert response.status_code == 400
    assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "param": field,
                                        "code": None}


# ----- streaming -----
def sse(response: requests.Response) -> list[tuple[str, dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize(("graph", "steps", "partials"), [
    ("sd15", 12, 3), ("sd15", 12, 1), ("sd15", 1, 2), ("sd15", 4, 0), ("flux", 6, 2),
])
def test_stream_event_sequence(servers: Servers, graph: str, steps: int, partials: int) -> None:
    body = {"prompt": "a cat", "stream": True, "num_inference_steps": steps, "rng_seed": 2, "size": "32x32"}
    if partials:
        body["partial_images"] = partials
    events = sse(servers[graph].post("images/generations", json=body))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "image_generation.completed" and kinds.count("image_generation.completed") == 1
    partial = [data for kind, data in events if kind == "image_generation.partial_image"]
    assert len(partial) + 1 == len(events)
    assert (1 <= len(partial) <= partials) if partials else partial == []
    assert [p["partial_image_index"] for p in partial] == list(range(len(partial)))
    for kind, data in events:
        assert data["type"] == kind
        assert (data["size"], data["output_format"], data["background"]) == ("32x32", "png", "opaque")
        assert decode_b64(data["b64_json"]).size == (32, 32)
    final = pixels(events[-1][1]["b64_json"])
    plain = images(servers[graph].generate({k: v for k, v in body.items() if k not in ("stream", "partial_images")}))
    assert np.array_equal(final, plain[0])


def test_stream_edit_events(servers: Servers) -> None:
    response = edit(servers["sd15"], {"prompt": "a cat", "stream": "true", "partial_images": "2",
                                      "num_inference_steps": "8", "output_format": "webp"},
                    {"image": png_bytes(32, 32)})
    events = sse(response)
    assert {kind for kind, _ in events[:-1]} == {"image_edit.partial_image"}
    assert events[-1][0] == "image_edit.completed"
    assert decode_b64(events[-1][1]["b64_json"]).format == "WEBP"


def test_openai_sdk(servers: Servers) -> None:
    server = servers["sd15"]
    client = openai.OpenAI(base_url=f"{server.url}/v3", api_key="unused")
    result = client.images.generate(model="sd15", prompt="a cat", size="64x64", n=2, response_format="b64_json")
    assert [decode_b64(item.b64_json or "").size for item in result.data or []] == [(64, 64)] * 2
    edited = client.images.edit(model="sd15", prompt="a cat", image=("in.png", png_bytes(48, 32), "image/png"))
    assert decode_b64((edited.data or [])[0].b64_json or "").size == (48, 32)
    stream = client.images.generate(model="sd15", prompt="a cat", stream=True, partial_images=1,
                                    extra_body={"num_inference_steps": 4})
    kinds = [event.type for event in stream]
    assert kinds[-1] == "image_generation.completed" and kinds[:-1] == ["image_generation.partial_image"]
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="sd15", prompt="a cat", size="1024x1024")
    assert info.value.body == {"message": "requested resolution 1024x1024 exceeds max_resolution 256x256",
                               "type": "invalid_request_error", "param": "size", "code": None}


# ----- concurrency and cancellation -----
@pytest.mark.parametrize("graph", ["sd15-x2-default", "sd15-x2"], ids=["default-precision", "f32"])
def test_two_sets_serve_two_requests_at_once_without_cross_talk(servers: Servers, graph: str) -> None:
    server = servers[graph]
    resources = server.resources(graph)
    assert (resources.concurrency, resources.pool.size) == (2, 2)
    bodies = [{"prompt": "a cat", "rng_seed": seed, "num_inference_steps": 3, "size": size}
              for seed, size in ((1, "64x64"), (2, "32x32"), (3, "64x32"), (4, "32x64"))]
    serial = [images(server.generate(body))[0] for body in bodies]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: images(server.generate(b))[0], bodies))
    for one, other in zip(serial, parallel, strict=True):
        assert np.array_equal(one, other)
    assert resources.pool.available == 2


def test_pool_lends_both_sets_at_once(servers: Servers) -> None:
    resources = servers["sd15-x2"].resources("sd15-x2")
    first = resources.pool.acquire(lambda: False)
    second = resources.pool.acquire(lambda: False)
    try:
        assert first is not second and resources.pool.available == 0
    finally:
        resources.pool.release(first)
        resources.pool.release(second)
    assert resources.pool.available == 2


def open_stream(server: LiveServer, body: dict[str, Any]) -> socket.socket:
    """Send a request on a raw socket (so the test can hang up at will)."""
    host, port = server.url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v3/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_client_disconnect_stops_generation_and_frees_the_set(servers: Servers,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    server = servers["sd15"]
    pool = server.resources("sd15").pool
    assert pool.available == 1
    sock = open_stream(server, {"prompt": "a cat", "num_inference_steps": 1000, "size": "256x256"})
    with caplog.at_level(logging.INFO, logger="calculators.image_gen"):
        try:
            wait_until(lambda: pool.available == 0, "the request to take the pipeline set")
        finally:
            sock.close()
        wait_until(lambda: pool.available == 1, "the cancelled request to give the set back")
    stopped = [r.getMessage() for r in caplog.records if "generation stopped after step" in r.getMessage()]
    assert len(stopped) == 1
    step = int(stopped[0].split("after step ")[1].split(" of ")[0])
    assert step < 1000
    assert len(images(server.generate({"prompt": "a cat", "num_inference_steps": 1}))) == 1


def test_request_waiting_for_a_set_can_be_cancelled(servers: Servers) -> None:
    resources = servers["sd15"].resources("sd15")
    held = resources.pool.acquire(lambda: False)
    cancelled = threading.Event()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            resources.pool.acquire(cancelled.is_set)
        except BaseException as exc:  # recorded for the assertion below
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        cancelled.set()
        waiter.join(timeout=30)
    finally:
        resources.pool.release(held)
    assert [type(e).__name__ for e in outcome] == ["RequestCancelled"]
    assert resources.pool.available == 1


def test_a_graph_default_rng_seed_makes_requests_without_a_seed_repeatable(servers: Servers) -> None:
    server = servers["sd15-seeded"]
    body = {"prompt": "a cat", "size": "32x32"}
    first, second = ok(server.generate(body)), ok(server.generate(body))
    assert first["rng_seed"] == second["rng_seed"] == 99
    assert first["data"] == second["data"]
    own = ok(server.generate({**body, "rng_seed": 100}))
    assert own["rng_seed"] == 100 and own["data"] != first["data"]
