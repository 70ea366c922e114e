"""Builders shared by the ImageGenCalculator tests: node snippets, registries, tiny-model paths."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from calculators.image_gen_calculator import ImageGenCalculator
from ovms_graph.registry import Registry

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "models" / "tiny"
#: Pixel-exact comparisons need f32: the default bf16 is not bit-stable across pipeline objects.
F32 = '{"INFERENCE_PRECISION_HINT": "f32"}'

NODE = """node {{
  name: "gen"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {{
    [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{
{options}
    }}
  }}
}}
"""
#: Line of the first option line in NODE.
FIRST_OPTION_LINE = 9


def node_text(*options: str) -> str:
    """An ImageGenCalculator node with ``options`` (pbtxt lines) inside its node_options."""
    return NODE.format(options="\n".join(f"      {line}" for line in options))


def graph_text(*options: str) -> str:
    """A whole graph.pbtxt serving one ImageGenCalculator node."""
    return ('input_stream: "HTTP_REQUEST_PAYLOAD:input"\noutput_stream: "HTTP_RESPONSE_PAYLOAD:output"\n'
            + node_text(*options))


def registry() -> Registry:
    reg = Registry()
    reg.register(ImageGenCalculator)
    return reg


def fake_model(folder: Path, class_name: str = "StableDiffusionPipeline") -> Path:
    """A model folder skeleton: enough for option checks, not for loading."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def wait_for_tiny_models(names: tuple[str, ...] = ("sd15", "sd15-inpaint", "sdxl", "flux"),
                         timeout: float = 0.0) -> None:
    """Fail (never skip) with a clear message when the tiny models have not been built."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [n for n in names if not (TINY / n / "model_index.json").is_file()]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(5)
    assert not missing, (f"tiny models {missing} are missing under {TINY}; build them with "
                         "`make fixtures` (tools/build_tiny_models.py)")


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB") -> bytes:
    """A solid-colour image file."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color if mode != "L" else color[0]).save(buffer, "PNG")
    return buffer.getvalue()


def decode_b64(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode_b64(b64).convert("RGB"))


def cpu_count() -> int:
    return os.cpu_count() or 1
