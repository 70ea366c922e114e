"""Fake calculators that isolate the front end from real models.

The in-process tests register them in a per-test Registry; the end-to-end test installs this module
as a plugin through a throwaway distribution on PYTHONPATH, the way a third-party package would.
Calculators never import aiohttp: they only see packets.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import Calculator, CalculatorContext, LoadContext, Port
from ovms_graph.errors import BadRequest, RequestCancelled
from ovms_graph.graph_config import NodeSpec
from ovms_graph.packets import HttpPayload, HttpResponse, ServerSentEvent

REQUEST = Port("HTTP_REQUEST_PAYLOAD", HttpPayload, "the HTTP request")
RESPONSE = Port("HTTP_RESPONSE_PAYLOAD", HttpResponse, "the HTTP response")
EVENTS = Port("HTTP_RESPONSE_PAYLOAD", ServerSentEvent, "server-sent events")
FAKE_PNG = base64.b64encode(b"\x89PNG fake image").decode()


def payload_of(cc: CalculatorContext) -> HttpPayload:
    payload = cc.inputs["HTTP_REQUEST_PAYLOAD"]
    assert isinstance(payload, HttpPayload)
    return payload


class EchoCalculator(Calculator):
    """Answers with what the front end decoded, as JSON."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)

    def process(self, cc: CalculatorContext) -> None:
        p = payload_of(cc)
        mp = p.multipart
        cc.emit("HTTP_RESPONSE_PAYLOAD", HttpResponse.json({
            "uri": p.uri, "method": p.method, "route": p.route, "model": p.model, "json": p.parsed_json,
            "body_size": len(p.body),
            "fields": {k: list(v) for k, v in mp.fields.items()} if mp else None,
            "files": {k: [[f.filename, f.content_type, f.data.decode("latin-1")] for f in v]
                      for k, v in mp.files.items()} if mp else None,
            "authorization_seen": "authorization" in {k.lower() for k in p.headers},
            "client_connected": p.client is not None and not p.client.is_disconnected(),
        }))


class AliasCalculator(EchoCalculator):
    """Registers a listed LoRA alias, a listed composite and an unlisted (FUSE-like) alias."""

    resources_port = "RES"
    input_side_packets = (Port("RES", object, "resources"),)

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        ctx.register_alias("style-a", kind="lora")
        ctx.register_alias("mix", kind="composite")
        ctx.register_alias("fused", kind="lora", listed=False)
        return object()


class HiddenBaseCalculator(EchoCalculator):
    """Hides the graph's own name, as STATIC LoRA does, and registers the only routable alias."""

    resources_port = "RES"
    input_side_packets = (Port("RES", object, "resources"),)

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        ctx.hide_base()
        ctx.register_alias("only-alias", kind="lora")
        return object()


class ClashingAliasCalculator(AliasCalculator):
    """Registers "style-a" too: serving it next to AliasCalculator must fail."""

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        ctx.register_alias("style-a", kind="lora")
        return object()


class OpenAIImageCalculator(Calculator):
    """Answers in OpenAI's images response shape, echoing the prompt as revised_prompt."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)

    def process(self, cc: CalculatorContext) -> None:
        p = payload_of(cc)
        prompt = p.parsed_json.get("prompt") if isinstance(p.parsed_json, dict) else None
        cc.emit("HTTP_RESPONSE_PAYLOAD", HttpResponse.json({
            "created": int(time.time()),
            "data": [{"b64_json": FAKE_PNG, "revised_prompt": f"{p.model}: {prompt}"}]}))


class StreamCalculator(Calculator):
    """Streams two partial images and a completed event."""

    inputs = (REQUEST,)
    outputs = (EVENTS,)

    def process(self, cc: CalculatorContext) -> None:
        for i in range(2):
            cc.emit("HTTP_RESPONSE_PAYLOAD", ServerSentEvent(
                json.dumps({"type": "image_generation.partial_image", "partial_image_index": i}),
                event="image_generation.partial_image"))
        cc.emit("HTTP_RESPONSE_PAYLOAD", ServerSentEvent(
            json.dumps({"type": "image_generation.completed", "b64_json": FAKE_PNG}),
            event="image_generation.completed"))


class StreamThenFailCalculator(Calculator):
    """Streams one event, then fails with an internal error."""

    inputs = (REQUEST,)
    outputs = (EVENTS,)

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("HTTP_RESPONSE_PAYLOAD", ServerSentEvent("first", event="image_generation.partial_image"))
        raise RuntimeError("secret detail: /opt/internal/path")


class BadRequestCalculator(Calculator):
    """Refuses every request as a calculator validating its fields would."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)

    def process(self, cc: CalculatorContext) -> None:
        raise BadRequest("num_inference_steps must be higher than 0", param="num_inference_steps")


