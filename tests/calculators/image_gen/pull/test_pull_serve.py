"""End to end: `ovms-graph serve --source_model` pulls through the fake Hub, serves, and generates."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import requests
from PIL import Image

from ovms_graph.testing import serving
from tests.calculators.image_gen.pull.conftest import LORA_REPO, SD15_REPO
from tests.calculators.image_gen.pull.fake_hub import FakeHub, FileServer

REPO_ROOT = Path(__file__).resolve().parents[4]
STARTUP_LIMIT = 180.0  # a safety net against hanging forever, not a performance assertion


def test_serve_source_model_pulls_then_generates(hub: FakeHub, file_server: FileServer, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--source_model", SD15_REPO, "--model_repository_path", str(repo), "--task", "image_generation",
            "--rest_port", "0", "--default_num_inference_steps", "2", "--max_resolution", "128x128",
            "--source_loras", f"a={LORA_REPO}:0.5,c={file_server.url}/files/lora_c.safetensors,ac=@a+@c:0.4"]
    with serving(args, cwd=REPO_ROOT, env=env, command=(sys.executable, "-m", "ovms_graph.cli"),
                 log=tmp_path / "server.log", limit=STARTUP_LIMIT, stop_timeout=60) as server:
        base = server.url
        assert (repo / "OpenVINO" / "tiny-sd15-ov" / "loras" / "a" / "lora_a.safetensors").is_file()

        models = requests.get(f"{base}/v3/models", timeout=10).json()
        assert sorted(m["id"] for m in models["data"]) == sorted([SD15_REPO, "a", "c", "ac"])

        for model in (SD15_REPO, "a", "ac"):
            response = requests.post(f"{base}/v3/images/generations", timeout=120, json={
                "model": model, "prompt": "a red circle on a white background", "size": "64x64",
                "num_inference_steps": 1, "rng_seed": 7})
            assert response.status_code == 200, response.text
            (item,) = response.json()["data"]
            image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
            assert image.size == (64, 64)

        too_big = requests.post(f"{base}/v3/images/generations", timeout=30, json={
            "model": SD15_REPO, "prompt": "x", "size": "256x256", "num_inference_steps": 1})
        assert too_big.status_code == 400  # the pulled graph's --max_resolution is enforced
    assert server.process.returncode == 0, server.output()
    assert "Downloading OpenVINO/tiny-sd15-ov" in server.output()


def test_serve_source_model_exit_statuses(hub: FakeHub, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    base = [sys.executable, "-m", "ovms_graph.cli", "serve", "--model_repository_path", str(tmp_path),
            "--rest_port", "0"]
    missing = subprocess.run([*base, "--source_model", "nobody/nothing"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1
    assert missing.stderr.endswith(f"--source_model nobody/nothing: repository not found on {hub.url} "
                                   "(a private or gated repository needs HF_TOKEN)\n")
    bad = subprocess.run([*base, "--source_model", SD15_REPO, "--source_loras", "a=org/a,mix=@b"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert bad.stderr.endswith("Composite LoRA references unknown adapter 'b' in --source_loras entry: 'mix=@b' "
                               "(known adapters: a)\n")
    assert hub.calls("/api/models/OpenVINO") == []
