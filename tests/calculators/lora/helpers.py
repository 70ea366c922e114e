"""Small builders for LoRA tests: safetensors files and a model folder skeleton, written by hand."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from google.protobuf import text_format

from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import LoadContext

#: Layer names as the tiny SD1.5 IR spells them (friendly names of MatMul / Convolution nodes).
UNET_LAYERS = (
    "__module.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q/aten::linear/MatMul",
    "__module.down_blocks.0.attentions.0.proj_in/aten::_convolution/Convolution",
)
TE_LAYERS = ("__module.text_model.encoder.layers.0.self_attn.q_proj/aten::linear/MatMul",)
KOHYA_UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
KOHYA_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def write_safetensors(path: Path, tensors: Mapping[str, Sequence[int]], dtype: str = "F32") -> Path:
    """A valid safetensors file with zero-filled tensors of the given shapes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def kohya_lora(path: Path, *layers: str, dtype: str = "F32") -> Path:
    """A kohya-format LoRA (down, up, alpha) touching ``layers``."""
    tensors: dict[str, Sequence[int]] = {}
    for layer in layers:
        tensors[f"{layer}.lora_down.weight"] = (2, 8)
        tensors[f"{layer}.lora_up.weight"] = (8, 2)
        tensors[f"{layer}.alpha"] = ()
    return write_safetensors(path, tensors, dtype)


def fake_model(root: Path) -> Path:
    """A model folder skeleton whose IR XMLs list the layers above (enough for the layer check)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for sub, names in (("unet", UNET_LAYERS), ("text_encoder", TE_LAYERS)):
        (root / sub).mkdir(exist_ok=True)
        layers = "".join(
            f'<layer id="{i}" name="{n}" type="{n.rsplit("/", 1)[-1]}" version="opset1"/>' for i, n in enumerate(names))
        xml = f'<?xml version="1.0"?><net name="m"><layers>{layers}</layers></net>'
        (root / sub / "openvino_model.xml").write_text(xml)
    return root


def options(text: str) -> ImageGenCalculatorOptions:
    """ImageGenCalculatorOptions from the body of a node_options block (pbtxt)."""
    msg = ImageGenCalculatorOptions()
    text_format.Parse(text, msg)
    return msg


def load_context(graph_dir: Path, graph_name: str = "sd") -> LoadContext:
    return LoadContext(graph_name, graph_dir / "graph.pbtxt")


def rename_lora(source: Path, dest: Path, rename: Callable[[str], str | None]) -> Path:
    """A copy of the safetensors file ``source`` with every tensor renamed (None drops it)."""
    raw = source.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    out: dict[str, object] = {}
    data = b""
    for name, info in header.items():
        new = None if name == "__metadata__" else rename(name)
        if new is None:
            continue
        begin, end = info["data_offsets"]
        chunk = raw[8 + size + begin:8 + size + end]
        out[new] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [len(data), len(data) + len(chunk)]}
        data += chunk
    encoded = json.dumps(out).encode()
    dest.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return dest
