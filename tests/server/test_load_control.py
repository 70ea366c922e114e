"""Loading, readiness, admission per graph, client disconnects and shutdown, in-process."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf.message import Message

from ovms_graph.calculator import Calculator, LoadContext, Port
from ovms_graph.graph_config import NodeSpec
from ovms_graph.server import METRICS
from ovms_graph.serving import State
from ovms_graph.settings import ServerOptions
from tests.server import fakes
from tests.server.conftest import Served, ServeFactory, fake_registry


async def eventually(condition: Any, what: str) -> None:
    """Wait (bounded by a count of loop turns, not by a clock) until ``condition()`` holds."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def started(gate: fakes.Gate) -> None:
    assert await asyncio.to_thread(gate.started.acquire, True, 10), "the calculator never started"


def metric(s: Served, name: str, **labels: str) -> float | None:
    return s.app[METRICS].registry.get_sample_value(name, labels)


@pytest.mark.parametrize("max_queued", [0, 1, 3])
async def test_full_queue_is_503_at_once_and_other_graphs_keep_serving(serve: ServeFactory, max_queued: int) -> None:
    s = await serve({"gated": "GateCalculator", "echo": "EchoCalculator"},
                    options=ServerOptions(max_queued_requests=max_queued))
    gate: fakes.Gate = s.resources("gated")
    slot = s.serving.slots["gated"]
    assert slot.limit == 1
    running = asyncio.create_task(s.client.post("/v3/images/generations", json={"model": "gated"}))
    await started(gate)
    waiting = [asyncio.create_task(s.client.post("/v3/images/generations", json={"model": "gated"}))
               for _ in range(max_queued)]
    await eventually(lambda: slot.waiting == max_queued, f"{max_queued} requests waiting")
    assert metric(s, "ovms_graph_queue_depth", graph="gated") == max_queued
    assert metric(s, "ovms_graph_in_flight_requests", graph="gated") == 1

    r = await s.client.post("/v3/images/generations", json={"model": "gated"})
    assert r.status == 503
    assert r.headers["Retry-After"] == "1"
    assert await r.json() == {"error": {
        "message": f'model "gated" is busy: 1 request(s) running and {max_queued} waiting, which is the queue '
                   "limit; retry later",
        "type": "service_unavailable", "param": None, "code": "queue_full"}}
    r = await s.client.post("/v3/images/generations", json={"model": "echo"})
    assert r.status == 200, "a busy graph must not hold up another graph"

    gate.release.set()
    for task in [running, *waiting]:
        response = await task
        assert response.status == 200
        assert await response.json() == {"model": "gated"}
    assert (slot.running, slot.waiting) == (0, 0)
    assert metric(s, "ovms_graph_requests_total", graph="gated", route="/v3/images/generations",
                  status="503") == 1
    assert metric(s, "ovms_graph_requests_total", graph="gated", route="/v3/images/generations",
                  status="200") == 1 + max_queued


