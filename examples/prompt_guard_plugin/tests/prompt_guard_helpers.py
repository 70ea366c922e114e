"""Builders shared by the plugin's tests: request payloads, the node under test, a real server.

The tests run after ``pip install -e examples/prompt_guard_plugin``. That install is what makes the
entry point, and so the calculator in a served graph, visible to ovms-graph.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from ovms_graph.packets import HttpPayload, MultipartView, UploadedFile
from ovms_graph.registry import Registry
from ovms_graph.testing import ServerProcess, serving

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
#: The running server the tests talk to (its ``url``, ``process`` and ``output()``).
Server: TypeAlias = ServerProcess


@contextmanager
def serve(config: Path, workdir: Path) -> Iterator[Server]:
    """``ovms-graph serve`` on a free port, entered once every graph is loaded, SIGTERM on exit.

    The exit status is ``server.process.returncode`` after the block.
    """
    assert (TINY_SD15 / "model_index.json").is_file(), (
        f"the tiny SD1.5 model is missing under {TINY_SD15}; build it with `make fixtures` in the repository")
    with serving(["--config_path", str(config), "--rest_port", "0", "--rest_bind_address", "127.0.0.1"],
                 cwd=workdir, log=workdir / "server.log", limit=STARTUP_LIMIT, stop_timeout=STARTUP_LIMIT) as server:
        yield server


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
