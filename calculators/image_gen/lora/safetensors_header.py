"""Reading a LoRA ``.safetensors`` file's header (never its tensors) as OpenVINO GenAI groups it."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

SAFETENSORS_DTYPES = {"F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024
# OpenVINO GenAI's default LoRA tensor patterns (lora/adapter.cpp, default_lora_patterns).
_PART_A = re.compile(r"((.*)[_.](lora[_.](A|down)\.weight))|((.*lora[12])\.(down\.weight))")
_PART_B = re.compile(r"((.*)[_.](lora[_.](B|up)\.weight))|((.*lora[12])\.(up\.weight))")
_PART_ALPHA = re.compile(r"(.*)\.alpha")


def layer_of(name: str) -> tuple[str, str] | None:
    """``(layer, part)`` of a LoRA tensor name as OpenVINO GenAI groups it, part in down/up/alpha."""
    for pattern, part in ((_PART_A, "down"), (_PART_B, "up")):
        match = pattern.fullmatch(name)
        if match is not None:
            return (match.group(2) if match.group(2) is not None else match.group(6)), part
    match = _PART_ALPHA.fullmatch(name)
    return (match.group(1), "alpha") if match is not None else None


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"{path} is not a file"
    if path.suffix.lower() != ".safetensors":
        return f"{path} is not a .safetensors file"
    return None


def _read_raw_header(path: Path) -> tuple[str | None, bytes]:
    """``(problem, header bytes)``: the length-prefixed header block of a safetensors file."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path} is not a valid .safetensors file (it is {len(head)} bytes long)", b""
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                return f"{path} is not a valid .safetensors file (header size {size} is implausible)", b""
            raw = fh.read(size)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", b""
    if len(raw) < size:
        return f"{path} is not a valid .safetensors file (truncated header)", b""
    return None, raw


def read_header(path: Path) -> tuple[str | None, dict[str, Any], int]:
    """``(problem, header, data offset)`` of a safetensors file; reads the header only. The problem
    is user-facing (without the alias) or None; on a problem the header is empty."""
    problem = _file_problem(path)
    if problem is not None:
        return problem, {}, 0
    problem, raw = _read_raw_header(path)
    if problem is not None:
        return problem, {}, 0
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path} is not a valid .safetensors file (its header is not JSON)", {}, 0
    if not isinstance(header, dict):
        return f"{path} is not a valid .safetensors file (its header is not a JSON object)", {}, 0
    return None, header, 8 + len(raw)


def read_lora_file(path: Path) -> tuple[str | None, set[str]]:
    """``(problem, layer keys)`` of a .safetensors LoRA file: the problem (user-facing, without the
    alias) or None, and the LoRA layer names its tensors address (``lora_unet_..._to_q``).

    Reads the header only. Mirrors what openvino_genai.Adapter requires: a safetensors file whose
    LoRA tensors are F32, F16 or BF16 and come in down/up pairs.
    """
    problem, header, _ = read_header(path)
    if problem is not None:
        return problem, set()
    problem, parts = _layer_parts(header)
    if problem is not None:
        return problem, set()
    if not parts:
        return f"{path} contains no LoRA tensors (expected names like lora_unet_..._to_q.lora_down.weight)", set()
    for layer, kinds in sorted(parts.items()):
        if not {"down", "up"} <= kinds:
            missing = "up" if "down" in kinds else "down"
            return f"LoRA layer {layer} has no {missing} weight", set()
    return None, set(parts)


def _layer_parts(header: dict[str, Any]) -> tuple[str | None, dict[str, set[str]]]:
    """``(problem, layer -> parts)`` of a header's LoRA tensors; the problem names the first tensor
    whose dtype OpenVINO GenAI cannot read."""
    parts: dict[str, set[str]] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        grouped = layer_of(name)
        if grouped is None:
            continue
        dtype = info.get("dtype")
        if dtype not in SAFETENSORS_DTYPES:
            return f"tensor {name} has dtype {dtype}; OpenVINO GenAI reads only F32, F16 and BF16 LoRA tensors", {}
        parts.setdefault(grouped[0], set()).add(grouped[1])
    return None, parts
