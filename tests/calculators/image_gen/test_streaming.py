"""Streaming pieces that need no model: partial-image steps, event shapes, the never-raising callback."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from calculators.image_gen.streaming import StepCallback, StreamShape, partial_steps
from ovms_graph.packets import ServerSentEvent


@pytest.mark.parametrize(("total", "partials", "expected"), [
    (20, 3, {4, 9, 14}),
    (20, 1, {9}),
    (4, 3, {0, 1, 2}),
    (3, 2, {0, 1}),
    (2, 3, {0}),
    (2, 1, {0}),
    (1, 3, set()),
    (10, 0, set()),
    (0, 2, set()),
])
def test_partial_steps_are_evenly_spaced_before_the_last(total: int, partials: int, expected: set[int]) -> None:
    assert partial_steps(total, partials) == expected


def test_event_shapes_follow_openai() -> None:
    shape = StreamShape("image_edit", "64x32", "webp", 80, quality="high", rng_seed=2**32 - 1)
    partial = shape.partial("AAAA", 1)
    assert partial.event == "image_edit.partial_image"
    body = json.loads(partial.data)
    assert body.pop("created_at") > 0
    assert body == {"type": "image_edit.partial_image", "b64_json": "AAAA", "partial_image_index": 1,
                    "size": "64x32", "quality": "high", "background": "opaque", "output_format": "webp",
                    "rng_seed": 2**32 - 1}
    done = json.loads(shape.completed("BBBB").data)
    assert done["type"] == "image_edit.completed" and done["b64_json"] == "BBBB" and "partial_image_index" not in done
    assert done["rng_seed"] == 2**32 - 1 and "safety_identifier" not in done


@pytest.mark.parametrize("prefix", ["image_generation", "image_edit"])
def test_events_validate_against_the_openai_sdk_models(prefix: str) -> None:
    from openai.types import (
        ImageEditCompletedEvent,
        ImageEditPartialImageEvent,
        ImageGenCompletedEvent,
        ImageGenPartialImageEvent,
    )

    models = {"image_generation": (ImageGenPartialImageEvent, ImageGenCompletedEvent),
              "image_edit": (ImageEditPartialImageEvent, ImageEditCompletedEvent)}[prefix]
    shape = StreamShape(prefix, "64x64", "png", None, quality="medium", rng_seed=7, safety_identifier="hash-1")
    partial = models[0].model_validate_json(shape.partial("AAAA", 0).data)
    completed = models[1].model_validate_json(shape.completed("BBBB").data)
    assert (partial.partial_image_index, partial.background, partial.quality) == (0, "opaque", "medium")
    assert (completed.b64_json, completed.size, completed.safety_identifier) == ("BBBB", "64x64", "hash-1")
    assert completed.usage.total_tokens == 0
    assert completed.model_extra == {"rng_seed": 7}


def shape() -> StreamShape:
    return StreamShape("image_generation", "8x8", "png", None)


def pixels(_: Any) -> np.ndarray:
    return np.zeros((1, 8, 8, 3), np.uint8)


def test_callback_emits_partials_at_the_planned_steps() -> None:
    events: list[ServerSentEvent] = []
    callback = StepCallback(lambda: False, partial_images=2, decode=pixels, emit=events.append, shape=shape())
    assert [callback(step, 6, None) for step in range(6)] == [False] * 6
    assert [json.loads(e.data)["partial_image_index"] for e in events] == [0, 1]
    assert callback.sent == 2 and not callback.stopped


def test_callback_stops_when_cancelled() -> None:
    flags = iter([False, False, True])
    callback = StepCallback(lambda: next(flags))
    assert [callback(0, 5, None), callback(1, 5, None), callback(2, 5, None)] == [False, False, True]
    assert callback.stopped and callback.steps == 3


def test_callback_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken_decode(_: Any) -> np.ndarray:
        raise RuntimeError("decode failed")

    def broken_probe() -> bool:
        raise KeyboardInterrupt

    events: list[ServerSentEvent] = []
    callback = StepCallback(lambda: False, partial_images=1, decode=broken_decode, emit=events.append, shape=shape())
    with caplog.at_level(logging.ERROR, logger="calculators.image_gen"):
        assert callback(0, 2, None) is False
    assert "step callback failed" in caplog.text and events == []
    assert StepCallback(broken_probe)(0, 2, None) is False


def test_callback_without_streaming_only_watches_cancellation() -> None:
    callback = StepCallback(lambda: False, partial_images=3)
    assert callback(0, 3, None) is False
    assert callback.sent == 0
