"""Requests in, responses out: decoding, strict JSON, multipart, SSE framing and error statuses."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from ovms_graph.settings import ServerOptions
from tests.server.conftest import ServeFactory


async def test_generation_request_becomes_a_payload_and_the_response_is_passed_through(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    body = b'{"model": "echo", "prompt": "a cat", "n": 2}'
    r = await s.client.post("/v3/images/generations?x=1", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200
    assert r.content_type == "application/json"
    assert len(r.headers["x-request-id"]) == 16
    assert await r.json() == {
        "uri": "/v3/images/generations?x=1", "method": "POST", "route": "images/generations", "model": "echo",
        "json": {"model": "echo", "prompt": "a cat", "n": 2}, "body_size": len(body), "fields": None, "files": None,
        "authorization_seen": False, "client_connected": True}


async def test_v1_aliases_reach_the_same_routes(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    r = await s.client.post("/v1/images/generations", json={"prompt": "a"})
    assert (r.status, (await r.json())["route"]) == (200, "images/generations")
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("prompt", "a")
    r = await s.client.post("/v1/images/edits", data=form)
    assert (r.status, (await r.json())["route"]) == (200, "images/edits")


async def test_edit_request_is_parsed_with_fields_and_files(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator", "other": "EchoCalculator"})
    form = aiohttp.FormData()
    form.add_field("model", "echo")
    form.add_field("prompt", "make it blue")
    form.add_field("prompt_2", "zürich")
    form.add_field("image", b"\x89PNGdata", filename="in.png", content_type="image/png")
    form.add_field("mask", b"maskbytes", filename="mask.png", content_type="image/png")
    r = await s.client.post("/v3/images/edits", data=form)
    assert r.status == 200
    got = await r.json()
    assert got["model"] == "echo"
    assert got["route"] == "images/edits"
    assert got["json"] is None
    assert got["fields"] == {"model": ["echo"], "prompt": ["make it blue"], "prompt_2": ["zürich"]}
    assert got["files"] == {"image": [["in.png", "image/png", "\x89PNGdata"]],
                            "mask": [["mask.png", "image/png", "maskbytes"]]}
    assert got["body_size"] > 0


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MP = "multipart/form-data; boundary=XyZ"

BAD_REQUESTS = [
    # (route, content type, body, param, message)
    ("generations", "application/json", b"", None, "request body is empty; expected a JSON object"),
    ("generations", "application/json", b"{", None,
     "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("generations", "application/json", b'{"prompt": "a",}', None,
     "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 16"),
    ("generations", "application/json", b'[{"prompt": "a"}]', None, "JSON body must be an object, got array"),
    ("generations", "application/json", b'"a cat"', None, "JSON body must be an object, got string"),
    ("generations", "application/json", b"null", None, "JSON body must be an object, got null"),
    ("generations", "application/json", b'{"guidance_scale": NaN}', None,
     "malformed JSON: NaN is not allowed (numbers must be finite)"),
    ("generations", "application/json", b'{"guidance_scale": Infinity}', None,
     "malformed JSON: Infinity is not allowed (numbers must be finite)"),
    ("generations", "application/json", b'{"guidance_scale": -Infinity}', None,
     "malformed JSON: -Infinity is not allowed (numbers must be finite)"),
    ("generations", "application/json", b'{"guidance_scale": 1e999}', None,
     "malformed JSON: number 1e999 is out of range"),
    ("generations", "application/json", b'{"prompt": "a", "prompt": "b"}', None,
     'malformed JSON: duplicate key "prompt"'),
    ("generations", "application/json", b'{"prompt": "\xff"}', None,
     "malformed JSON: the body is not valid UTF-8"),
    ("generations", "application/json", b"[" * 100000 + b"]" * 100000, None, "malformed JSON: nested too deeply"),
    ("generations", "application/json", b'{"model": 7}', "model", "model must be a string, got number"),
    ("generations", "application/json", b'{"model": false}', "model", "model must be a string, got boolean"),
    ("generations", "application/json", b'{"model": {"id": "echo"}}', "model", "model must be a string, got object"),
    ("generations", "application/json", b'{"model": ["echo"]}', "model", "model must be a string, got array"),
    ("generations", "application/json", b'{"model": ""}', "model", "model must not be empty"),
    ("generations", "text/plain", b'{"prompt": "a"}', None,
     "/v3/images/generations expects Content-Type: application/json, got text/plain"),
    ("generations", None, b'{"prompt": "a"}', None,
     "/v3/images/generations expects Content-Type: application/json, got none"),
    ("generations", MP, _multipart([("prompt", None, b"a")]), None,
     "/v3/images/generations expects Content-Type: application/json, got multipart/form-data; boundary=XyZ"),
    ("edits", "application/json", b'{"prompt": "a"}', None,
     "/v3/images/edits expects Content-Type: multipart/form-data, got application/json"),
    ("edits", "multipart/form-data", b"--XyZ--\r\n", None,
     "multipart/form-data needs a boundary parameter in its Content-Type header"),
    ("edits", MP, b"no boundary anywhere", None,
     "malformed multipart body: Could not find starting boundary b'--XyZ'"),
    ("edits", MP, b'--XyZ\r\nContent-Disposition: form-data\r\n\r\na\r\n--XyZ--\r\n', None,
     "a multipart part has no name (Content-Disposition: form-data; name=...)"),
    ("edits", MP, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello', None,
     "malformed multipart body: it ends without the closing boundary"),
    ("edits", MP, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--XyZ', None,
     "malformed multipart body: it ends without the closing boundary"),
    ("edits", MP, b"--XyZ\r\nX-Long: " + b"a" * 10000 + b"\r\n\r\nx\r\n--XyZ--\r\n", None,
     "malformed multipart body: got more than 8190 bytes when reading"),
    ("edits", MP, b"--XyZ\r\nContent-Type: multipart/mixed; boundary=in\r\n"
     b'Content-Disposition: form-data; name="a"\r\n\r\n--in\r\n\r\nx\r\n--in--\r\n--XyZ--\r\n', None,
     "nested multipart bodies are not supported"),
    ("edits", "application/x-www-form-urlencoded", b"prompt=a", None,
     "/v3/images/edits expects Content-Type: multipart/form-data, got application/x-www-form-urlencoded"),
    ("edits", MP, _multipart([("model", None, b"echo"), ("model", None, b"echo")]), "model",
     "model is given more than once"),
    ("edits", MP, _multipart([("model", "m.txt", b"echo")]), "model", "model must be a text field, not a file"),
    ("edits", MP, _multipart([("model", None, b"")]), "model", "model must not be empty"),
    ("edits", MP, _multipart([("prompt", None, b"\xff\xfe")]), "prompt",
     "multipart field prompt is not valid utf-8 text"),
]


@pytest.mark.parametrize(("route", "content_type", "body", "param", "message"), BAD_REQUESTS)
async def test_malformed_requests_get_400_with_a_clear_message(
        serve: ServeFactory, route: str, content_type: str | None, body: bytes, param: str | None,
        message: str) -> None:
    s = await serve({"echo": "EchoCalculator"})
    headers = {"Content-Type": content_type} if content_type else {}
    r = await s.client.post(f"/v3/images/{route}", data=body, headers=headers,
                            skip_auto_headers=() if content_type else ("Content-Type",))
    assert r.status == 400
    assert await r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": None}}


async def test_calculator_bad_request_is_a_400_with_its_param(serve: ServeFactory) -> None:
    s = await serve({"bad": "BadRequestCalculator"})
    r = await s.client.post("/v3/images/generations", json={"prompt": "a", "num_inference_steps": 0})
    assert r.status == 400
    assert await r.json() == {"error": {"message": "num_inference_steps must be higher than 0",
                                        "type": "invalid_request_error", "param": "num_inference_steps",
                                        "code": None}}


async def test_calculator_crash_is_a_generic_500_and_the_traceback_stays_in_the_log(
        serve: ServeFactory, caplog: pytest.LogCaptureFixture) -> None:
    s = await serve({"crash": "CrashCalculator"})
    with caplog.at_level(logging.ERROR):
        r = await s.client.post("/v3/images/generations", json={"prompt": "a"})
    assert r.status == 500
    request_id = r.headers["x-request-id"]
    text = await r.text()
    assert "secret" not in text and "Traceback" not in text
    assert await r.json() == {"error": {
        "message": f"image generation failed (request {request_id}); see the server log",
        "type": "server_error", "param": None, "code": None}}
    assert "secret detail: /opt/internal/path" in caplog.text
    assert "Traceback" in caplog.text


async def test_graph_without_an_answer_is_a_500(serve: ServeFactory) -> None:
    s = await serve({"silent": "SilentCalculator"})
    r = await s.client.post("/v3/images/generations", json={"prompt": "a"})
    assert r.status == 500
    assert (await r.json())["error"]["message"] == (
        f"the model produced no response (request {r.headers['x-request-id']})")


async def test_server_sent_events_are_streamed_in_order(serve: ServeFactory) -> None:
    s = await serve({"stream": "StreamCalculator"})
    r = await s.client.post("/v3/images/generations", json={"prompt": "a", "stream": True})
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    assert len(r.headers["x-request-id"]) == 16
    assert await r.text() == (
        "event: image_generation.partial_image\n"
        'data: {"type": "image_generation.partial_image", "partial_image_index": 0}\n\n'
        "event: image_generation.partial_image\n"
        'data: {"type": "image_generation.partial_image", "partial_image_index": 1}\n\n'
        "event: image_generation.completed\n"
        f'data: {{"type": "image_generation.completed", "b64_json": "{fakes_png()}"}}\n\n')


def fakes_png() -> str:
    from tests.server.fakes import FAKE_PNG
    return FAKE_PNG


async def test_failure_after_streaming_began_ends_the_stream_with_an_error_event(serve: ServeFactory) -> None:
    s = await serve({"stream": "StreamThenFailCalculator"})
    r = await s.client.post("/v3/images/generations", json={"prompt": "a", "stream": True})
    assert r.status == 200
    request_id = r.headers["x-request-id"]
    assert await r.text() == (
        "event: image_generation.partial_image\ndata: first\n\n"
        "event: error\n"
        f'data: {{"error": {{"message": "image generation failed (request {request_id}); see the server log", '
        '"type": "server_error", "param": null, "code": null}}\n\n')


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("GET", "/v3/nothing", 404, "no route for GET /v3/nothing"),
    ("POST", "/v2/health/live", 405, "method POST is not allowed for /v2/health/live (allowed: GET,HEAD)"),
    ("GET", "/v3/images/generations", 405, "method GET is not allowed for /v3/images/generations (allowed: POST)"),
    ("DELETE", "/v1/models", 405, "method DELETE is not allowed for /v1/models (allowed: GET,HEAD)"),
])
async def test_unknown_routes_and_methods_get_openai_shaped_errors(
        serve: ServeFactory, method: str, path: str, status: int, message: str) -> None:
    s = await serve({"echo": "EchoCalculator"})
    r = await s.client.request(method, path)
    assert r.status == status
    assert (await r.json())["error"]["message"] == message


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_max_request_size_is_413(serve: ServeFactory, chunked: bool) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(max_request_size=1000))
    body = b'{"prompt": "' + b"a" * 2000 + b'"}'

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    r = await s.client.post("/v3/images/generations", data=chunks() if chunked else body,
                            headers={"Content-Type": "application/json"})
    assert r.status == 413
    assert await r.json() == {"error": {
        "message": "request body is larger than the limit of 1000 bytes (--max_request_size)",
        "type": "invalid_request_error", "param": None, "code": None}}


async def test_body_of_exactly_max_request_size_is_accepted(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(max_request_size=1000))
    body = b'{"prompt": "' + b"a" * (1000 - 14) + b'"}'
    assert len(body) == 1000
    r = await s.client.post("/v3/images/generations", data=body, headers={"Content-Type": "application/json"})
    assert r.status == 200


async def test_expect_continue_refuses_an_announced_oversize_body_before_it_is_sent(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(max_request_size=1000))
    reader, writer = await asyncio.open_connection(s.client.server.host, s.client.server.port)
    head = ("POST /v3/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Expect: 100-continue\r\nContent-Length: {}\r\n\r\n")
    writer.write(head.format(10**9).encode())
    assert await reader.readline() == b"HTTP/1.1 413 Request Entity Too Large\r\n"
    writer.close()

    reader, writer = await asyncio.open_connection(s.client.server.host, s.client.server.port)
    body = b'{"prompt": "a"}'
    writer.write(head.format(len(body)).encode())
    assert await reader.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert await reader.readline() == b"\r\n"
    writer.write(body)
    assert await reader.readline() == b"HTTP/1.1 200 OK\r\n"
    writer.close()


async def test_large_json_bodies_are_parsed_too(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    prompt = "a" * 400_000
    r = await s.client.post("/v3/images/generations", json={"prompt": prompt})
    assert r.status == 200
    assert (await r.json())["json"] == {"prompt": prompt}
    r = await s.client.post("/v3/images/generations", data=b'{"prompt": "' + b"a" * 400_000 + b'", NaN}',
                            headers={"Content-Type": "application/json"})
    assert r.status == 400
    assert (await r.json())["error"]["message"] == (
        "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 400016")
