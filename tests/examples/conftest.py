"""A real ``ovms-graph serve`` process on the tiny SD1.5 graph (graphs/tiny-sd), shared by the example tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ovms_graph.testing import serving

REPO = Path(__file__).resolve().parents[2]
TINY_SD = REPO / "graphs" / "tiny-sd"
API_KEY = "examples-key"
#: A safety net against hanging forever, not a performance assertion.
LIMIT = 600.0


@dataclass(frozen=True)
class Server:
    """The running server's base URL and the model name it serves."""

    url: str
    model: str


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
    with serving(["--config_path", str(config), "--rest_port", "0", "--rest_bind_address", "127.0.0.1",
                  "--api_key_file", str(root / "key.txt")], cwd=root, log=root / "server.log", limit=LIMIT,
                 stop_timeout=LIMIT) as served:
        yield Server(served.url, model)
    assert served.process.returncode == 0, served.output()
    assert "Traceback" not in served.output()