async def test_client_disconnect_reaches_the_calculator(serve: ServeFactory,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    s = await serve({"gated": "GateCalculator"})
    gate: fakes.Gate = s.resources("gated")
    slot = s.serving.slots["gated"]
    body = b'{"prompt": "a"}'
    _reader, writer = await asyncio.open_connection(s.client.server.host, s.client.server.port)
    writer.write(b"POST /v3/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await started(gate)
    with caplog.at_level(logging.INFO, logger="ovms_graph.access"):
        writer.close()
        assert await asyncio.to_thread(gate.saw_cancel.wait, 10), "the calculator never saw the cancellation"
        assert await asyncio.to_thread(gate.closed.wait, 10), "close() never ran"
        await eventually(lambda: slot.running == 0, "the slot to be released")
        await eventually(lambda: "status=499" in caplog.text, "the request to be logged")
    assert metric(s, "ovms_graph_cancellations_total", graph="gated") == 1
    assert not gate.release.is_set()
    # the graph is usable afterwards
    gate.release.set()
    r = await s.client.post("/v3/images/generations", json={"prompt": "a"})
    assert r.status == 200


def slow_loading(release: threading.Event) -> type[Calculator]:
    class SlowLoadCalculator(fakes.EchoCalculator):
        resources_port = "RES"
        input_side_packets = (Port("RES", object, "resources"),)

        @classmethod
        def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
            release.wait(10)
            return object()

    return SlowLoadCalculator


async def test_not_ready_while_loading(serve: ServeFactory) -> None:
    release = threading.Event()
    try:
        s = await serve({"slow": fakes.graph_text("SlowLoadCalculator", side="RES:res")},
                        registry=fake_registry(slow_loading(release)), wait=False)
        assert (await s.client.get("/v2/health/live")).status == 200
        assert (await s.client.get("/v2/health/ready")).status == 503
        assert (await s.client.get("/v2/models/slow/ready")).status == 503
        for method, path in (("POST", "/v3/images/generations"), ("GET", "/v3/models"), ("GET", "/v3/models/slow")):
            r = await s.client.request(method, path, json={"prompt": "a"})
            assert r.status == 503
            assert r.headers["Retry-After"] == "5"
            assert await r.json() == {"error": {"message": "models are still loading; retry later",
                                                "type": "service_unavailable", "param": None, "code": "loading"}}
    finally:
        release.set()
    assert await s.serving.wait_loaded() is State.READY
    assert (await s.client.get("/v2/health/ready")).status == 200
    assert (await s.client.get("/v2/models/slow/ready")).status == 200
    assert (await s.client.get("/v2/models/other/ready")).status == 404
    assert (await s.client.post("/v3/images/generations", json={"prompt": "a"})).status == 200


@pytest.mark.parametrize(("graphs", "problems"), [
    ({"a": "AliasCalculator", "b": "ClashingAliasCalculator"},
     ['{dir}/graph1/graph.pbtxt: alias "style-a" of graph "b" is registered also by graph "a"; aliases must be '
      "unique across every graph served together"]),
    ({"a": "AliasCalculator", "style-a": "EchoCalculator"},
     ['{dir}/graph0/graph.pbtxt: alias "style-a" of graph "a" is also the name of graph "style-a"; aliases '
      "must differ from graph names"]),
    ({"a": fakes.graph_text("EchoCalculator").replace('input_stream: "HTTP_REQUEST_PAYLOAD:input"\noutput',
                                                       'input_stream: "REQUEST:input"\noutput')},
     ['{dir}/graph0/graph.pbtxt: graph "a" has no input_stream tagged HTTP_REQUEST_PAYLOAD; the server feeds '
      'each request to "HTTP_REQUEST_PAYLOAD:..." and answers with "HTTP_RESPONSE_PAYLOAD:..."']),
])
async def test_graphs_that_cannot_be_served_together_fail_loading(
        serve: ServeFactory, tmp_path: Path, graphs: dict[str, str], problems: list[str]) -> None:
    s = await serve(graphs)
    assert s.serving.state is State.FAILED
    assert s.serving.error is not None
    assert [str(p) for p in s.serving.error.problems] == [p.format(dir=tmp_path) for p in problems]
    assert (await s.client.get("/v2/health/live")).status == 200
    assert (await s.client.get("/v2/health/ready")).status == 503
    r = await s.client.post("/v3/images/generations", json={"prompt": "a"})
    assert r.status == 503
    assert (await r.json())["error"]["message"] == "the models failed to load; see the server log"


async def test_shutdown_refuses_new_requests_and_drains_running_ones(serve: ServeFactory) -> None:
    s = await serve({"gated": "GateCalculator"})
    gate: fakes.Gate = s.resources("gated")
    running = asyncio.create_task(s.client.post("/v3/images/generations", json={"prompt": "a"}))
    await started(gate)
    closing = asyncio.create_task(s.client.server.close())
    await eventually(lambda: s.serving.state is State.STOPPING, "shutdown to begin")
    assert not gate.resources_closed
    gate.release.set()
    r = await running
    assert r.status == 200
    await closing
    assert gate.resources_closed, "Graph.close() must run after the drain"


async def test_readiness_turns_false_and_requests_get_503_when_shutting_down(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    assert (await s.client.get("/v2/health/ready")).status == 200
    s.serving.begin_shutdown()
    assert (await s.client.get("/v2/health/ready")).status == 503
    assert (await s.client.get("/v2/models/echo/ready")).status == 503
    assert (await s.client.get("/v2/health/live")).status == 200
    r = await s.client.post("/v3/images/generations", json={"prompt": "a"})
    assert r.status == 503
    assert r.headers["Retry-After"] == "5"
    assert (await r.json())["error"]["message"] == "the server is shutting down"


async def test_default_concurrency_applies_when_no_calculator_limits_it(serve: ServeFactory) -> None:
    s = await serve({"echo": "EchoCalculator"})
    assert s.serving.slots["echo"].limit == 4


async def test_an_unexpected_loading_failure_is_reported_not_hung(serve: ServeFactory) -> None:
    def broken_registry() -> Any:
        raise RuntimeError("plugin table is corrupt")

    s = await serve({"echo": "EchoCalculator"}, registry=None, wait=False, registry_factory=broken_registry)
    assert await s.serving.wait_loaded() is State.FAILED
    assert s.serving.internal_error
    assert str(s.serving.error) == "loading the graphs failed: RuntimeError: plugin table is corrupt"
    assert (await s.client.get("/v2/health/ready")).status == 503


async def test_requests_still_running_at_the_shutdown_timeout_are_cancelled(serve: ServeFactory) -> None:
    s = await serve({"gated": "GateCalculator"}, options=ServerOptions(shutdown_timeout=0.2),
                    runner_shutdown_timeout=0.2)
    gate: fakes.Gate = s.resources("gated")
    running = asyncio.create_task(s.client.post("/v3/images/generations", json={"prompt": "a"}))
    await started(gate)
    await s.client.server.close()
    assert gate.saw_cancel.is_set(), "the calculator must be told to stop"
    assert gate.resources_closed, "the graph is closed once its cancelled run has ended"
    with pytest.raises(aiohttp.ClientError):
        await running
