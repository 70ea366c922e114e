"""Real servers on 127.0.0.1 for the LoRA tests: the graphs/lora-* examples, each loaded from its own
config.json, started on first use and shared by the session; plus openvino_genai run directly."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from calculators.image_gen.pipelines import ImageGenResources
from calculators.image_gen_calculator import ImageGenCalculator
from ovms_graph.registry import Registry
from ovms_graph.testing import ThreadedServer

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "models" / "tiny"
SD15 = TINY / "sd15"
LORAS = TINY / "loras"
EXAMPLES = REPO / "graphs"
F32: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}


def require_tiny_loras() -> None:
    """Fail (never skip) with a clear message when the tiny model or its LoRAs are missing."""
    missing = [str(p) for p in (SD15 / "model_index.json", *(LORAS / f"lora_{n}.safetensors" for n in "abc"))
               if not p.is_file()]
    assert not missing, f"tiny model files missing: {missing}; build them with `make fixtures`"


class LiveServer(ThreadedServer):
    """One running server: base URL, app and loop (in a background thread)."""

    def resources(self, graph: str) -> ImageGenResources:
        (value,) = self.graph(graph).resources.values()
        assert isinstance(value, ImageGenResources)
        return value

    def generate(self, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/v3/images/generations", json=body, timeout=300)

    def edit(self, fields: dict[str, str], files: dict[str, bytes]) -> requests.Response:
        parts = {name: (f"{name}.png", data, "image/png") for name, data in files.items()}
        return requests.post(f"{self.url}/v3/images/edits", data=fields, files=parts, timeout=300)

    def models(self) -> list[str]:
        response = requests.get(f"{self.url}/v3/models", timeout=60)
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["data"]]


def registry() -> Registry:
    reg = Registry()
    reg.register(ImageGenCalculator)
    return reg


def serve(config: Path) -> LiveServer:
    """Serve every graph of ``config`` on a free port of 127.0.0.1; returns once all are loaded."""
    require_tiny_loras()
    server = LiveServer.start(config, registry=registry())
    assert isinstance(server, LiveServer)
    return server


#: The precisions every test of adapter switching, derived pipelines and pipeline-set reuse runs at:
#: the CPU's default (bf16 where the plugin reports BF16) and f32.
PRECISIONS = ("default", "f32")


def at_default_precision(graph_text: str) -> str:
    """``graph_text`` with INFERENCE_PRECISION_HINT removed from every plugin_config (other keys kept)."""
    def strip(match: re.Match[str]) -> str:
        config = json.loads(match.group(1))
        config.pop("INFERENCE_PRECISION_HINT", None)
        return f"plugin_config: '{json.dumps(config)}'" if config else ""

    out = re.sub(r"plugin_config: '([^']*)'", strip, graph_text)
    assert "INFERENCE_PRECISION_HINT" not in out
    return out


class Servers:
    """Lazily started servers: ``servers["lora-dynamic"]`` serves graphs/lora-dynamic/config.json (f32,
    as committed); ``servers.example(name, "default")`` the same graph at the CPU's default precision;
    ``servers.custom(name, config)`` serves any other config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: dict[str, LiveServer] = {}
        self._lock = threading.Lock()

    def __getitem__(self, example: str) -> LiveServer:
        return self.custom(example, EXAMPLES / example / "config.json")

    def example(self, example: str, precision: str) -> LiveServer:
        """graphs/<example> at ``precision`` (one of PRECISIONS)."""
        assert precision in PRECISIONS, precision
        if precision == "f32":
            return self[example]
        folder = self.root / f"{example}-{precision}"
        if not folder.exists():
            folder.mkdir(parents=True)
            text = (EXAMPLES / example / "graph.pbtxt").read_text().replace("../../models/tiny", str(TINY))
            (folder / "graph.pbtxt").write_text(at_default_precision(text))
            config = json.loads((EXAMPLES / example / "config.json").read_text())
            for entry in config["model_config_list"]:
                entry["config"]["base_path"] = "."
            (folder / "config.json").write_text(json.dumps(config))
        return self.custom(f"{example}-{precision}", folder / "config.json")

    def custom(self, key: str, config: Path) -> LiveServer:
        with self._lock:
            if key not in self._servers:
                self._servers[key] = serve(config)
            return self._servers[key]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    pool = Servers(tmp_path_factory.mktemp("lora-graphs"))
    yield pool
    pool.close()


# ----- images and direct openvino_genai -----
def images(response: requests.Response) -> list[np.ndarray]:
    """The RGB pixels of every image of a 200 response."""
    assert response.status_code == 200, response.text
    out = []
    for item in response.json()["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        out.append(np.asarray(image.convert("RGB")))
    return out


def generate_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """openvino_genai generate() keywords for a generations request body."""
    kwargs: dict[str, Any] = {}
    for key in ("rng_seed", "num_inference_steps", "guidance_scale", "negative_prompt", "strength"):
        if key in body:
            kwargs[key] = body[key]
    if "size" in body:
        kwargs["width"], kwargs["height"] = map(int, body["size"].split("x"))
    return kwargs


def adapter(name: str) -> Any:
    import openvino_genai

    return openvino_genai.Adapter(str(LORAS / f"lora_{name}.safetensors"))


def direct_text2image(body: dict[str, Any], registered: Sequence[tuple[Any, float]], mode: str,
                      active: Sequence[tuple[Any, float]] | None = None, *, models: Path = SD15,
                      properties: dict[str, Any] | None = None) -> np.ndarray:
    """openvino_genai's own image for ``body``: a fresh Text2ImagePipeline compiled with
    ``AdapterConfig(registered, mode)`` (none when empty) and, when ``active`` is given, generate
    called with ``adapters=AdapterConfig(active)``. Fresh, so its first generate applies the
    configuration in full."""
    import openvino_genai

    pipe = openvino_genai.Text2ImagePipeline(str(models))
    props = dict(properties if properties is not None else F32)
    if registered:
        props["adapters"] = openvino_genai.AdapterConfig(list(registered), getattr(
            openvino_genai.AdapterConfig.Mode, mode))
    pipe.compile("CPU", **props)
    kwargs = generate_kwargs(body)
    if active is not None:
        kwargs["adapters"] = openvino_genai.AdapterConfig(list(active))
    return np.array(pipe.generate(body["prompt"], **kwargs).data, copy=True)
