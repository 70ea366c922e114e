"""A real ``ovms-graph serve`` process on the tiny SD1.5 graph (graphs/tiny-sd), shared by the example tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
TINY_SD = REPO / "graphs" / "tiny-sd"
OVMS_GRAPH = Path(sys.executable).parent / "ovms-graph"
API_KEY = "examples-key"
#: A safety net against hanging forever, not a performance assertion.
LIMIT = 600.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path
    model: str
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def tiny_sd_config() -> tuple[Path, str]:
    """graphs/tiny-sd/config.json and the name it serves; fails (never skips) when it is missing."""
    config = TINY_SD / "config.json"
    assert config.is_file(), f"{config} is missing: the example tests serve the tiny SD1.5 graph gallery entry"
    (entry,) = json.loads(config.read_text())["model_config_list"]
    return config, entry["config"]["name"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """graphs/tiny-sd served with an API key on a free port, ready to answer."""
    root = tmp_path_factory.mktemp("examples-server")
    config, model = tiny_sd_config()
    (root / "key.txt").write_text(API_KEY + "\n")
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(OVMS_GRAPH), "serve", "--config_path", str(config), "--rest_port", "0",
                                    "--rest_bind_address", "127.0.0.1", "--api_key_file", str(root / "key.txt")],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=root)
    served = Server(process, log, model)
    try:
        deadline = time.monotonic() + LIMIT
        while True:
            assert time.monotonic() < deadline, f"the server never became ready:\n{served.output()}"
            assert process.poll() is None, f"the server exited early:\n{served.output()}"
            if not served.port:
                found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", served.output())
                served.port = int(found.group(1)) if found else 0
            elif requests.get(f"{served.url}/v2/health/ready", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=LIMIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, served.output()
    assert "Traceback" not in served.output()
