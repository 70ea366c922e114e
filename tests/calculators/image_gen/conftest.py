"""Real servers on 127.0.0.1 serving the tiny models, started once per session and shared.

Each graph of :data:`GRAPHS` is served by its own server, started (and its pipelines loaded) the
first time a test asks for it; the server runs ovms_graph.server.create_app on its own event loop
in a background thread, so tests talk to it with ordinary HTTP clients (requests, openai).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from calculators.image_gen.pipelines import ImageGenResources
from ovms_graph.testing import ThreadedServer
from tests.calculators.image_gen.helpers import F32, TINY, graph_text, registry, wait_for_tiny_models

LORA_A = TINY / "loras" / "lora_a.safetensors"

#: Served graphs by name: the model folder under models/tiny and the node options besides models_path.
GRAPHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sd15": ("sd15", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2",
                      "max_num_inference_steps: 1000000", 'max_resolution: "256x256"')),
    "sd15-x2": ("sd15", ("plugin_config: '{\"INFERENCE_PRECISION_HINT\": \"f32\", \"NUM_STREAMS\": 2}'",
                         "default_num_inference_steps: 2", "max_num_inference_steps: 1000000")),
    "sd15-default": ("sd15", (f"plugin_config: '{F32}'", 'default_resolution: "32x48"',
                              "default_num_inference_steps: 1")),
    "sd15-seeded": ("sd15", (f"plugin_config: '{F32}'", "default_num_inference_steps: 1", "default_rng_seed: 99")),
    "sd15-static": ("sd15", (f"plugin_config: '{F32}'", 'resolution: "32x32"', "num_images_per_prompt: 2",
                             "guidance_scale: 3.0", "default_num_inference_steps: 2")),
    "sd15-inpaint": ("sd15-inpaint", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2")),
    "sd15-x2-default": ("sd15", ("plugin_config: '{\"NUM_STREAMS\": 2}'", "default_num_inference_steps: 2",
                                 "max_num_inference_steps: 1000000")),
    # A DYNAMIC LoRA on derived pipelines, at the default precision (bf16 where the CPU has it) and at f32.
    "sd15-lora": ("sd15", ("default_num_inference_steps: 2",
                           f'lora_adapters {{ alias: "style" path: "{LORA_A}" }}')),
    "sd15-lora-f32": ("sd15", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2",
                               f'lora_adapters {{ alias: "style-f32" path: "{LORA_A}" }}')),
    "sdxl": ("sdxl", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2")),
    "flux": ("flux", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2")),
    "sd3": ("sd3", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2")),
    # No default_num_inference_steps: LCM takes the model's own (4).
    "lcm": ("lcm", (f"plugin_config: '{F32}'",)),
    # Two pipeline sets: the CPU threads are split between them (INFERENCE_NUM_THREADS per set).
    "sd3-x2": ("sd3", ("plugin_config: '{\"INFERENCE_PRECISION_HINT\": \"f32\", \"NUM_STREAMS\": 2}'",
                       "default_num_inference_steps: 2")),
    "lcm-x2": ("lcm", ("plugin_config: '{\"INFERENCE_PRECISION_HINT\": \"f32\", \"NUM_STREAMS\": 2}'",)),
    # The CPU's default precision (bf16 where it has it), LoRA included.
    "sd3-default": ("sd3", ("default_num_inference_steps: 2",)),
    "lcm-default": ("lcm", (f'lora_adapters {{ alias: "lcm-default-style" '
                            f'path: "{TINY / "loras" / "lora_a.safetensors"}" }}',)),
    "sd3-lora": ("sd3", (f"plugin_config: '{F32}'", "default_num_inference_steps: 2",
                         f'lora_adapters {{ alias: "sd3-style" path: "{TINY / "loras" / "lora_sd3.safetensors"}" }}')),
    "lcm-lora": ("lcm", (f"plugin_config: '{F32}'",
                         f'lora_adapters {{ alias: "lcm-style" path: "{TINY / "loras" / "lora_a.safetensors"}" }}')),
}


class LiveServer(ThreadedServer):
    """One running server: its base URL and a view of its loaded graphs."""

    def resources(self, graph: str) -> ImageGenResources:
        (value,) = self.graph(graph).resources.values()
        assert isinstance(value, ImageGenResources)
        return value

    def post(self, route: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/v3/{route}", timeout=120, **kwargs)

    def generate(self, body: dict[str, Any]) -> requests.Response:
        return self.post("images/generations", json=body)


def start_server(root: Path, name: str, text: str) -> LiveServer:
    """Serve graph ``name`` (graph.pbtxt ``text``) on a free port; returns once it is ready."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.pbtxt").write_text(text)
    config = root / f"{name}.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": name, "base_path": name}}]}))
    server = LiveServer.start(config, registry=registry(), limit=600)
    assert isinstance(server, LiveServer)
    return server


class Servers:
    """Lazily started servers, one per graph of GRAPHS."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: dict[str, LiveServer] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> LiveServer:
        with self._lock:
            if name not in self._servers:
                model, options = GRAPHS[name]
                wait_for_tiny_models((model,))
                text = graph_text(f'models_path: "{TINY / model}"', *options)
                self._servers[name] = start_server(self.root, name, text)
            return self._servers[name]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    pool = Servers(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.close()
