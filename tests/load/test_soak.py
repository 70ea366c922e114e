"""A bounded soak: Locust (headless, its own process: it monkeypatches with gevent) drives a real
``ovms-graph serve`` of the tiny DYNAMIC-LoRA graph for 15 s with bench/locustfile.py's mix.

Every response is 200, a 4xx (hostile requests only) or 503 (queue full); no body carries a
traceback; every kind of request is served; the server is still ready afterwards. The queue is kept
at one waiting request so that 503s happen too (users then retry after Retry-After).
bench/bench_soak.py is the long run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak_checks import HOSTILE, KINDS, NORMAL, judge, summary
from ovms_graph.testing import serving

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "bench" / "locustfile.py"
CONFIG = REPO / "graphs" / "lora-dynamic" / "config.json"
MAX_REQUEST_SIZE = 1 << 20
USERS = len(HOSTILE)  # user k starts its cycles at request k and hostile kind k: all are sent early


def test_soak_mix_gets_only_200_4xx_or_503_and_the_server_stays_ready(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    args = ["--config_path", str(CONFIG), "--rest_port", "0", "--rest_bind_address", "127.0.0.1",
            "--max_request_size", str(MAX_REQUEST_SIZE), "--max_queued_requests", "1"]
    with serving(args, cwd=tmp_path) as server:
        env = {**os.environ, "OVMS_SOAK_MAX_REQUEST_SIZE": str(MAX_REQUEST_SIZE), "OVMS_SOAK_REPORT": str(report)}
        locust = subprocess.run(
            [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS),
             "-r", str(USERS), "-t", "15s", "--stop-timeout", "60", "--host", server.url, "--only-summary"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert server.is_ready(), server.output()
        assert server.process.poll() is None
    assert server.process.returncode == 0, server.output()
    assert locust.returncode == 0, locust.stdout + locust.stderr
    # Bad input is a 4xx, not a server error: nothing logged at ERROR, no traceback even in the log.
    assert "Traceback" not in server.output()
    assert [line for line in server.output().splitlines() if " ERROR " in line] == []

    kinds = {s.kind: s for s in summary(json.loads(report.read_text()))}
    assert list(kinds) == KINDS
    for kind, result in kinds.items():
        assert result.failures == [], kind
        expected = 200 if kind in NORMAL else HOSTILE[kind.removeprefix("hostile:")]
        assert set(result.statuses) <= {expected, 503}, (kind, result.statuses)
        assert result.statuses.get(expected, 0) >= 1, (kind, result.statuses)


@pytest.mark.parametrize(("kind", "status", "text", "problem", "verdict"), [
    ("generate", 200, '{"data": []}', None, None),
    ("generate", 503, '{"error": {"message": "queue is full"}}', None, None),
    ("hostile:oversize", 413, '{"error": {}}', None, None),
    ("hostile:oversize", 503, "", None, None),
    ("generate", 200, "", "no images in data", "no images in data"),
    ("generate", 400, '{"error": {}}', None, "expected 200 or 503, got 400"),
    ("generate", 500, '{"error": {}}', None, "expected 200 or 503, got 500"),
    ("hostile:wrong_type", 200, '{"data": []}', None, "a hostile request got 200"),
    ("hostile:wrong_type", 500, "Internal Server Error", None, "a hostile request got 500"),
    ("hostile:corrupt_image", 400, 'Traceback (most recent call last):\n  File "x.py", line 3', None,
     "a traceback reached the client"),
    ("generate", 503, 'error: File "/srv/ovms_graph/server.py", line 12, in _images', None,
     "a traceback reached the client"),
])
def test_the_soak_rules(kind: str, status: int, text: str, problem: str | None, verdict: str | None) -> None:
    found = judge(kind, status, text, problem)
    assert (found is None) if verdict is None else (found is not None and found.startswith(verdict)), found
