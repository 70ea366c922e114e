"""The compiled-model cache (``--cache_dir``, plugin_config ``CACHE_DIR``) on the tiny SD1.5 model.

A second start finds the blobs the first one wrote, and a model whose files changed is never served
from a blob compiled for the old files: OpenVINO keys its cache by the model itself (graph and
weights) and the compile properties, not by the folder it was read from.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ovms_graph.cli import build_parser, server_options
from ovms_graph.settings import ServerOptions
from ovms_graph.testing import ThreadedServer
from tests.calculators.image_gen.helpers import F32, REPO, TINY, graph_text, pixels, registry, wait_for_tiny_models

DEMO = REPO / "models" / "demo" / "shapes"
BODY = {"prompt": "a red circle", "size": "64x64", "num_inference_steps": 2, "rng_seed": 7}


@pytest.fixture(scope="module", autouse=True)
def tiny_models() -> None:
    wait_for_tiny_models(("sd15",))


def generate_once(root: Path, model: Path, cache_dir: Path | None, plugin_config: str = F32) -> np.ndarray:
    """Start a server on ``model`` (``--cache_dir cache_dir``), generate BODY, stop; the pixels."""
    import requests

    root.mkdir(parents=True, exist_ok=True)
    folder = root / "sd"
    folder.mkdir(exist_ok=True)
    (folder / "graph.pbtxt").write_text(graph_text(f'models_path: "{model}"', f"plugin_config: '{plugin_config}'"))
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}]}))
    server = ThreadedServer.start(config, registry=registry(), options=ServerOptions(rest_port=0, cache_dir=cache_dir),
                                  limit=600)
    try:
        response = requests.post(f"{server.url}/v3/images/generations", json=BODY, timeout=120)
        assert response.status_code == 200, response.text
        return pixels(response.json()["data"][0]["b64_json"])
    finally:
        server.stop()


def blobs(cache_dir: Path) -> dict[str, int]:
    """Every file in the cache folder with its modification time."""
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.rglob("*") if p.is_file()} if cache_dir.exists() else {}


def negate_weight(component: Path, suffix: str) -> None:
    """Negate one f32 weight tensor in ``component``'s openvino_model.bin; the .xml stays byte for byte."""
    root = ET.parse(component / "openvino_model.xml").getroot()
    layer = next(layer for layer in root.iter("layer")
                 if layer.get("type") == "Const" and (layer.get("name") or "").endswith(suffix))
    data = layer.find("data")
    assert data is not None and data.get("element_type") == "f32"
    offset, size = int(data.get("offset", "0")), int(data.get("size", "0"))
    weights = bytearray((component / "openvino_model.bin").read_bytes())
    values = np.frombuffer(bytes(weights[offset:offset + size]), dtype=np.float32)
    weights[offset:offset + size] = (-values).astype(np.float32).tobytes()
    (component / "openvino_model.bin").write_bytes(bytes(weights))


def test_the_flag_reaches_the_server_options_as_an_absolute_path() -> None:
    ns = build_parser().parse_args(["serve", "--config_path", "c.json", "--cache_dir", "some/cache"])
    assert server_options(ns).cache_dir == Path("some/cache").resolve()
    ns = build_parser().parse_args(["serve", "--config_path", "c.json"])
    assert server_options(ns).cache_dir is None


def test_a_second_start_finds_the_blobs_and_draws_the_same_image(tmp_path: Path) -> None:
    model = shutil.copytree(TINY / "sd15", tmp_path / "model")
    cache = tmp_path / "cache"
    first = generate_once(tmp_path / "a", model, cache)
    written = blobs(cache)
    assert written, "the first start wrote no compiled blobs"
    second = generate_once(tmp_path / "b", model, cache)
    assert blobs(cache) == written, "the second start compiled again instead of loading the blobs"
    np.testing.assert_array_equal(second, first)


@pytest.mark.parametrize("change", ["weights", "whole model"])
def test_changed_model_files_are_never_served_from_a_stale_blob(tmp_path: Path, change: str) -> None:
    model = shutil.copytree(TINY / "sd15", tmp_path / "model")
    cache = tmp_path / "cache"
    old = generate_once(tmp_path / "a", model, cache)
    before = blobs(cache)
    if change == "weights":  # the same path, the same .xml, one tensor of the UNet's .bin changed
        negate_weight(model / "unet", "conv_in.weight")
    else:  # another model (the trained demo) copied over the same folder
        shutil.rmtree(model)
        shutil.copytree(DEMO, model)
    served = generate_once(tmp_path / "b", model, cache)
    uncached = generate_once(tmp_path / "c", model, None)
    assert not np.array_equal(uncached, old), "the change should alter the image"
    np.testing.assert_array_equal(served, uncached)
    assert set(blobs(cache)) > set(before), "the changed model should have been compiled into new blobs"


def test_a_graphs_own_cache_dir_wins_over_the_flag(tmp_path: Path) -> None:
    own = tmp_path / "graph-cache"
    flag = tmp_path / "flag-cache"
    plugin = json.dumps({"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(own)})
    generate_once(tmp_path / "a", TINY / "sd15", flag, plugin_config=plugin)
    assert blobs(own)
    assert not blobs(flag)
