"""The output size of an image request: the size it asks for, the default, and the node's limits.

``size`` ("WxH" or "auto") and ``width`` / ``height`` are exclusive; a missing side comes from the
default (the node's, the static shape's or the model's; for edits, the input image's size rounded to
the size multiple). Every refusal names the field the client sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calculators.image_gen.options import Resolution
from calculators.image_gen.request_fields import Fields
from calculators.image_gen.sizes import nearest_sizes, size_problem
from ovms_graph.errors import BadRequest

if TYPE_CHECKING:
    from calculators.image_gen.request import RequestRules

_SIZE_RE = re.compile(r"^([0-9]+)x([0-9]+)$")
#: The largest side a ``size`` may name (image sides are 32-bit integers in OpenVINO GenAI).
MAX_SIDE = 2**31 - 1


@dataclass(frozen=True)
class SizeRequest:
    """What the request says about the output size; a missing side comes from the default."""

    width: int | None
    height: int | None
    param: str  # the field to blame: size, width or height


def requested_size(f: Fields) -> SizeRequest:
    """The size the request names (``size``, or ``width`` / ``height``); BadRequest naming the field
    for both at once, a malformed or too large ``size``, or a side that is not positive."""
    size = f.get_str("size")
    if size is not None and (f.has("width") or f.has("height")):
        raise BadRequest("size and width/height are mutually exclusive; set only one", param="size")
    if size is not None:
        return _parse_size(size)
    given_w, given_h = f.get_int("width"), f.get_int("height")
    for name, value in (("width", given_w), ("height", given_h)):
        if value is not None and value <= 0:
            raise BadRequest(f"{name} must be higher than 0", param=name)
    return SizeRequest(given_w, given_h, "width" if given_w is not None else "height")


def _parse_size(size: str) -> SizeRequest:
    """``size`` ("auto" or "WxH" with positive sides that fit 32 bits); BadRequest naming ``size``."""
    if size == "auto":
        return SizeRequest(None, None, "size")
    match = _SIZE_RE.match(size)
    if match is None:
        raise BadRequest("size field is not in correct format - WxH", param="size")
    if any(len(text.lstrip("0")) > len(str(MAX_SIDE)) or int(text) > MAX_SIDE for text in match.groups()):
        raise BadRequest(f"size field values are too large: each must be at most {MAX_SIDE}", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise BadRequest("size field values must be greater than 0", param="size")
    return SizeRequest(width, height, "size")


def default_size(rules: RequestRules) -> Resolution:
    """The text-to-image default: the node's default_resolution, else its first static shape, else
    the model's own default."""
    settings = rules.settings
    if settings.default_resolution is not None:
        return settings.default_resolution
    if settings.static_resolutions:
        return settings.static_resolutions[0]
    return rules.defaults.resolution


def default_edit_size(source: Resolution, rules: RequestRules) -> Resolution:
    """The input image's size rounded down to the size multiple; on a static node the compiled
    resolution unless the rounded size is one of the static ones."""
    multiple = rules.info.size_multiple
    rounded = Resolution(source.width - source.width % multiple, source.height - source.height % multiple)
    if rounded.width == 0 or rounded.height == 0:
        raise BadRequest(f"image is {source}; it must be at least {multiple}x{multiple} pixels", param="image")
    static = rules.settings.static_resolutions
    if static and rounded not in static:
        return rules.settings.default_resolution or static[0]
    return rounded


def check_size(requested: SizeRequest, default: Resolution, rules: RequestRules) -> Resolution:
    """The output size: the request's, completed from ``default``, checked against the node."""
    size = Resolution(requested.width if requested.width is not None else default.width,
                      requested.height if requested.height is not None else default.height)
    for side, value in (("width", size.width), ("height", size.height)):
        problem = size_problem(side, value, rules.info.size_multiple)
        if problem is not None:
            raise BadRequest(problem + _nearest_hint(size, rules), param=side if requested.param != "size" else "size")
    explicit = requested.width is not None or requested.height is not None
    _check_size_limits(size, rules, requested.param if explicit else None)
    return size


def _nearest_hint(size: Resolution, rules: RequestRules) -> str:
    """``"; nearest sizes that work: ..."`` for a size off the multiple (empty when none)."""
    settings, multiple = rules.settings, rules.info.size_multiple
    limit = None if settings.static_resolutions else settings.max_resolution
    near = [r for r in nearest_sizes(size, multiple, limit)
            if not settings.static_resolutions or r in settings.static_resolutions]
    if settings.static_resolutions and not near:
        near = list(settings.static_resolutions)
    return f"; nearest sizes that work: {', '.join(str(r) for r in near)}" if near else ""


def _check_size_limits(size: Resolution, rules: RequestRules, param: str | None) -> None:
    """``size`` against the static resolutions or max_resolution, and the model's largest side."""
    settings = rules.settings
    if settings.static_resolutions:
        if size not in settings.static_resolutions:
            listed = " ".join(str(r) for r in settings.static_resolutions)
            raise BadRequest(f"requested resolution {size} is not supported by static reshape settings "
                             f"({listed})", param=param)
    elif not size.fits_in(settings.max_resolution):
        raise BadRequest(f"requested resolution {size} exceeds max_resolution {settings.max_resolution}",
                         param=param)
    most = rules.info.max_side
    if most is not None and max(size.width, size.height) > most:
        raise BadRequest(f"requested resolution {size} is larger than this {rules.info.family.value} model can "
                         f"generate: at most {most} pixels per side (its transformer's pos_embed_max_size)",
                         param=param)
