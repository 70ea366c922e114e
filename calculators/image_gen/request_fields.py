"""The fields an image request may carry, with their JSON types, and strict typing of their values.

Every field is checked for its type before anything else: JSON floats are numbers, never booleans,
NaN or infinities; JSON integers are integers only; multipart text is parsed with the same
strictness. Unknown fields and OpenAI fields these models cannot honour are refused by name.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ovms_graph.errors import BadRequest
from ovms_graph.json_body import loads_strict
from ovms_graph.packets import MultipartView

TEXT_FIELDS = ("prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")


class Kind(enum.Enum):
    """The JSON type a request field must have."""

    STRING = "a string"
    INTEGER = "an integer"
    NUMBER = "a number"
    BOOLEAN = "a boolean"
    ANY = "any JSON value"


#: Every non-file field a request may carry, with its type (SPEC §5).
FIELDS: Mapping[str, Kind] = {
    "model": Kind.STRING,
    "prompt": Kind.STRING,
    **{name: Kind.STRING for name in TEXT_FIELDS},
    "size": Kind.STRING,
    "width": Kind.INTEGER,
    "height": Kind.INTEGER,
    "n": Kind.INTEGER,
    "num_images_per_prompt": Kind.INTEGER,
    "num_inference_steps": Kind.INTEGER,
    "guidance_scale": Kind.NUMBER,
    "rng_seed": Kind.INTEGER,
    "strength": Kind.NUMBER,
    "max_sequence_length": Kind.INTEGER,
    "response_format": Kind.STRING,
    "output_format": Kind.STRING,
    "output_compression": Kind.INTEGER,
    "stream": Kind.BOOLEAN,
    "partial_images": Kind.INTEGER,
    "lora_alphas": Kind.ANY,
    "user": Kind.STRING,
    "safety_identifier": Kind.STRING,
    "quality": Kind.STRING,
    "background": Kind.STRING,
    "moderation": Kind.STRING,
}
#: File fields of images/edits.
FILE_FIELDS = ("image", "image[]", "mask")

#: Fields of the OpenAI images API (openai SDK ``image_generate_params`` / ``image_edit_params``)
#: that these models cannot honour, with the reason a client reads.
UNSUPPORTED: Mapping[str, str] = {
    "style": "describe the style in the prompt",
    "input_fidelity": "image-to-image follows the input as far as strength says; use strength",
    "complexity": "these models have no planning stage; use quality or num_inference_steps",
    "frame_count": "this server draws still images (png, jpeg, webp)",
    "frame_duration_ms": "this server draws still images (png, jpeg, webp)",
    "svg": "this server draws raster images (png, jpeg, webp)",
    "markup": "edits take an image and an optional mask",
}

_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_TEXT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


@dataclass(frozen=True)
class RawField:
    """A field as received: a JSON value, or the text of a multipart part."""

    name: str
    value: object
    from_text: bool


def _shown(raw: RawField) -> str:
    if raw.from_text:
        text = str(raw.value)
        return json.dumps(text if len(text) <= 40 else text[:40] + "...")
    value = raw.value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _type_error(raw: RawField, kind: Kind) -> BadRequest:
    return BadRequest(f"{raw.name} must be {kind.value}, got {_shown(raw)}", param=raw.name)


def _as_str(raw: RawField) -> str:
    if isinstance(raw.value, str):
        return raw.value
    raise _type_error(raw, Kind.STRING)


def _as_int(raw: RawField) -> int:
    value = raw.value
    if raw.from_text:
        text = str(value).strip()
        if _INT_TEXT.match(text):
            try:
                return int(text)
            except ValueError:  # more digits than Python converts (4300)
                raise BadRequest(f"{raw.name} is out of range ({len(text)} characters)", param=raw.name) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _type_error(raw, Kind.INTEGER)


def _as_float(raw: RawField) -> float:
    value = raw.value
    if raw.from_text:
        text = str(value).strip()
        if _FLOAT_TEXT.match(text):
            number = float(text)
            if math.isfinite(number):
                return number
        raise _type_error(raw, Kind.NUMBER)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
        raise BadRequest(f"{raw.name} must be a finite number, got {_shown(raw)}", param=raw.name)
    raise _type_error(raw, Kind.NUMBER)


def _as_bool(raw: RawField) -> bool:
    value = raw.value
    if raw.from_text:
        text = str(value).strip().lower()
        if text in ("true", "false"):
            return text == "true"
    elif isinstance(value, bool):
        return value
    raise _type_error(raw, Kind.BOOLEAN)


def _as_json(raw: RawField) -> object:
    if not raw.from_text:
        return raw.value
    try:
        return loads_strict(str(raw.value))
    except (ValueError, RecursionError):
        raise BadRequest(f"{raw.name} must be a JSON object, got {_shown(raw)}", param=raw.name) from None


_CONVERTERS = {Kind.STRING: _as_str, Kind.INTEGER: _as_int, Kind.NUMBER: _as_float, Kind.BOOLEAN: _as_bool,
               Kind.ANY: _as_json}


class Fields:
    """The typed values of a request's fields; every present field is type-checked up front
    (BadRequest naming the first field of the wrong type)."""

    def __init__(self, raws: list[RawField]) -> None:
        self.values: dict[str, object] = {}
        for raw in raws:
            self.values[raw.name] = _CONVERTERS[FIELDS[raw.name]](raw)

    def has(self, name: str) -> bool:
        return name in self.values

    def get_str(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def get_int(self, name: str) -> int | None:
        value = self.values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def get_float(self, name: str) -> float | None:
        value = self.values.get(name)
        return value if isinstance(value, float) else None

    def get_bool(self, name: str) -> bool | None:
        value = self.values.get(name)
        return value if isinstance(value, bool) else None


def json_raws(body: object) -> list[RawField]:
    """The fields of a JSON body; BadRequest for an unknown or unsupported field."""
    if not isinstance(body, dict):
        raise BadRequest("JSON body must be an object")
    raws: list[RawField] = []
    for name, value in body.items():
        _check_known(name)
        if value is None and name != "prompt":
            continue  # OpenAI clients send null for "not given"
        raws.append(RawField(name, value, from_text=False))
    return raws


def _check_known(name: str) -> None:
    if name in UNSUPPORTED:
        raise BadRequest(f"{name} is not supported by this server: {UNSUPPORTED[name]}", param=name)
    if name not in FIELDS:
        raise BadRequest(f"Unhandled parameter: {name}", param=name)


def multipart_raws(form: MultipartView) -> list[RawField]:
    """The text fields of a multipart form; BadRequest for unknown fields, repeated fields, and text
    and file parts in each other's place."""
    raws: list[RawField] = []
    for name in form.field_names():
        if name not in FILE_FIELDS:
            _check_known(name)
    for name, values in form.fields.items():
        if name in FILE_FIELDS:
            raise BadRequest(f"{name} must be a file upload, not a text field", param=name)
        if len(values) != 1:
            raise BadRequest(f"{name} is given {len(values)} times; give it once", param=name)
        raws.append(RawField(name, values[0], from_text=True))
    for name in form.files:
        if name not in FILE_FIELDS:
            raise BadRequest(f"{name} must be a text field, not a file upload", param=name)
    return raws
