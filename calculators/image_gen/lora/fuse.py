"""FUSE adapters merged into a copy of a UNet model's weights, next to DYNAMIC / STATIC adapters.

OpenVINO GenAI builds one adapter controller per model, with one mode, so it cannot fuse some
adapters and switch others. :class:`MergedModel` computes what MODE_FUSE would, bit for bit, and
writes a model folder carrying it; :class:`FusedFolder` owns that folder for one LoRA plan.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calculators.image_gen.lora.entries import LoraAdapter, names
from calculators.image_gen.lora.layer_names import (
    SGM_BLOCKS,
    WEIGHTED_LAYERS,
    applies,
    diffusers_layer_name,
    unet_submodels,
)
from calculators.image_gen.lora.safetensors_header import layer_of, read_header, read_lora_file

log = logging.getLogger("calculators.image_gen.lora")


def merge_unsupported(models_path: Path, adapters: Sequence[Path]) -> str | None:
    """Why the FUSE adapters cannot be merged by :class:`MergedModel` (None when they can)."""
    if not unet_submodels(models_path):
        return "only UNet models (SD 1.x/2.x, SDXL) are merged here"
    for path in adapters:
        _, keys = read_lora_file(path)
        if any(b in k for k in keys for b in SGM_BLOCKS):
            return f"{path} uses SGM block names (input_blocks, ...)"
    return None


def _as_float32_array(raw: Any, dtype: str) -> Any:
    import numpy as np

    if dtype == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return raw.view(np.float16 if dtype == "F16" else np.float32).astype(np.float32)


def load_lora_tensors(path: Path) -> dict[str, dict[str, Any]]:
    """Normalized layer name -> {"down", "up"} float32 arrays of one adapter, sorted by name (the
    order OpenVINO GenAI searches them in)."""
    import numpy as np

    problem, header, offset = read_header(path)
    if problem is not None:
        raise ValueError(problem)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    layers: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        grouped = layer_of(name)
        if grouped is None or grouped[1] == "alpha":
            continue
        begin, end = info["data_offsets"]
        values = _as_float32_array(np.asarray(data[offset + begin:offset + end]), info["dtype"])
        shape = info["shape"]
        layers.setdefault(diffusers_layer_name(grouped[0]), {})[grouped[1]] = values.reshape(
            shape[0], -1 if len(shape) > 1 else 1)
    return dict(sorted(layers.items()))


@dataclass
class MergedModel:
    """A model folder whose UNet / text encoders carry FUSE adapters merged into their weights."""

    path: Path
    submodels: tuple[str, ...]

    @classmethod
    def build(cls, models_path: Path, adapters: Sequence[tuple[Path, float]]) -> MergedModel:
        """Merge ``adapters`` (path, alpha) as OpenVINO GenAI's MODE_FUSE does: for every MatMul /
        Convolution an adapter applies to, W + (alpha * B) @ A, computed by the CPU plugin with the
        same graph, so the weights are bit-identical to MODE_FUSE's."""
        import openvino as ov  # type: ignore[import-untyped]

        core = ov.Core()
        tensors = [(load_lora_tensors(path), alpha) for path, alpha in adapters]
        dest = Path(tempfile.mkdtemp(prefix="ovms-graph-fused-"))
        try:
            merged: list[str] = []
            for sub, prefix in unet_submodels(models_path).items():
                xml = models_path / sub / "openvino_model.xml"
                if not xml.is_file():
                    continue
                model = core.read_model(str(xml))
                if _WeightMerger(core).fuse_into(model, tensors, prefix):
                    (dest / sub).mkdir()
                    ov.save_model(model, str(dest / sub / "openvino_model.xml"), compress_to_fp16=False)
                    for item in (models_path / sub).iterdir():
                        if not item.name.startswith("openvino_model."):
                            (dest / sub / item.name).symlink_to(item.resolve())
                    merged.append(sub)
            for item in models_path.iterdir():
                if not (dest / item.name).exists():
                    (dest / item.name).symlink_to(item.resolve())
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return cls(dest, tuple(merged))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


_Found = list[tuple[Mapping[str, Any], float]]


