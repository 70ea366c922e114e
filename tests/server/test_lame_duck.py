"""The lame duck after SIGTERM (``--drain_delay``), on a real `ovms-graph serve` process.

Readiness drops at once while new requests are still answered, each with ``Connection: close``; the
drain starts when the delay ends, at a second SIGTERM, or at once on SIGINT. The delay here is an
hour, so only the signal can end it within the test's safety limits.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ovms_graph.testing import ServerProcess
from tests.server.test_e2e import STARTUP_LIMIT, start, write_graphs

HOUR = "3600"


@pytest.fixture
def lame(tmp_path: Path) -> Iterator[ServerProcess]:
    config = write_graphs(tmp_path, {"tiny": "OpenAIImageCalculator"})
    server = start(tmp_path, "--config_path", str(config), "--rest_port", "0", "--rest_bind_address", "127.0.0.1",
                   "--drain_delay", HOUR, "--metrics_enable")
    try:
        server.wait_ready(STARTUP_LIMIT)
        yield server
    finally:
        server.kill()


def wait_refused(server: ServerProcess) -> None:
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server kept accepting connections:\n{server.output()}")


def test_sigterm_turns_readiness_off_but_keeps_serving_until_a_second_sigterm(lame: ServerProcess) -> None:
    with requests.Session() as session:
        assert session.get(f"{lame.url}/v2/health/ready", timeout=10).status_code == 200
        before = session.post(f"{lame.url}/v3/images/generations", json={"model": "tiny", "prompt": "a"}, timeout=60)
        assert before.status_code == 200
        assert before.headers.get("Connection", "").lower() != "close"

        lame.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STARTUP_LIMIT
        while requests.get(f"{lame.url}/v2/health/ready", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, lame.output()
            time.sleep(0.02)
        assert requests.get(f"{lame.url}/v2/health/live", timeout=10).status_code == 200
        metrics = requests.get(f"{lame.url}/metrics", timeout=10).text
        assert "ovms_graph_ready 0.0" in metrics

        # Still served (also on the kept-alive connection), and every answer closes its connection.
        for _ in range(3):
            during = session.post(f"{lame.url}/v3/images/generations", json={"model": "tiny", "prompt": "b"},
                                  timeout=60)
            assert during.status_code == 200, during.text
            assert during.headers["Connection"].lower() == "close"
            assert during.json()["data"]
        assert "still serving new requests for 3600.0 s (--drain_delay)" in lame.output()

    lame.process.send_signal(signal.SIGTERM)
    wait_refused(lame)
    assert lame.process.wait(timeout=STARTUP_LIMIT) == 0
    assert "Traceback" not in lame.output()


def test_sigint_skips_the_lame_duck(lame: ServerProcess) -> None:
    lame.process.send_signal(signal.SIGINT)
    wait_refused(lame)
    assert lame.process.wait(timeout=STARTUP_LIMIT) == 0
    assert "--drain_delay" not in lame.output().split("listening on", 1)[1]
