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
    protocol = BaseProtocol(asyncio.get_running_loop())
    content = StreamReader(protocol, limit=max(len(body), 2**16), loop=asyncio.get_running_loop())
    content.feed_data(body)
    content.feed_eof()
    fields: dict[str, list[str]] = {}
    files: dict[str, list[UploadedFile]] = {}
    try:
        reader = MultipartReader(headers, content)
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not supported")
            if not part.headers and content.at_eof():
                raise BadRequest("malformed multipart body: it ends without the closing boundary")
            name = part.name
            if not name:
                raise BadRequest("a multipart part has no name (Content-Disposition: form-data; name=...)")
            # Raw bytes: no Content-Encoding decoding, so a small part cannot inflate into a huge one.
            data = bytes(await part.read())
            if part.filename is not None:
                files.setdefault(name, []).append(UploadedFile(
                    name, part.filename, part.headers.get("Content-Type"), data))
                continue
            charset = part.get_charset(default="utf-8")
            try:
                fields.setdefault(name, []).append(data.decode(charset))
            except (UnicodeDecodeError, LookupError):
                raise BadRequest(f"multipart field {name} is not valid {charset} text", param=name) from None
    except RequestError:
        raise
    except HttpProcessingError as exc:  # e.g. an overlong header line; its message quotes the data
        reason = exc.message.split(":")[0].strip().lower()
        raise BadRequest(f"malformed multipart body: {reason}") from None
    except Exception as exc:  # aiohttp reports malformed multipart with assorted exception types
        reason = "it ends without the closing boundary" if str(exc) == "Reading after EOF" else str(exc)
        raise BadRequest(f"malformed multipart body: {reason}") from None
    return MultipartView(fields={k: tuple(v) for k, v in fields.items()},
                         files={k: tuple(v) for k, v in files.items()})


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