class _WeightMerger:
    """Replaces layer weights with W + (alpha * B) @ A for one model, computing the sum with small
    compiled helper models (one per weight signature, kept for this merger's lifetime)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.helpers: dict[tuple[Any, ...], Any] = {}

    def fuse_into(self, model: Any, adapters: Sequence[tuple[Mapping[str, Mapping[str, Any]], float]],
                  prefix: str) -> int:
        """Replace the weights of every layer the adapters apply to; returns how many were replaced."""
        replaced = 0
        for node in model.get_ordered_ops():
            if node.get_type_name() not in WEIGHTED_LAYERS:
                continue
            found = _applying(adapters, prefix, node.get_friendly_name())
            if found:
                self._replace(node, found)
                replaced += 1
        return replaced

    def _replace(self, node: Any, found: _Found) -> None:
        import numpy as np
        from openvino import opset13 as ops

        weights = node.input_value(1)
        source = weights.get_node()
        convert = source if source.get_type_name() == "Convert" else None
        constant = convert.input_value(0).get_node() if convert is not None else source
        if constant.get_type_name() != "Constant":
            raise ValueError(f"cannot merge a LoRA adapter into {node.get_friendly_name()}: its weights are not a "
                             "plain constant (compressed weights?); MODE_FUSE needs f32/f16/bf16 weights")
        down = np.concatenate([np.asarray(p["down"]) for p, _ in found], axis=0)
        up = np.concatenate([np.asarray(p["up"]) for p, _ in found], axis=1)
        alphas = np.concatenate([np.full((1, np.asarray(p["down"]).shape[0]), a, np.float32) for p, a in found],
                                axis=1)
        target_rank = len(weights.get_partial_shape())
        signature = (constant.get_output_element_type(0).get_type_name(), str(constant.get_output_partial_shape(0)),
                     convert is not None, target_rank, down.shape, up.shape)
        compiled = self.helpers.get(signature)
        if compiled is None:
            compiled = self._helper(constant, convert, target_rank, alphas.shape, up.shape, down.shape)
            self.helpers[signature] = compiled
        fused = compiled([constant.get_tensor_view(), alphas, up, down])[0]
        replacement = ops.constant(np.array(fused, copy=True))
        for consumer in list(weights.get_target_inputs()):
            consumer.replace_source_output(replacement.output(0))

    def _helper(self, constant: Any, convert: Any, target_rank: int, alphas_shape: tuple[int, ...],
                up_shape: tuple[int, ...], down_shape: tuple[int, ...]) -> Any:
        """A compiled model computing W + (alpha * B) @ A in W's (converted) element type."""
        import numpy as np
        import openvino as ov
        from openvino import opset13 as ops

        w = ops.parameter(constant.get_output_partial_shape(0), constant.get_output_element_type(0))
        target = ops.convert(w, convert.get_output_element_type(0)) if convert is not None else w
        target_type = target.get_output_element_type(0)
        inputs = [ops.parameter(list(alphas_shape), np.float32), ops.parameter(list(up_shape), np.float32),
                  ops.parameter(list(down_shape), np.float32)]
        cast = [p if target_type == ov.Type.f32 else ops.convert(p, target_type) for p in inputs]
        delta = ops.matmul(ops.multiply(cast[0], cast[1]), cast[2], False, False)
        if target_rank != 2:
            delta = ops.reshape(delta, ops.constant(np.array([0, 0] + [1] * (target_rank - 2), np.uint32)), True)
        helper = ov.Model([ops.add(target, delta)], [w, *inputs])
        return self.core.compile_model(helper, "CPU")


def _applying(adapters: Sequence[tuple[Mapping[str, Mapping[str, Any]], float]], prefix: str, name: str) -> _Found:
    """The first layer of each adapter that applies to the node ``name``, with the adapter's alpha."""
    found: _Found = []
    for layers, alpha in adapters:
        for key, parts in layers.items():
            if applies(key, prefix, name):
                found.append((parts, alpha))
                break
    return found


class FusedFolder:
    """The merged model folder of one LoRA plan: built on first use, removed by :meth:`close` or
    when its owner is collected. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._merged: MergedModel | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def merged(self) -> bool:
        """True once the FUSE adapters were merged into a folder (then they are not passed to GenAI)."""
        return self._merged is not None

    def model_dir(self, models_path: Path, fused: Sequence[LoraAdapter], others: str) -> Path:
        """The merged folder for ``fused`` adapters on ``models_path`` (built once), or ``models_path``
        itself when they cannot be merged; ``others`` names the mode they share the model with."""
        with self._lock:
            if self._merged is not None:
                return self._merged.path
            reason = merge_unsupported(models_path, [a.path for a in fused])
            if reason is not None:
                log.warning("FUSE LoRA adapters %s cannot be merged into %s (%s); they are applied at their "
                            "fixed alpha together with the %s adapters instead", names(fused), models_path,
                            reason, others)
                return models_path
            started = time.monotonic()
            merged = MergedModel.build(models_path, [(a.path, a.alpha) for a in fused])
            self._merged = merged
            self._finalizer = weakref.finalize(self, merged.remove)
            log.info("FUSE LoRA adapters %s merged into %s (%s) in %.1f s", names(fused), merged.path,
                     ", ".join(merged.submodels), time.monotonic() - started)
            return merged.path

    def close(self) -> None:
        """Remove the merged folder, if one was built. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()
