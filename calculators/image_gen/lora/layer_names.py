"""How OpenVINO GenAI's UNet pipelines name LoRA layers, and which layers of a model they reach.

An emulation of ``lora/names_mapping.cpp`` and the matching rule of ``lora/adapter.cpp``, read from
the model's OpenVINO IR XML: it answers, without loading a model, whether an adapter would apply.
"""

from __future__ import annotations

import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("calculators.image_gen.lora")

#: SGM block names, which OpenVINO GenAI renames through block arithmetic (not modelled here).
SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
#: Layer types a LoRA adapter applies to.
WEIGHTED_LAYERS = {"MatMul", "Convolution"}

_UNET_RULES: tuple[tuple[str, str], ...] = (
    (r"input\.blocks", "down_blocks"), (r"down\.blocks", "down_blocks"), (r"middle\.block", "mid_block"),
    (r"mid\.block", "mid_block"), (r"output\.blocks", "up_blocks"), (r"up\.blocks", "up_blocks"),
    (r"transformer\.blocks", "transformer_blocks"), (r"to\.q", "to_q"), (r"to\.k", "to_k"), (r"to\.v", "to_v"),
    (r"to\.out\.0", "to_out"), (r"proj\.in", "proj_in"), (r"proj\.out", "proj_out"),
    (r"emb\.layers", "time_emb_proj"),
)


def diffusers_layer_name(key: str) -> str:
    """A LoRA layer name as OpenVINO GenAI's SD / SDXL pipelines rename it before matching
    (``diffusers_normalization`` in lora/names_mapping.cpp; SGM block names are not handled here)."""
    name = re.sub(r"lora.unet", "lora_unet", key)
    if not name.startswith("lora_unet"):
        if "lora_te" not in name:
            name = "lora_unet." + re.sub(r"\.processor\.", ".", name)
        return name
    name = name.replace("_", ".")
    for pattern, repl in _UNET_RULES:
        name = re.sub(pattern, repl, name)
    if "emb" in name and "time.emb.proj" not in name:
        name = re.sub(r"\.\d+(?=\D*$)", "", name)
    name = _resnet_names(name)
    for pattern, repl in ((r"lora.unet", "lora_unet"), (r"lora.te", "lora_te"), (r"base.model", "base_model")):
        name = re.sub(pattern, repl, name)
    return name


def _resnet_names(name: str) -> str:
    """The ResNet and sampler layer renames of ``diffusers_normalization`` (dotted names)."""
    if ".in." in name:
        name = re.sub(r"in\.layers\.2", "conv1", name)
    if ".out." in name:
        name = re.sub(r"out\.layers\.3", "conv2", name)
    if "downsamplers" in name or "upsamplers" in name:
        name = re.sub("op", "conv", name)
    if "skip" in name:
        name = re.sub(r"skip\.connection", "conv_shortcut", name)
    return name


def unet_submodels(root: Path) -> dict[str, str]:
    """Submodel folder -> LoRA prefix OpenVINO GenAI uses for it, for UNet models (SD 1.x/2.x, SDXL,
    LCM and their inpainting variants); empty for other architectures."""
    if not (root / "unet" / "openvino_model.xml").is_file():
        return {}
    if (root / "text_encoder_2").is_dir():
        return {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    return {"unet": "lora_unet", "text_encoder": "lora_te"}


def applies(key: str, prefix: str, name: str) -> bool:
    """OpenVINO GenAI's rule: the layer name without the prefix is a substring of the node's
    friendly name, or of the friendly name with dots as underscores."""
    if not key.startswith(prefix):
        return False
    rest = key[len(prefix):]
    return rest in name or rest in name.replace(".", "_")


class LayerIndex:
    """Friendly names of the weighted layers (MatMul, Convolution) of a UNet model's submodels, read
    from the OpenVINO IR XML: answers which LoRA layers OpenVINO GenAI would apply."""

    def __init__(self, root: Path, layers: Mapping[str, tuple[str, ...]], prefixes: Mapping[str, str]) -> None:
        self.root = root
        self.layers = dict(layers)
        self.prefixes = dict(prefixes)

    def match(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """``(matched, unmatched)`` LoRA layer keys. SGM-style keys (``input_blocks``), which OpenVINO
        GenAI renames through block arithmetic, count as matched: they are not refused."""
        matched: set[str] = set()
        unmatched: set[str] = set()
        for key in keys:
            ok = any(b in key for b in SGM_BLOCKS) or self._matches(diffusers_layer_name(key))
            (matched if ok else unmatched).add(key)
        return matched, unmatched

    def _matches(self, key: str) -> bool:
        return any(applies(key, self.prefixes[sub], name)
                   for sub, names in self.layers.items() for name in names)


class LayerIndexes:
    """The :class:`LayerIndex` of each model folder, read once per folder and modification time.

    Owned by whoever asks repeatedly (a LoRA plan); thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, float], LayerIndex] = {}

    def for_model(self, root: Path) -> LayerIndex | None:
        """The index of the model folder ``root``, or None when it is not a UNet model (then the
        names go through rules this index does not model, e.g. FLUX's)."""
        prefixes = unet_submodels(root)
        if not prefixes:
            return None
        xmls = {sub: root / sub / "openvino_model.xml" for sub in prefixes}
        xmls = {sub: xml for sub, xml in xmls.items() if xml.is_file()}
        key = (str(root.resolve()), max(xml.stat().st_mtime for xml in xmls.values()))
        with self._lock:
            cached = self._known.get(key)
        if cached is not None:
            return cached
        index = LayerIndex(root, {sub: weighted_layer_names(xml) for sub, xml in xmls.items()}, prefixes)
        with self._lock:
            return self._known.setdefault(key, index)


def weighted_layer_names(xml: Path) -> tuple[str, ...]:
    """Friendly names of the MatMul / Convolution layers of one OpenVINO IR XML (empty, with a
    warning in the log, when it cannot be read)."""
    names: list[str] = []
    try:
        for _, elem in ET.iterparse(str(xml), events=("end",)):
            if elem.tag == "layer":
                if elem.get("type") in WEIGHTED_LAYERS:
                    names.append(elem.get("name", ""))
                elem.clear()
    except (ET.ParseError, OSError) as exc:
        log.warning("cannot read layer names from %s: %s", xml, exc)
    return tuple(names)
