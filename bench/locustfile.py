"""A soak/load mix for ``ovms-graph serve``, for Locust (run it headless, as its own process).

    locust -f bench/locustfile.py --headless -u 4 -r 4 -t 60s --host http://127.0.0.1:8000

Every simulated user repeats the same cycle of ten requests (users start at different points of it):
text-to-image (2), the DYNAMIC LoRA routes (3: each adapter alias in turn, with and without
``lora_alphas``), image-to-image, inpainting, a streamed generation (Server-Sent Events, read to the
end), and one hostile request in ten: malformed JSON, a body over ``--max_request_size``, a corrupt
image, an unknown field, a wrong type, in turn.

A response passes when:

* its status is 200 (hostile: a 4xx) or 503 (queue full: the user waits the Retry-After, at most
  1 s, and sends the request again, up to 5 times in all), and for a normal request never any other 4xx;
* no body carries a Python traceback;
* a 200 carries images: ``data[*].b64_json`` decodes to an image, or the stream ends with exactly one
  ``...completed`` event and no ``error`` event.

The rules live in ``bench/soak_checks.py``. Failures show up in Locust's own statistics (request
names are the kinds) and exit status. With ``OVMS_SOAK_REPORT`` set, the run also writes a JSON
report there when it ends: per kind, every status and latency (seconds) and every failure's reason;
``bench/bench_soak.py`` and ``tests/load`` read it.

Settings (environment):

* ``OVMS_SOAK_MODEL`` the base graph (default ``sd15-lora``, graphs/lora-dynamic);
  ``OVMS_SOAK_LORAS`` its DYNAMIC adapter aliases, comma-separated (default ``attn,textenc,proj``);
* ``OVMS_SOAK_MAX_REQUEST_SIZE`` the server's ``--max_request_size`` in bytes (default 67108864): the
  oversize body is one byte more;
* ``OVMS_SOAK_REQUESTS`` stop after this many requests in all (default: run until ``-t``);
* ``OVMS_SOAK_REPORT`` where to write the JSON report.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_checks import HOSTILE, Tally, image_check, judge, stream_check

ASSETS = Path(__file__).resolve().parents[1] / "examples" / "clients" / "assets"
IMAGE = (ASSETS / "image.png").read_bytes()  # 64x64 RGB
MASK = (ASSETS / "mask.png").read_bytes()  # 64x64, white = repaint
MODEL = os.environ.get("OVMS_SOAK_MODEL", "sd15-lora")
LORAS = [a for a in os.environ.get("OVMS_SOAK_LORAS", "attn,textenc,proj").split(",") if a]
MAX_REQUEST_SIZE = int(os.environ.get("OVMS_SOAK_MAX_REQUEST_SIZE", str(64 * 1024 * 1024)))
STOP_AFTER = int(os.environ.get("OVMS_SOAK_REQUESTS", "0"))
REPORT = os.environ.get("OVMS_SOAK_REPORT")
TIMEOUT = 300  # seconds; a safety net, not a latency bound
ATTEMPTS = 5  # per request, when the answer is 503

GENERATIONS, EDITS = "/v3/images/generations", "/v3/images/edits"
CYCLE = ["generate", "lora", "edit", "stream", "lora", "hostile", "generate", "inpaint", "lora", "stream"]

TALLY = Tally()
_user_starts = itertools.count()


def corrupt(data: bytes) -> bytes:
    """A PNG signature and header, then garbage: decoders fail on the content, not on the file type."""
    return data[:33] + bytes((b * 7 + 13) % 256 for b in data[33:]) + b"\x00" * 64


class ImageServingUser(HttpUser):
    """One client running the cycle above with no think time."""

    def on_start(self) -> None:
        start = next(_user_starts)
        self.cycle = itertools.islice(itertools.cycle(CYCLE), start, None)
        self.hostile = itertools.islice(itertools.cycle(HOSTILE), start, None)
        self.loras = itertools.islice(itertools.cycle(LORAS), start, None)
        self.seed = start * 1_000_003

    def next_seed(self) -> int:
        self.seed += 1
        return self.seed

    @task
    def next_request(self) -> None:
        kind = next(self.cycle)
        if kind == "hostile":
            kind = f"hostile:{next(self.hostile)}"
        getattr(self, kind.replace("hostile:", "hostile_"))()

    # ----- the normal requests -----
    def generate(self) -> None:
        self.send("generate", GENERATIONS, json={"model": MODEL, "prompt": "a red circle on a white background",
                                                 "num_inference_steps": 2, "rng_seed": self.next_seed()})

    def lora(self) -> None:
        alias = next(self.loras)
        body: dict[str, Any] = {"model": alias, "prompt": "a blue square", "num_inference_steps": 2,
                                "rng_seed": self.next_seed()}
        if self.seed % 2:
            body["lora_alphas"] = {alias: 0.7}
        self.send("lora", GENERATIONS, json=body)

    def edit(self) -> None:
        self.send("edit", EDITS, data={"model": MODEL, "prompt": "a green triangle", "strength": "0.8",
                                       "num_inference_steps": "3", "rng_seed": str(self.next_seed())},
                  files={"image": ("image.png", IMAGE, "image/png")})

    def inpaint(self) -> None:
        self.send("inpaint", EDITS, data={"model": MODEL, "prompt": "a yellow circle", "num_inference_steps": "3",
                                          "rng_seed": str(self.next_seed())},
                  files={"image": ("image.png", IMAGE, "image/png"), "mask": ("mask.png", MASK, "image/png")})

    def stream(self) -> None:
        self.send("stream", GENERATIONS, stream=True,
                  json={"model": MODEL, "prompt": "a purple square", "num_inference_steps": 3, "stream": True,
                        "partial_images": 1, "rng_seed": self.next_seed()})

    # ----- the hostile requests -----
    def hostile_malformed_json(self) -> None:
        self.send("hostile:malformed_json", GENERATIONS, data=b'{"model": "' + MODEL.encode() + b'", "prompt": "a',
                  headers={"Content-Type": "application/json"})

    def hostile_oversize(self) -> None:
        padding = b"a" * (MAX_REQUEST_SIZE + 1)
        self.send("hostile:oversize", GENERATIONS, data=b'{"prompt": "' + padding + b'"}',
                  headers={"Content-Type": "application/json"})

    def hostile_corrupt_image(self) -> None:
        self.send("hostile:corrupt_image", EDITS, data={"model": MODEL, "prompt": "a red circle"},
                  files={"image": ("image.png", corrupt(IMAGE), "image/png")})

    def hostile_unknown_field(self) -> None:
        self.send("hostile:unknown_field", GENERATIONS,
                  json={"model": MODEL, "prompt": "a red circle", "colour_scheme": "warm"})

    def hostile_wrong_type(self) -> None:
        self.send("hostile:wrong_type", GENERATIONS, json={"model": MODEL, "prompt": "a red circle", "n": "2"})

    # ----- sending and judging -----
    def send(self, kind: str, path: str, *, stream: bool = False, **kwargs: Any) -> None:
        """Send, judge and record; on 503 wait the Retry-After (at most 1 s) and send again, up to
        ``ATTEMPTS`` times, as a polite client does (every attempt is recorded)."""
        for _ in range(ATTEMPTS):
            status, retry_after = self.attempt(kind, path, stream=stream, **kwargs)
            if status != 503:
                return
            time.sleep(retry_after)  # gevent's sleep: Locust has monkeypatched time

    def attempt(self, kind: str, path: str, *, stream: bool, **kwargs: Any) -> tuple[int, float]:
        started = time.perf_counter()
        with self.client.post(path, name=kind, catch_response=True, stream=stream, timeout=TIMEOUT,
                              **kwargs) as response:
            status = response.status_code
            problem = None
            if stream and status == 200:
                lines: list[str] = []
                problem = stream_check(_collect(response.iter_lines(decode_unicode=True), lines))
                text = "\n".join(lines)
            else:
                text = (response.content or b"").decode("utf-8", errors="replace")
                if status == 200:
                    problem = image_check(response.content)
            problem = judge(kind, status, text, problem)
            seconds = time.perf_counter() - started
            if problem is None:
                response.success()
            else:
                response.failure(problem)
            retry_after = min(float(response.headers.get("Retry-After") or 1), 1.0) if status == 503 else 0.0
        done = TALLY.record(kind, status, seconds, problem)
        if STOP_AFTER and done >= STOP_AFTER and self.environment.runner is not None:
            self.environment.runner.quit()
        return status, retry_after


def _collect(lines: Iterator[str], into: list[str]) -> Iterator[str]:
    for line in lines:
        into.append(line)
        yield line


@events.quitting.add_listener
def _write_report(environment: Environment, **_: Any) -> None:
    if REPORT:
        Path(REPORT).write_text(json.dumps(TALLY.report()))
