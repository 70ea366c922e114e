"""End to end: `ovms-graph serve --source_model` pulls through the fake Hub, serves, and generates."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from PIL import Image

from tests.pull.conftest import LORA_REPO, SD15_REPO
from tests.pull.fake_hub import FakeHub, FileServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[str], base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not become ready")


def test_serve_source_model_pulls_then_generates(hub: FakeHub, file_server: FileServer, tmp_path: Path) -> None:
    port = free_port()
    repo = tmp_path / "models"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [sys.executable, "-m", "ovms_graph.cli", "serve", "--source_model", SD15_REPO,
               "--model_repository_path", str(repo), "--task", "image_generation", "--rest_port", str(port),
               "--default_num_inference_steps", "2", "--max_resolution", "128x128",
               "--source_loras", f"a={LORA_REPO}:0.5,c={file_server.url}/files/lora_c.safetensors,ac=@a+@c:0.4"]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
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
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "Downloading OpenVINO/tiny-sd15-ov" in out


def test_serve_source_model_exit_statuses(hub: FakeHub, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    base = [sys.executable, "-m", "ovms_graph.cli", "serve", "--model_repository_path", str(tmp_path),
            "--rest_port", str(free_port())]
    missing = subprocess.run([*base, "--source_model", "nobody/nothing"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 1
    assert missing.stderr.endswith(f"--source_model nobody/nothing: repository not found on {hub.url} "
                                   "(a private or gated repository needs HF_TOKEN)\n")
    bad = subprocess.run([*base, "--source_model", SD15_REPO, "--source_loras", "a=org/a,mix=@b"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert bad.stderr.endswith("Composite LoRA references unknown adapter 'b' in entry: 'mix=@b' "
                               "(known adapters: a)\n")
    assert hub.calls("/api/models/OpenVINO") == []
