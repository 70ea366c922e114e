"""The one JSON parse of a request body (``HttpPayload.parsed_json``).

Strict, as OpenAI-style clients are held to: NaN, Infinity and numbers out of float range are
refused, and so are duplicate keys (another parser could pick the other value). The front end
parses every JSON body with :func:`parse_json_object` before the graph runs; the calculator runner
in :mod:`ovms_graph.testing` and calculators given a payload without ``parsed_json`` use it too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ovms_graph.errors import BadRequest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f'duplicate key "{key}"')
        obj[key] = value
    return obj


def loads_strict(text: str | bytes) -> Any:
    """``text`` parsed as JSON with the request rules (no NaN or Infinity, floats in range, no
    duplicate keys); raises ValueError (json.JSONDecodeError for malformed text)."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; 400 for malformed JSON, NaN/Infinity, duplicate keys or non-objects."""
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        value = loads_strict(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise BadRequest("malformed JSON: the body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"JSON body must be an object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value (null, boolean, number, string, array, object)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
