"""Builders shared by the plugin's tests: request payloads, the node under test, a real server.

The tests run after ``pip install -e examples/prompt_guard_plugin``. That install is what makes the
entry point, and so the calculator in a served graph, visible to ovms-graph.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from ovms_graph.packets import HttpPayload, MultipartView, UploadedFile
from ovms_graph.registry import Registry

from ovms_graph_prompt_guard.prompt_guard_calculator import PromptGuardCalculator

PLUGIN = Path(__file__).resolve().parents[1]
REPO = PLUGIN.parents[1]
GUARDED_SD = PLUGIN / "graphs" / "guarded-sd"
TINY_SD15 = REPO / "models" / "tiny" / "sd15"
OVMS_GRAPH = Path(sys.executable).parent / "ovms-graph"
#: A safety net against hanging forever, not a performance assertion.
STARTUP_LIMIT = 600.0

NODE = """node {{
  name: "guard"
  calculator: "PromptGuardCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "GUARD_RULES:rules"
  output_stream: "HTTP_REQUEST_PAYLOAD:guarded"
  node_options: {{
    [type.googleapis.com/prompt_guard.PromptGuardCalculatorOptions]: {{
{options}
    }}
  }}
}}
"""
#: Line of the first option line in NODE, for messages that name it.
FIRST_OPTION_LINE = 9


def node_text(*options: str) -> str:
    """A PromptGuardCalculator node with ``options`` (pbtxt lines) inside its node_options."""
    return NODE.format(options="\n".join(f"      {line}" for line in options))


def registry() -> Registry:
    """A registry with only the calculator under test (the entry point is tested separately)."""
    reg = Registry()
    reg.register(PromptGuardCalculator)
    return reg


def json_payload(body: Mapping[str, Any], model: str = "guarded") -> HttpPayload:
    """An images/generations request as the front end hands it to a graph."""
    return HttpPayload(uri="/v3/images/generations", method="POST", headers={"Content-Type": "application/json"},
                       body=json.dumps(body).encode(), route="images/generations", model=model,
                       parsed_json=dict(body))


IMAGE = UploadedFile("image", "in.png", "image/png", b"\x89PNG not decoded by the guard")


def form_payload(fields: Mapping[str, str | tuple[str, ...]], model: str = "guarded") -> HttpPayload:
    """An images/edits request (multipart) with one image file and the text ``fields``."""
    parts = {name: (value,) if isinstance(value, str) else value for name, value in fields.items()}
    return HttpPayload(uri="/v3/images/edits", method="POST",
                       headers={"Content-Type": "multipart/form-data; boundary=x"}, body=b"--x--\r\n",
                       route="images/edits", model=model,
                       multipart=MultipartView(fields=parts, files={"image": (IMAGE,)}))


# ----- a real server -----
@dataclass
class Server:
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def serve(config: Path, workdir: Path) -> Server:
    """``ovms-graph serve`` on a free port, returned once every graph is loaded."""
    assert (TINY_SD15 / "model_index.json").is_file(), (
        f"the tiny SD1.5 model is missing under {TINY_SD15}; build it with `make fixtures` in the repository")
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(OVMS_GRAPH), "serve", "--config_path", str(config), "--rest_port", "0",
                                    "--rest_bind_address", "127.0.0.1"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=dict(os.environ))
    server = Server(process, log)
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited early:\n{server.output()}"
        if not server.port:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", server.output())
            server.port = int(found.group(1)) if found else 0
        elif requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200:
            return server
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the server never became ready:\n{server.output()}")


def stop(server: Server) -> int:
    """SIGTERM, then the exit status (killed after the limit)."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            return server.process.wait(timeout=STARTUP_LIMIT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def unguarded_graph(folder: Path) -> Path:
    """``folder``/graph.pbtxt: the guarded-sd graph without its PromptGuard node, same model and options."""
    text = (GUARDED_SD / "graph.pbtxt").read_text()
    text, guards = re.subn(r'^node: \{\n  name: "PromptGuard".*?^\}\n', "", text, flags=re.M | re.S)
    text, streams = re.subn(r"HTTP_REQUEST_PAYLOAD:guarded", "HTTP_REQUEST_PAYLOAD:input", text)
    text, paths = re.subn(r'models_path: "[^"]*"', f'models_path: "{TINY_SD15}"', text)
    assert (guards, streams, paths) == (1, 1, 1), "guarded-sd/graph.pbtxt changed shape; update this helper"
    folder.mkdir(parents=True)
    (folder / "graph.pbtxt").write_text(text)
    return folder
