"""docs/http-api.md against a real `ovms-graph serve` on the tiny SD1.5 model.

The server serves the page's own graph options. Every row of the page's error tables is sent as
written and must come back with the documented status, param and message; the routes table must
match the server's route table; the models list, health, streaming and metrics examples must hold.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image
from urllib3 import encode_multipart_formdata

from calculators.image_gen.pipelines import read_model_info
from ovms_graph.server import create_app
from ovms_graph.settings import ServerOptions
from ovms_graph.testing import serving
from tests.docs.conftest import DOCS, REPO, TINY

DOC = (DOCS / "http-api.md").read_text(encoding="utf-8")
REFERENCE_GRAPH = (REPO / "graphs" / "reference" / "graph.pbtxt").read_text(encoding="utf-8")
KEY = "docs-key"
MAX_REQUEST_SIZE = 1 << 20
STARTUP_LIMIT = 180.0  # a safety net against hanging forever, not a performance assertion

JSON_ROW_RE = re.compile(r"^\| `([{\[].*)` \| (\d{3}) \|\s*(?:`(\w+)`)?\s*\| `(.+)` \|$", re.MULTILINE)
FORM_ROW_RE = re.compile(r"^\| ((?:`[\w\[\]]+=[^`]*` ?)+) \| (\d{3}) \|\s*(?:`(\w+)`)?\s*\| `(.+)` \|$", re.MULTILINE)
ROUTE_ROW_RE = re.compile(r"^\| (GET|POST) \| `([^`]+)` \|", re.MULTILINE)


def doc_graph_options() -> str:
    blocks: list[str] = re.findall(r"^```pbtxt\n(.*?)^```", DOC, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def graph_text() -> str:
    body = '          models_path: "./"\n          device: "CPU"\n'
    assert body in REFERENCE_GRAPH
    return REFERENCE_GRAPH.replace(body, "".join(f"          {line}\n" for line in doc_graph_options().splitlines()))


def files(folder: Path) -> dict[str, Path]:
    """The files the edits table uploads, as the page describes them."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (512, 512), (200, 30, 30)).save(folder / "photo.png")
    Image.new("L", (512, 512), 255).save(folder / "mask.png")
    Image.new("RGB", (2048, 1024)).save(folder / "huge.png")
    Image.new("RGB", (4, 4)).save(folder / "icon.png")
    (folder / "notes.txt").write_text("not an image\n")
    return {p.name: p for p in folder.iterdir()}


@dataclass
class Server:
    url: str
    files: dict[str, Path]
    log: Path

    def post_json(self, route: str, body: str, *, key: str | None = KEY) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.post(self.url + route, data=body.encode(), headers=headers, timeout=60)

    def post_form(self, route: str, fields: list[tuple[str, str]]) -> requests.Response:
        """multipart/form-data even without files (requests would fall back to urlencoded)."""
        parts: list[tuple[str, str | tuple[str, bytes]]] = []
        for name, value in fields:
            if value.startswith("@"):
                path = self.files[value[1:]]
                parts.append((name, (path.name, path.read_bytes())))
            else:
                parts.append((name, value))
        body, content_type = encode_multipart_formdata(parts)
        return requests.post(self.url + route, data=body, timeout=60,
                             headers={"Authorization": f"Bearer {KEY}", "Content-Type": content_type})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("http-api")
    model = root / "sd15"
    model.mkdir()
    for item in (TINY / "sd15").iterdir():
        (model / item.name).symlink_to(item)
    (model / "loras").mkdir()
    (model / "loras" / "style.safetensors").symlink_to(TINY / "loras" / "lora_a.safetensors")
    (model / "loras" / "detail.safetensors").symlink_to(TINY / "loras" / "lora_b.safetensors")
    (model / "graph.pbtxt").write_text(graph_text(), encoding="utf-8")
    (root / "config.json").write_text(json.dumps({"model_config_list": [{"config": {"name": "sd15",
                                                                                      "base_path": "sd15"}}]}))
    (root / "key.txt").write_text(KEY + "\n")
    with serving(["--config_path", "config.json", "--rest_port", "0", "--api_key_file", "key.txt",
                  "--max_request_size", str(MAX_REQUEST_SIZE), "--metrics_enable"], cwd=root, log=root / "server.log",
                 env={**os.environ, "PYTHONPATH": str(REPO)}, limit=STARTUP_LIMIT, stop_timeout=60) as served:
        yield Server(served.url, files(root / "files"), root / "server.log")


