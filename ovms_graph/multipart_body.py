"""The multipart/form-data parse of an edits request body (``HttpPayload.multipart``).

Guarantees: every malformed body is a 400 :class:`~ovms_graph.errors.BadRequest` naming what is wrong
(never an aiohttp exception or a traceback); parts are read as raw bytes, so a small part cannot
inflate into a large one through Content-Encoding.
"""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BodyPartReader, MultipartReader
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

from ovms_graph.errors import BadRequest, RequestError
from ovms_graph.packets import MultipartView, UploadedFile


async def parse_multipart(headers: CIMultiDictProxy[str], body: bytes) -> MultipartView:
    """The fields and files of a multipart/form-data ``body``; 400 naming what is malformed."""
    if "boundary=" not in headers.get("Content-Type", ""):
        raise BadRequest("multipart/form-data needs a boundary parameter in its Content-Type header")
    content = _stream_of(body)
    fields: dict[str, list[str]] = {}
    files: dict[str, list[UploadedFile]] = {}
    try:
        reader = MultipartReader(headers, content)
        while (found := await reader.next()) is not None:
            name, part = _form_part(found, content)
            # Raw bytes: no Content-Encoding decoding, so a small part cannot inflate into a huge one.
            data = bytes(await part.read())
            if part.filename is not None:
                files.setdefault(name, []).append(UploadedFile(
                    name, part.filename, part.headers.get("Content-Type"), data))
            else:
                fields.setdefault(name, []).append(_text(name, data, part.get_charset(default="utf-8")))
    except RequestError:
        raise
    except Exception as exc:  # aiohttp reports malformed multipart with assorted exception types
        raise _malformed(exc) from None
    return MultipartView(fields={k: tuple(v) for k, v in fields.items()},
                         files={k: tuple(v) for k, v in files.items()})


def _stream_of(body: bytes) -> StreamReader:
    """``body`` as the finished stream aiohttp's reader reads from."""
    protocol = BaseProtocol(asyncio.get_running_loop())
    content = StreamReader(protocol, limit=max(len(body), 2**16), loop=asyncio.get_running_loop())
    content.feed_data(body)
    content.feed_eof()
    return content


def _form_part(part: BodyPartReader | MultipartReader, content: StreamReader) -> tuple[str, BodyPartReader]:
    """The name and the part, when it is a named, non-nested part before the closing boundary; 400 otherwise."""
    if not isinstance(part, BodyPartReader):
        raise BadRequest("nested multipart bodies are not supported")
    if not part.headers and content.at_eof():
        raise BadRequest("malformed multipart body: it ends without the closing boundary")
    name = part.name
    if not name:
        raise BadRequest("a multipart part has no name (Content-Disposition: form-data; name=...)")
    return name, part


def _text(name: str, data: bytes, charset: str) -> str:
    """A text field's value; 400 naming the field when it is not ``charset`` text."""
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        raise BadRequest(f"multipart field {name} is not valid {charset} text", param=name) from None


def _malformed(exc: Exception) -> BadRequest:
    """The 400 for an exception aiohttp raised on a malformed body, without quoting the body."""
    if isinstance(exc, HttpProcessingError):  # e.g. an overlong header line; its message quotes the data
        return BadRequest(f"malformed multipart body: {exc.message.split(':')[0].strip().lower()}")
    reason = "it ends without the closing boundary" if str(exc) == "Reading after EOF" else str(exc)
    return BadRequest(f"malformed multipart body: {reason}")


def multipart_model(view: MultipartView) -> str | None:
    """The ``model`` text field of an edits body (None when absent); 400 when it is a file, repeated or empty."""
    if "model" in view.files:
        raise BadRequest("model must be a text field, not a file", param="model")
    values = view.fields.get("model")
    if values is None:
        return None
    if len(values) > 1:
        raise BadRequest("model is given more than once", param="model")
    if not values[0]:
        raise BadRequest("model must not be empty", param="model")
    return values[0]
