"""API key protection of /v3 and /v1, open health routes, and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms_graph.errors import ConfigError
from ovms_graph.server import create_app
from ovms_graph.settings import ServerOptions
from tests.server.conftest import ServeFactory

KEY = "s3cret-key"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_key.txt"
    path.write_text(f"  \n{KEY}\t\n")
    return path


@pytest.mark.parametrize(("authorization", "message"), [
    (None, "missing API key: send the header Authorization: Bearer <key>"),
    ("Bearer wrong", "invalid API key"),
    (f"Bearer {KEY}x", "invalid API key"),
    (f"Basic {KEY}", "invalid API key"),
    (KEY, "invalid API key"),
    ("Bearer ", "invalid API key"),
])
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v3/images/generations"), ("POST", "/v1/images/generations"), ("POST", "/v3/images/edits"),
    ("GET", "/v3/models"), ("GET", "/v1/models"), ("GET", "/v3/models/echo"), ("GET", "/v3/unknown"),
])
async def test_api_routes_need_the_key(serve: ServeFactory, key_file: Path, authorization: str | None,
                                       message: str, method: str, path: str) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(api_key_file=key_file))
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = await s.client.request(method, path, json={"prompt": "a"}, headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert await r.json() == {"error": {"message": message, "type": "authentication_error", "param": None,
                                        "code": None}}


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_the_key_opens_the_api_and_never_reaches_the_graph(serve: ServeFactory, key_file: Path,
                                                                 scheme: str) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(api_key_file=key_file))
    auth = {"Authorization": f"{scheme} {KEY}"}
    r = await s.client.post("/v3/images/generations", json={"prompt": "a"}, headers=auth)
    assert r.status == 200
    assert (await r.json())["authorization_seen"] is False
    assert (await s.client.get("/v3/models", headers=auth)).status == 200
    assert (await s.client.get("/v1/models/echo", headers=auth)).status == 200


async def test_health_and_metrics_stay_open(serve: ServeFactory, key_file: Path) -> None:
    s = await serve({"echo": "EchoCalculator"}, options=ServerOptions(api_key_file=key_file, metrics_enable=True))
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/echo/ready", "/metrics"):
        assert (await s.client.get(path)).status == 200, path


@pytest.mark.parametrize(("content", "message"), [
    (None, "{file}: --api_key_file: cannot read the API key file: No such file or directory"),
    ("  \n\t", "{file}: --api_key_file: the API key file is empty"),
    (b"\xff\xfe\xfa", "{file}: --api_key_file: cannot read the API key file: "
                      "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_unusable_key_file_is_a_config_error(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "key"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        create_app([], ServerOptions(api_key_file=path))
    assert str(info.value) == message.format(file=path)


async def test_metrics_are_off_by_default(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    r = await s.client.get("/metrics")
    assert r.status == 404
    assert (await r.json())["error"]["message"] == "no route for GET /metrics"


async def test_metrics_count_requests_by_graph_route_and_status(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator", "bad": "BadRequestCalculator"},
                    options=ServerOptions(metrics_enable=True))
    for model in ("echo", "echo", "bad", "nope"):
        await s.client.post("/v3/images/generations", json={"model": model})
    await s.client.post("/v1/images/generations", json={"model": "echo"})
    r = await s.client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    lines = set((await r.text()).splitlines())
    expected = {
        'ovms_graph_requests_total{graph="echo",route="/v3/images/generations",status="200"} 2.0',
        'ovms_graph_requests_total{graph="echo",route="/v1/images/generations",status="200"} 1.0',
        'ovms_graph_requests_total{graph="bad",route="/v3/images/generations",status="400"} 1.0',
        'ovms_graph_requests_total{graph="",route="/v3/images/generations",status="404"} 1.0',
        'ovms_graph_request_duration_seconds_count{graph="echo",route="/v3/images/generations"} 2.0',
        'ovms_graph_queue_depth{graph="echo"} 0.0',
        'ovms_graph_in_flight_requests{graph="echo"} 0.0',
        'ovms_graph_cancellations_total{graph="echo"} 0.0',
        "ovms_graph_ready 1.0",
    }
    assert expected <= lines, sorted(expected - lines)