def test_the_page_names_the_tiny_models_size_step() -> None:
    """The page's size messages show the tiny model's step; its UNet IR must still decide 16."""
    assert read_model_info(TINY / "sd15").size_multiple == 16


def error(response: requests.Response) -> tuple[int, str | None, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return response.status_code, body["error"]["param"], body["error"]["message"]


JSON_ROWS = JSON_ROW_RE.findall(DOC)
FORM_ROWS = FORM_ROW_RE.findall(DOC)


def test_the_page_has_its_tables() -> None:
    assert len(JSON_ROWS) >= 40
    assert len(FORM_ROWS) >= 14


@pytest.mark.parametrize(("body", "status", "param", "message"), JSON_ROWS, ids=[r[0][:60] for r in JSON_ROWS])
def test_generation_errors(server: Server, body: str, status: str, param: str, message: str) -> None:
    response = server.post_json("/v3/images/generations", body)
    assert error(response) == (int(status), param or None, message)


@pytest.mark.parametrize(("fields", "status", "param", "message"), FORM_ROWS, ids=[r[0][:60] for r in FORM_ROWS])
def test_edit_errors(server: Server, fields: str, status: str, param: str, message: str) -> None:
    pairs = [tuple(span.split("=", 1)) for span in re.findall(r"`([^`]+)`", fields)]
    response = server.post_form("/v3/images/edits", [(name, value) for name, value in pairs])
    assert error(response) == (int(status), param or None, message)


@pytest.mark.parametrize(("route", "content_type", "body"), [
    ("/v3/images/generations", "text/plain", b'{"prompt": "a cat"}'),
    ("/v3/images/edits", "application/json", b'{"prompt": "a cat"}'),
])
def test_wrong_content_type(server: Server, route: str, content_type: str, body: bytes) -> None:
    response = requests.post(server.url + route, data=body, timeout=60,
                             headers={"Content-Type": content_type, "Authorization": f"Bearer {KEY}"})
    status, _, message = error(response)
    assert status == 400
    assert f"400\n`{message}`" in DOC or f"400 `{message}`" in DOC.replace("\n", " ")


def test_malformed_multipart_is_400(server: Server) -> None:
    response = requests.post(server.url + "/v3/images/edits", data=b"garbage", timeout=60, headers={
        "Content-Type": "multipart/form-data; boundary=xx", "Authorization": f"Bearer {KEY}"})
    status, _, message = error(response)
    assert status == 400
    assert message.startswith("malformed multipart body: ")


def status_rows() -> dict[int, str]:
    rows = re.findall(r"^\| (\d{3}) \| `?(\w*)`? \| [^|]+ \| (.*) \|$", DOC, re.MULTILINE)
    return {int(status): messages for status, _, messages in rows}


@pytest.mark.parametrize(("status", "request_kwargs"), [
    (401, {"method": "GET", "route": "/v3/models", "headers": {}}),
    (401, {"method": "GET", "route": "/v1/models", "headers": {"Authorization": "Bearer wrong"}}),
    (404, {"method": "POST", "route": "/v3/images/generations", "body": b'{"prompt": "a cat", "model": "sdxl"}'}),
    (405, {"method": "GET", "route": "/v3/images/generations"}),
    (413, {"method": "POST", "route": "/v3/images/generations", "body": b" " * (MAX_REQUEST_SIZE + 1)}),
])
def test_status_code_table(server: Server, status: int, request_kwargs: dict[str, object]) -> None:
    headers = request_kwargs.get("headers", {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = requests.request(str(request_kwargs["method"]), server.url + str(request_kwargs["route"]),
                                data=request_kwargs.get("body"), headers=headers, timeout=60)  # type: ignore[arg-type]
    got, _, message = error(response)
    assert got == status
    documented = status_rows()[status].replace("67108864", str(MAX_REQUEST_SIZE))
    assert f"`{message}`" in documented
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if status == 405:
        assert response.headers["Allow"] == "POST"


def test_routes_table_matches_the_server() -> None:
    documented = set(ROUTE_ROW_RE.findall(DOC))
    aliases = re.search(r"^(`/v1/images/generations`.*) are the same as their", DOC, re.MULTILINE | re.DOTALL)
    assert aliases
    for path in re.findall(r"`(/v1/[^`]+)`", aliases.group(1)):
        method = next(m for m, p in documented if p == path.replace("/v1/", "/v3/", 1))
        documented.add((method, path))
    app = create_app([], ServerOptions(metrics_enable=True))
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and route.resource is not None}
    assert documented == served


def test_models_list_example(server: Server) -> None:
    example = re.search(r"^\$ curl -s http://localhost:8000/v3/models\n(.*)$", DOC, re.MULTILINE)
    assert example
    expected = json.loads(example.group(1))
    got = requests.get(server.url + "/v3/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
    assert [m["id"] for m in got["data"]] == [m["id"] for m in expected["data"]]
    assert {k: v for k, v in got.items() if k != "data"} == {k: v for k, v in expected.items() if k != "data"}
    assert [sorted(m) for m in got["data"]] == [sorted(m) for m in expected["data"]]
    assert {m["owned_by"] for m in got["data"]} == {"ovms-graph"}


@pytest.mark.parametrize("route", re.findall(r"http://localhost:8000(/v2/[^\s]+)\n200", DOC))
def test_health_examples(server: Server, route: str) -> None:
    response = requests.get(server.url + route, timeout=60)
    assert response.status_code == 200
    assert response.content == b""


def test_generation_response_shape(server: Server) -> None:
    response = server.post_json("/v3/images/generations", json.dumps(
        {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1, "n": 2, "rng_seed": 7}))
    assert response.status_code == 200
    body = response.json()
    assert sorted(body) == ["background", "created", "data", "output_format", "quality", "rng_seed", "size"]
    assert (body["rng_seed"], body["size"], body["quality"], body["output_format"], body["background"]) == (
        7, "64x64", "medium", "png", "opaque")
    assert isinstance(body["created"], int)
    assert [sorted(item) for item in body["data"]] == [["b64_json"], ["b64_json"]]
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert (image.format, image.size) == ("PNG", (64, 64))
    assert response.headers["x-request-id"]


def test_streaming_example_shape(server: Server) -> None:
    example = re.search(r"^event: image_generation\.partial_image\n.*?(?=^```)", DOC, re.MULTILINE | re.DOTALL)
    assert example
    documented = [(e, json.loads(d)) for e, d in re.findall(r"^event: (\S+)\ndata: (.*)$", example.group(0),
                                                            re.MULTILINE)]
    response = requests.post(server.url + "/v3/images/generations", stream=True, timeout=60, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, data=json.dumps(
        {"prompt": "a cat", "size": "64x64", "num_inference_steps": 4, "stream": True, "partial_images": 2}))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    got = [(e, json.loads(d)) for e, d in re.findall(r"^event: (\S+)\ndata: (.*)$", response.text, re.MULTILINE)]
    # SPEC §9: between 1 and partial_images partial events (a step the callback thread has not
    # reached when the loop ends is dropped), then exactly one completed event.
    partial, completed = "image_generation.partial_image", "image_generation.completed"
    events = [e for e, _ in got]
    assert events[-1] == completed and events.count(completed) == 1
    assert 1 <= events.count(partial) <= 2 and set(events[:-1]) == {partial}
    assert [e for e, _ in documented] == [partial, partial, completed]
    keys = {e: sorted(d) for e, d in documented}
    assert [sorted(d) for _, d in got] == [keys[e] for e in events]
    assert [d["type"] for _, d in got] == events
    assert [d["partial_image_index"] for _, d in got[:-1]] == list(range(len(got) - 1))


def test_metrics_table_names_what_the_server_exports(server: Server) -> None:
    text = requests.get(server.url + "/metrics", timeout=60).text
    documented = re.findall(r"^\| `(ovms_graph_\w+)` \| (\w+) \|", DOC, re.MULTILINE)
    assert len(documented) == 8
    for name, kind in documented:
        assert f"# TYPE {name} {kind}" in text or f"# TYPE {name.removesuffix('_total')} {kind}" in text, name
        assert re.search(rf"^{name}(_bucket|_count|_sum)?[{{ ]", text, re.MULTILINE), name


def test_without_rng_seed_each_request_draws_one_and_sending_it_back_reproduces(server: Server) -> None:
    def generate(**extra: object) -> tuple[str, int]:
        body = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1, **extra}
        response = server.post_json("/v3/images/generations", json.dumps(body))
        assert response.status_code == 200
        return str(response.json()["data"][0]["b64_json"]), int(response.json()["rng_seed"])

    assert "a fresh random seed" in DOC
    (first, seed1), (second, seed2) = generate(), generate()
    assert seed1 != seed2 and first != second
    assert all(0 <= seed < 2**32 for seed in (seed1, seed2))
    assert generate(rng_seed=seed1) == (first, seed1)
    assert generate(rng_seed=1)[0] != generate(rng_seed=2)[0]
    # Why drawn seeds stop at 2**32: OpenVINO GenAI uses only a seed's low 32 bits.
    assert "low 32 bits" in DOC
    assert generate(rng_seed=seed1 + 2**32)[0] == first


@pytest.mark.parametrize("route", ["/v3/images/generations", "/v3/images/edits"])
def test_user_is_logged_and_echoed(server: Server, route: str) -> None:
    fields = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1, "user": 'docs-user "7"',
              "quality": "standard", "background": "auto", "moderation": "low"}
    if route.endswith("edits"):
        response = server.post_form(route, [*((k, str(v)) for k, v in fields.items()), ("strength", "1.0"),
                                            ("image", "@photo.png")])
    else:
        response = server.post_json(route, json.dumps(fields))
    assert response.status_code == 200, response.text
    assert response.json()["safety_identifier"] == 'docs-user "7"'
    assert response.json()["quality"] == "medium"
    request_id = response.headers["x-request-id"]
    lines = [line for line in server.log.read_text().splitlines() if f"request {request_id} " in line]
    assert len(lines) == 1 and lines[0].endswith(' user="docs-user \\"7\\""'), lines


def sdk_fields(module: object) -> set[str]:
    """The parameters of an SDK request TypedDict module: the base class's, plus ``stream``."""
    base = next(v for k, v in vars(module).items() if k.endswith("ParamsBase"))
    streaming = next(v for k, v in vars(module).items() if k.endswith("ParamsNonStreaming"))
    return set(base.__annotations__) | set(streaming.__annotations__)


def test_compatibility_table_lists_every_sdk_field_and_what_the_server_does() -> None:
    from openai.types import image_edit_params, image_generate_params

    from calculators.image_gen.request import FIELDS, FILE_FIELDS, UNSUPPORTED

    section = DOC[DOC.index("## OpenAI SDK compatibility"):DOC.index("## Status codes")]
    rows = re.findall(r"^\| `(\w+)` \|\s*(yes)?\s*\|\s*(yes)?\s*\| (.+) \|$", section, re.MULTILINE)
    assert len({name for name, *_ in rows}) == len(rows)
    assert {name for name, gen, _, _ in rows if gen} == sdk_fields(image_generate_params)
    assert {name for name, _, edit, _ in rows if edit} == sdk_fields(image_edit_params)
    refused = {name for name, _, _, what in rows if what.startswith("Refused")}
    assert refused == set(UNSUPPORTED)
    assert all(name in FIELDS or name in FILE_FIELDS for name, *_ in rows if name not in refused)
