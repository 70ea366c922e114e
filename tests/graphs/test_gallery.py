"""The graphs/ gallery: every graph validates with the installed calculators, every config.json loads,
and every graph over a tiny model is served and answers a generation."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

from ovms_graph.config import load_config
from ovms_graph.graph import load_spec
from ovms_graph.registry import Registry
from ovms_graph.testing import ThreadedServer
from ovms_graph.validation import validate_graph

REPO = Path(__file__).resolve().parents[2]
GALLERY = REPO / "graphs"
FOLDERS = sorted(p.parent.name for p in GALLERY.glob("*/graph.pbtxt"))
#: Graphs served here (the LoRA graphs are served by tests/calculators/lora, demo by tests/demo and
#: tests/docs/test_tour.py), with a request each and the images it must return.
SERVED = {
    "tiny-sd": ({"prompt": "a red circle", "n": 2}, 2, (64, 64)),
    "tiny-sd-static": ({"prompt": "a red circle", "size": "64x64"}, 2, (64, 64)),
    "tiny-sdxl": ({"prompt": "a red circle", "prompt_2": "on black"}, 1, (64, 64)),
    "tiny-flux": ({"prompt": "a red circle", "prompt_2": "on black"}, 1, (64, 64)),
    "tiny-sd3": ({"prompt": "a red circle", "prompt_2": "on black", "prompt_3": "big", "negative_prompt": "blue",
                  "max_sequence_length": 256}, 1, (64, 64)),
    "tiny-lcm": ({"prompt": "a red circle", "n": 2}, 2, (64, 64)),
    "reference": ({"prompt": "a red circle", "num_inference_steps": 2, "size": "64x64"}, 1, (64, 64)),
}


def test_the_gallery_has_every_kind() -> None:
    assert {"reference", "demo", "tiny-sd", "tiny-sd-static", "tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-lcm",
            "lora-dynamic",
            "lora-composite", "lora-static", "lora-fuse-dynamic"} <= set(FOLDERS)


def reference_beside_a_model(root: Path) -> Path:
    """The reference document's graph, verbatim, in a model folder (models_path "./"), as OVMS lays it out."""
    folder = root / "reference"
    shutil.copytree(REPO / "models" / "tiny" / "sd15", folder)
    shutil.copy(GALLERY / "reference" / "graph.pbtxt", folder / "graph.pbtxt")
    (root / "config.json").write_text(json.dumps({"model_config_list": [
        {"config": {"name": "reference", "base_path": "reference"}}]}))
    return folder / "graph.pbtxt"


@pytest.mark.parametrize("name", FOLDERS)
def test_every_graph_validates(name: str, tmp_path: Path) -> None:
    registry = Registry.from_entry_points()
    graph = reference_beside_a_model(tmp_path) if name == "reference" else GALLERY / name / "graph.pbtxt"
    problems = validate_graph(load_spec(graph, registry), registry, graph_name=name)
    assert [str(p) for p in problems] == []


@pytest.mark.parametrize("name", [n for n in FOLDERS if n != "reference"])
def test_every_config_names_its_graph(name: str) -> None:
    (entry,) = load_config(GALLERY / name / "config.json")
    assert entry.graph_path.resolve() == (GALLERY / name / "graph.pbtxt").resolve()


@pytest.mark.parametrize("name", sorted(SERVED))
def test_tiny_model_graphs_serve_a_generation(name: str, tmp_path: Path) -> None:
    config = tmp_path / "config.json" if name == "reference" else GALLERY / name / "config.json"
    if name == "reference":
        reference_beside_a_model(tmp_path)
    body, images, size = SERVED[name]
    server = ThreadedServer.start(config, registry=Registry.from_entry_points(), limit=600)
    try:
        response = requests.post(f"{server.url}/v3/images/generations", json={"model": name, **body}, timeout=300)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert len(data) == images
        for item in data:
            image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
            assert (image.format, image.size) == ("PNG", size)
    finally:
        server.stop()
