"""Memory of pipeline sets: what a node's sets will hold, what the machine has, and the load-time refusal.

With the openvino_genai 2026.4 Python bindings (no ``clone()``), every pipeline set compiles its own
copy of the weights: OpenVINO's CPU plugin keeps a private copy in each compiled model, with or without
a model cache. A node with ``NUM_STREAMS`` N therefore needs about N times one set's memory.

One set holds the weight files (mapped from disk), the compiled copy of every constant at the
inference precision (fp16 weights run at f32 take twice their file size, f32 weights run at bf16
half), and a margin for activations and the runtime (:data:`OVERHEAD_PER_WEIGHT_BYTE`). Measured on the
SD1.5-shaped benchmark model (1.99 GiB of fp16 weight files): 4.15 GiB resident at bf16 (estimate
4.27), 6.24 GiB at f32 (estimate 6.26); docs/performance.md.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("calculators.image_gen")

#: Resident bytes per byte of weight files when the IR's precision is not known (fp16 IR at bf16).
RESIDENT_PER_WEIGHT_BYTE = 2.0
#: Activations, tokenizers and the runtime, per byte of weight files (0.09 to 0.14 measured on SD1.5).
OVERHEAD_PER_WEIGHT_BYTE = 0.15
GIB = 2**30
#: Bytes per element of the floating-point types weights are stored or run in.
FLOAT_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2}
#: How OpenVINO may spell an inference precision, to the IR's element type names.
PRECISION_NAMES = {"f32": "f32", "float32": "f32", "fp32": "f32", "bf16": "bf16", "bfloat16": "bf16",
                   "f16": "f16", "float16": "f16", "fp16": "f16"}
#: A constant of an IR: ``<data element_type="f16" shape="320, 4" offset="0" size="23040" />``.
_CONSTANT = re.compile(r'<data element_type="(\w+)" shape="[^"]*" offset="\d+" size="(\d+)"')


def weights_bytes(models_path: Path) -> int:
    """Total size of the model's weight files (every ``*.bin`` below ``models_path``)."""
    return sum(p.stat().st_size for p in models_path.rglob("*.bin") if p.is_file())


def constant_bytes(models_path: Path) -> dict[str, int]:
    """Bytes of the IR constants below ``models_path`` by element type (``{"f16": ..., "i64": ...}``)."""
    found: dict[str, int] = {}
    for xml in models_path.rglob("*.xml"):
        if xml.with_suffix(".bin").is_file():
            for element_type, size in _CONSTANT.findall(xml.read_text(encoding="utf-8", errors="replace")):
                found[element_type] = found.get(element_type, 0) + int(size)
    return found


@functools.cache
def _cpu_default_precision() -> str:
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return PRECISION_NAMES.get(hint.get_type_name(), "f32")


def inference_precision(properties: Mapping[str, Any]) -> str:
    """The precision the CPU runs the model at: ``INFERENCE_PRECISION_HINT`` when given, f32 in
    ``EXECUTION_MODE_HINT`` ACCURACY, else the CPU's default (bf16 or f16 where the CPU has them)."""
    hint = properties.get("INFERENCE_PRECISION_HINT")
    if hint is not None:
        name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        return PRECISION_NAMES.get(name.strip().lower(), "f32")
    if str(properties.get("EXECUTION_MODE_HINT", "")).strip().upper().endswith("ACCURACY"):
        return "f32"
    return _cpu_default_precision()


def resident_factor(constants: Mapping[str, int], precision: str) -> float:
    """Resident bytes of one set per byte of weight files: the mapped files, the compiled copy with
    floating-point constants converted to ``precision``, and the overhead margin."""
    total = sum(constants.values())
    if total == 0:
        return RESIDENT_PER_WEIGHT_BYTE
    target = FLOAT_BYTES.get(precision, 4)
    compiled = sum(size * target / FLOAT_BYTES[kind] if kind in FLOAT_BYTES else size
                   for kind, size in constants.items())
    return 1 + compiled / total + OVERHEAD_PER_WEIGHT_BYTE


def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, capped by the cgroup (v2 or v1)
    limit minus its usage when there is one; None when neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


class InsufficientMemory(RuntimeError):
    """The requested pipeline sets do not fit in the memory the machine has (a load error)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """What a node's pipeline sets are expected to hold resident."""

    sets: int
    weights: int  # bytes of weight files of one set
    #: Resident bytes per byte of weight files (:func:`resident_factor`).
    factor: float = RESIDENT_PER_WEIGHT_BYTE

    @classmethod
    def for_model(cls, sets: int, models_path: Path, properties: Mapping[str, Any]) -> MemoryEstimate:
        """The estimate for ``sets`` sets of the model in ``models_path`` compiled with ``properties``."""
        factor = resident_factor(constant_bytes(models_path), inference_precision(properties))
        return cls(sets, weights_bytes(models_path), factor)

    @property
    def per_set(self) -> int:
        return int(self.weights * self.factor)

    @property
    def total(self) -> int:
        return self.sets * self.per_set

    def describe(self) -> str:
        return (f"{self.sets} pipeline set(s) x {self.per_set / GIB:.2f} GiB (weights {self.weights / GIB:.2f} GiB "
                f"on disk; each set holds its own copy)")

    def refusal(self, available: int | None) -> str | None:
        """Why the sets cannot be loaded in ``available`` bytes, or None when they fit (or it is unknown)."""
        if available is None or self.total <= available:
            return None
        fits = max(0, available // self.per_set) if self.per_set else 0
        return (f"NUM_STREAMS {self.sets} needs an estimated {self.total / GIB:.2f} GiB ({self.describe()}), "
                f"but only {available / GIB:.2f} GiB of memory is available; lower NUM_STREAMS in plugin_config "
                f"(at most {fits} set(s) fit) or give the server more memory")
