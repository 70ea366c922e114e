"""Streaming in OpenAI's image shape: partial images from the denoising loop, then the result.

With ``stream: true`` a request is answered with Server-Sent Events:
``image_generation.partial_image`` (``image_edit.partial_image`` for edits) for each partial image,
then exactly one ``image_generation.completed`` (``image_edit.completed``). Partial images are the
pipeline's own ``decode`` of the step callback's latent, at evenly spaced steps.

The step callback runs on OpenVINO GenAI's own worker thread, fed through a queue while the
denoising loop goes on: returning True stops the loop at its next step, a step still queued when
the loop ends is dropped (so a slow partial decode can cost later partials; the calculator then
sends the result as the one partial image), and an exception escaping the callback aborts the
process, so :class:`StepCallback` never lets one out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from calculators.image_gen.images import encode_b64
from ovms_graph.packets import ServerSentEvent

log = logging.getLogger("calculators.image_gen")


def partial_steps(total_steps: int, partial_images: int) -> frozenset[int]:
    """The 0-based steps after which a partial image is decoded: ``partial_images`` evenly spaced
    steps before the last one (the last step's image is the result itself), fewer when there are
    fewer steps, none with a single step."""
    if partial_images <= 0 or total_steps <= 1:
        return frozenset()
    steps = (math.ceil(k * total_steps / (partial_images + 1)) - 1 for k in range(1, partial_images + 1))
    return frozenset(s for s in steps if 0 <= s < total_steps - 1)


#: The completed event's ``usage`` (required by the openai SDK's event models). These models are not
#: billed by the token, so it counts none.
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": 0, "total_tokens": 0}


@dataclass(frozen=True)
class StreamShape:
    """The fields every event of one streamed request repeats, ``rng_seed`` included (and
    ``safety_identifier`` when the request named its end user)."""

    prefix: str  # "image_generation" or "image_edit"
    size: str
    output_format: str
    compression: int | None
    quality: str = "medium"
    rng_seed: int = 0
    safety_identifier: str | None = None

    def partial(self, b64: str, index: int) -> ServerSentEvent:
        return self._event("partial_image", {"b64_json": b64, "partial_image_index": index})

    def completed(self, b64: str) -> ServerSentEvent:
        return self._event("completed", {"b64_json": b64, "usage": NO_USAGE})

    def _event(self, kind: str, extra: dict[str, Any]) -> ServerSentEvent:
        event_type = f"{self.prefix}.{kind}"
        body = {"type": event_type, **extra, "created_at": int(time.time()), "size": self.size,
                "quality": self.quality, "background": "opaque", "output_format": self.output_format,
                "rng_seed": self.rng_seed}
        if self.safety_identifier is not None:
            body["safety_identifier"] = self.safety_identifier
        return ServerSentEvent(json.dumps(body, separators=(",", ":")), event=event_type)


class StepCallback:
    """The ``callback`` passed to ``generate``: stops the generation once the request is cancelled
    and, when streaming partial images, decodes and emits them. Never raises."""

    def __init__(self, cancelled: Callable[[], bool], *, partial_images: int = 0,
                 decode: Callable[[Any], np.ndarray] | None = None,
                 emit: Callable[[ServerSentEvent], None] | None = None,
                 shape: StreamShape | None = None) -> None:
        self._cancelled = cancelled
        self._partial_images = partial_images if decode and emit and shape else 0
        self._decode = decode
        self._emit = emit
        self._shape = shape
        self._targets: frozenset[int] | None = None
        #: Whether the callback asked the pipeline to stop.
        self.stopped = False
        #: Partial images sent so far.
        self.sent = 0
        #: Steps the pipeline reported so far.
        self.steps = 0

    def __call__(self, step: int, num_steps: int, latent: Any) -> bool:
        try:
            self.steps = step + 1
            if self._cancelled():
                self.stopped = True
                return True
            if self._partial_images:
                self._maybe_partial(int(step), int(num_steps), latent)
            return False
        except BaseException:  # an exception escaping here would abort the whole process
            with contextlib.suppress(BaseException):  # even logging may fail; nothing else to do then
                log.exception("image generation step callback failed; generation continues")
            return False

    def _maybe_partial(self, step: int, num_steps: int, latent: Any) -> None:
        if self._targets is None:
            self._targets = partial_steps(num_steps, self._partial_images)
        if step not in self._targets or self.sent >= self._partial_images:
            return
        assert self._decode is not None and self._emit is not None and self._shape is not None
        pixels = self._decode(latent)
        b64 = encode_b64(pixels[0], self._shape.output_format, self._shape.compression)
        event = self._shape.partial(b64.decode("ascii"), self.sent)
        self.sent += 1
        self._emit(event)
