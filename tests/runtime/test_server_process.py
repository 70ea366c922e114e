"""ovms_graph.testing.ServerProcess against a stand-in for `ovms-graph serve` (a small Python script).

The real server is covered by every test that serves through this helper (tests/server/test_e2e.py and
others); these tests cover the paths those never take: exits, hangs and a SIGTERM that is ignored.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from ovms_graph.testing import ServerProcess, serving

STAND_IN = r'''
import http.server
import signal
import sys
import time

mode = sys.argv[2]
if mode == "exit":
    print("error: no models", flush=True)
    sys.exit(3)
if mode in ("hang", "stubborn"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("loading", flush=True)
    time.sleep(600)
polls = 0


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global polls
        polls += 1
        self.send_response(200 if self.path == "/v2/health/ready" and polls > 2 else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Health)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"INFO listening on http://127.0.0.1:{server.server_port}", flush=True)
if mode == "listen-then-exit":
    sys.exit(4)
server.serve_forever()
'''


def start(tmp_path: Path, mode: str) -> ServerProcess:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return ServerProcess.start([mode], cwd=tmp_path, command=(sys.executable, str(script)))


def test_serving_waits_until_ready_and_stops_with_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    with serving(["ready"], cwd=tmp_path, command=(sys.executable, str(script)), limit=60) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.is_ready()
        assert "listening on" in server.output()
    assert server.process.returncode == 0
    assert server.log.parent == tmp_path


@pytest.mark.parametrize(("mode", "wait", "message"), [
    ("exit", "wait_listening", "ovms-graph serve exited with 3 before listening:\nerror: no models\n"),
    ("listen-then-exit", "wait_ready", "ovms-graph serve exited with 4 before it was ready:\nINFO listening on "),
    ("hang", "wait_listening", "ovms-graph serve did not listen within 0.5 s:\n"),
])
def test_a_wait_that_fails_names_why_and_carries_the_log(tmp_path: Path, mode: str, wait: str, message: str) -> None:
    server = start(tmp_path, mode)
    try:
        with pytest.raises(AssertionError) as failed:
            getattr(server, wait)(60.0 if mode != "hang" else 0.5)
        assert str(failed.value).startswith(message)
    finally:
        server.kill()


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    server = start(tmp_path, "stubborn")
    deadline = time.monotonic() + 60  # a safety net: "loading" means SIGTERM is ignored from now on
    while "loading" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stop(timeout=0.5) == -signal.SIGKILL
    assert server.stop() == -signal.SIGKILL  # already exited: only reaped


def test_the_address_is_unknown_before_listening(tmp_path: Path) -> None:
    server = start(tmp_path, "hang")
    try:
        with pytest.raises(RuntimeError, match="call wait_listening"):
            server.url  # noqa: B018
    finally:
        server.kill()