class CrashCalculator(Calculator):
    """Fails with an unexpected exception whose message must never reach a client."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)

    def process(self, cc: CalculatorContext) -> None:
        raise RuntimeError("secret detail: /opt/internal/path")


class SilentCalculator(Calculator):
    """Answers nothing at all."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)


class Gate:
    """Shared state of a GateCalculator node: lets a test hold requests and watch them."""

    def __init__(self, concurrency: int | None) -> None:
        self.concurrency = concurrency
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.saw_cancel = threading.Event()
        self.closed = threading.Event()
        self.resources_closed = False

    def close(self) -> None:
        self.resources_closed = True


class GateCalculator(Calculator):
    """Holds each request until the test opens the gate or the request is cancelled.

    ``concurrency`` (1 by default) is what the graph may run at once.
    """

    inputs = (REQUEST,)
    outputs = (RESPONSE,)
    resources_port = "GATE"
    input_side_packets = (Port("GATE", Gate, "the gate"),)
    concurrency: int | None = 1

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        return Gate(cls.concurrency)

    def process(self, cc: CalculatorContext) -> None:
        gate: Gate = cc.side_packets["GATE"]
        gate.started.release()
        while not gate.release.wait(0.01):
            if cc.request.cancelled:
                gate.saw_cancel.set()
                raise RequestCancelled("client went away")
        cc.emit("HTTP_RESPONSE_PAYLOAD", HttpResponse.json({"model": payload_of(cc).model}))

    def close(self, cc: CalculatorContext) -> None:
        gate: Gate = cc.side_packets["GATE"]
        gate.closed.set()


class FileGateCalculator(Calculator):
    """For the end-to-end test (another process): writes ``started_file`` from the request, then
    waits until ``release_file`` exists (at most 60 s) and answers in OpenAI's shape."""

    inputs = (REQUEST,)
    outputs = (RESPONSE,)

    def process(self, cc: CalculatorContext) -> None:
        body = payload_of(cc).parsed_json
        Path(body["started_file"]).write_text("started")
        release = Path(body["release_file"])
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline and not cc.request.cancelled:
            time.sleep(0.02)
        cc.emit("HTTP_RESPONSE_PAYLOAD", HttpResponse.json({
            "created": int(time.time()), "data": [{"b64_json": FAKE_PNG}],
            "released": release.exists()}))


ALL: tuple[type[Calculator], ...] = (
    EchoCalculator, AliasCalculator, HiddenBaseCalculator, ClashingAliasCalculator, OpenAIImageCalculator,
    StreamCalculator, StreamThenFailCalculator, BadRequestCalculator, CrashCalculator, SilentCalculator,
    GateCalculator, FileGateCalculator)


def graph_text(calculator: str, *, side: str | None = None, extra: Iterable[str] = ()) -> str:
    """A one-node serving graph around ``calculator`` (``side``: its resources side packet)."""
    lines = [
        'input_stream: "HTTP_REQUEST_PAYLOAD:input"',
        'output_stream: "HTTP_RESPONSE_PAYLOAD:output"',
        "node {",
        f'  name: "{calculator.lower()}"',
        f'  calculator: "{calculator}"',
        '  input_stream: "HTTP_REQUEST_PAYLOAD:input"',
        '  output_stream: "HTTP_RESPONSE_PAYLOAD:output"',
    ]
    if side:
        lines.append(f'  input_side_packet: "{side}"')
    lines += [*extra, "}"]
    return "\n".join(lines) + "\n"


SIDE_PACKETS = {"AliasCalculator": "RES:res", "HiddenBaseCalculator": "RES:res",
                "ClashingAliasCalculator": "RES:res", "GateCalculator": "GATE:gate"}
