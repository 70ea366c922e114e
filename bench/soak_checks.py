"""The soak's rules and its tally, without Locust (so tests can import them: Locust monkeypatches).

``bench/locustfile.py`` judges every response with :func:`judge` and records it in a :class:`Tally`,
whose JSON report ``bench/bench_soak.py`` and ``tests/load`` read back with :func:`summary`.
"""

from __future__ import annotations

import base64
import io
import json
import re
import statistics
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

NORMAL = ["generate", "lora", "edit", "inpaint", "stream"]
#: Each hostile request and the status it must get (503 is always allowed: queue full).
HOSTILE = {"malformed_json": 400, "oversize": 413, "corrupt_image": 400, "unknown_field": 400, "wrong_type": 400}
KINDS = [*NORMAL, *(f"hostile:{h}" for h in HOSTILE)]
#: What a leaked Python traceback looks like in a body.
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def image_check(body: bytes) -> str | None:
    """Why a 200 JSON body is not an images response with decodable images, or None."""
    try:
        data = json.loads(body)["data"]
        for item in data:
            Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).load()
    except Exception as e:  # any failure to read the images is the finding
        return f"not an images response ({type(e).__name__}: {e})"
    return None if data else "no images in data"


def stream_check(lines: Iterable[str]) -> str | None:
    """Why Server-Sent Event lines are not one complete image stream, or None: partial images,
    then exactly one ``...completed`` event with a decodable image, and no other event."""
    completed = 0
    try:
        for line in lines:
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event.get("type") == "image_generation.completed":
                completed += 1
                Image.open(io.BytesIO(base64.b64decode(event["b64_json"]))).load()
            elif event.get("type") != "image_generation.partial_image":
                return f"unexpected event {json.dumps(event)[:300]}"
    except Exception as e:  # a broken event or connection is the finding
        return f"unreadable stream ({type(e).__name__}: {e})"
    return None if completed == 1 else f"{completed} completed events"


def judge(kind: str, status: int, text: str, problem: str | None = None) -> str | None:
    """Why a response of ``kind`` breaks the soak's rules, or None.

    ``text`` is the whole body as text; ``problem`` what :func:`image_check` / :func:`stream_check`
    found in a 200's body. No body may carry a traceback; 503 always passes; a hostile request needs
    a 4xx, a normal one a 200 without ``problem``.
    """
    if TRACEBACK.search(text):
        return f"a traceback reached the client: {text[:500]}"
    if status == 503:
        return None
    if kind.startswith("hostile:"):
        return None if 400 <= status < 500 else f"a hostile request got {status}: {text[:300]}"
    if status != 200:
        return f"expected 200 or 503, got {status}: {text[:300]}"
    return problem


@dataclass
class Tally:
    """Every response of a run, per kind: status and seconds, and the failures' reasons."""

    responses: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    failures: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int, seconds: float, failure: str | None) -> int:
        """Add one response; returns how many the run has seen."""
        with self.lock:
            self.responses[kind].append((status, seconds))
            if failure is not None:
                self.failures[kind].append(f"HTTP {status}: {failure}")
            return sum(len(r) for r in self.responses.values())

    def report(self) -> dict[str, Any]:
        return {"kinds": {k: {"responses": self.responses[k], "failures": self.failures[k]} for k in KINDS}}


@dataclass(frozen=True)
class KindSummary:
    kind: str
    statuses: dict[int, int]
    failures: list[str]
    p50: float | None  # seconds, over the responses that got the kind's expected status
    p99: float | None

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; one value is its own percentile."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] if q < 100 else max(values)


def summary(report: dict[str, Any]) -> list[KindSummary]:
    """Per kind: statuses seen, failures, and p50/p99 latency of the responses with the expected status
    (200 for normal kinds, the listed 4xx for hostile ones)."""
    result = []
    for kind in KINDS:
        entry = report["kinds"][kind]
        statuses: dict[int, int] = {}
        for status, _ in entry["responses"]:
            statuses[status] = statuses.get(status, 0) + 1
        expected = HOSTILE[kind.removeprefix("hostile:")] if kind.startswith("hostile:") else 200
        seconds = [s for status, s in entry["responses"] if status == expected]
        result.append(KindSummary(kind, statuses, entry["failures"],
                                  percentile(seconds, 50) if seconds else None,
                                  percentile(seconds, 99) if seconds else None))
    return result
