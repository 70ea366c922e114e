"""A real ``ovms-graph serve`` process on the tiny SD1.5 model, for the real-client tests.

The graph allows 512x512 (Open WebUI's default size) and keeps steps few, so every client's own
request shape runs as sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ovms_graph.testing import serving

REPO = Path(__file__).resolve().parents[2]
TINY_SD = REPO / "models" / "tiny" / "sd15"
MODEL = "tiny-sd"
API_KEY = "clients-key"
#: A safety net against hanging forever, not a performance assertion.
LIMIT = 600.0

GRAPH = """
input_stream: "HTTP_REQUEST_PAYLOAD:input"
output_stream: "HTTP_RESPONSE_PAYLOAD:output"
node: {
  name: "ImageGenExecutor"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {
    [type.googleapis.com/mediapipe.ImageGenCalculatorOptions]: {
      models_path: "%s"
      plugin_config: '{"INFERENCE_PRECISION_HINT": "f32"}'
      max_resolution: "512x512"
      default_resolution: "64x64"
      default_num_inference_steps: 2
      max_num_inference_steps: 4
    }
  }
}
"""


@dataclass(frozen=True)
class Server:
    """The running server: base URL (without /v1), model name, API key and its log file."""

    url: str
    model: str
    key: str
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert (TINY_SD / "model_index.json").is_file(), f"{TINY_SD} is missing: run `make tiny-models`"
    root = tmp_path_factory.mktemp("clients-server")
    (root / MODEL).mkdir()
    (root / MODEL / "graph.pbtxt").write_text(GRAPH % TINY_SD, encoding="utf-8")
    (root / "config.json").write_text(json.dumps(
        {"model_config_list": [{"config": {"name": MODEL, "base_path": MODEL}}]}), encoding="utf-8")
    (root / "key.txt").write_text(API_KEY + "\n")
    log = root / "server.log"
    with serving(["--config_path", "config.json", "--rest_port", "0", "--rest_bind_address", "127.0.0.1",
                  "--api_key_file", "key.txt"], cwd=root, log=log, limit=LIMIT, stop_timeout=LIMIT) as served:
        yield Server(served.url, MODEL, API_KEY, log)
    assert served.process.returncode == 0, served.output()
    assert "Traceback" not in served.output()
