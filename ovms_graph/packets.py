"""Values that travel on the serving streams: requests in, responses and events out.

``HttpPayload`` mirrors OVMS's ``struct HttpPayload``: the front end builds one per request and
puts it on the graph's ``HTTP_REQUEST_PAYLOAD`` input. A calculator answers with one
``HttpResponse`` on ``HTTP_RESPONSE_PAYLOAD``, or with a sequence of ``ServerSentEvent`` packets that
the front end streams. Calculators never see aiohttp objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class ClientConnection(Protocol):
    """Whether the client that sent a request is still there."""

    def is_disconnected(self) -> bool: ...


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class MultipartView:
    """The parts of a multipart/form-data body, by field name, in arrival order."""

    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    files: Mapping[str, tuple[UploadedFile, ...]] = field(default_factory=dict)

    def field_names(self) -> list[str]:
        """Every part name, text and file, in first-seen order."""
        return list(dict.fromkeys([*self.fields, *self.files]))


@dataclass(frozen=True)
class HttpPayload:
    """One HTTP request as a packet.

    ``model`` is the routable name the front end matched (a graph name or an alias a calculator
    registered at load); ``route`` is the API route without its version prefix, e.g.
    ``images/generations``. ``parsed_json`` is the body of a JSON request as the one JSON parse,
    :func:`ovms_graph.json_body.parse_json_object`, returned it (NaN, infinities and duplicate keys
    refused); calculators read it instead of parsing ``body`` again. ``multipart`` is set instead
    for multipart/form-data requests.
    """

    uri: str
    method: str
    headers: Mapping[str, str]
    body: bytes
    route: str
    model: str
    parsed_json: Any = None
    multipart: MultipartView | None = None
    client: ClientConnection | None = None


@dataclass(frozen=True)
class HttpResponse:
    """A complete (non-streamed) HTTP response from a graph."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200

    @staticmethod
    def json(value: object, status: int = 200) -> HttpResponse:
        """A JSON response (compact separators; the bodies can be megabytes of base64)."""
        return HttpResponse(json.dumps(value, separators=(",", ":")).encode(), status=status)


@dataclass(frozen=True)
class ServerSentEvent:
    """One Server-Sent Event; a graph that emits these gets a text/event-stream response."""

    data: str
    event: str | None = None

    def encode(self) -> bytes:
        lines = [f"event: {self.event}"] if self.event else []
        lines += [f"data: {line}" for line in self.data.split("\n")]
        return ("\n".join(lines) + "\n\n").encode()
