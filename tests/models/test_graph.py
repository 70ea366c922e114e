"""graphs/tiny-sd serves models/tiny/sd15: its paths resolve, it validates, and a real server process
returns the image openvino_genai itself generates for the same request."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openvino_genai as ov_genai
import pytest
from PIL import Image

from ovms_graph.testing import serving
from tests.models.conftest import F32, REPO, TINY, pixels

GRAPH_DIR = REPO / "graphs" / "tiny-sd"
CLI = Path(sys.executable).parent / "ovms-graph"


def test_config_and_paths_resolve() -> None:
    config = json.loads((GRAPH_DIR / "config.json").read_text())
    [entry] = config["model_config_list"]
    assert entry["config"]["name"] == "tiny-sd"
    assert (GRAPH_DIR / entry["config"]["base_path"] / "graph.pbtxt").is_file()
    text = (GRAPH_DIR / "graph.pbtxt").read_text()
    [models_path] = re.findall(r'models_path:\s*"([^"]+)"', text)
    assert (GRAPH_DIR / models_path).resolve() == (TINY / "sd15").resolve()
    assert 'input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"' in text


def test_validates() -> None:
    run = subprocess.run([str(CLI), "validate", "--config_path", str(GRAPH_DIR / "config.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("tiny-sd-server") / "server.log"
    with serving(["--config_path", str(GRAPH_DIR / "config.json"), "--rest_port", "0", "--rest_bind_address",
                  "127.0.0.1"], cwd=Path.cwd(), log=log, limit=120, stop_timeout=60) as served:
        yield served.url


def test_served_image_equals_genai_output(server: str) -> None:
    body = json.dumps({"model": "tiny-sd", "prompt": "a red cat", "rng_seed": 3}).encode()
    req = urllib.request.Request(server + "/v3/images/generations", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        data = json.load(r)["data"]
    served = np.array(Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))).convert("RGB"))
    pipe = ov_genai.Text2ImagePipeline(TINY / "sd15", "CPU", **F32)
    direct = pixels(pipe.generate("a red cat", num_inference_steps=2, rng_seed=3, width=64, height=64))[0]
    assert served.shape == (64, 64, 3)
    assert np.array_equal(served, direct)
