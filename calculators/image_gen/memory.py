"""Memory of pipeline sets: what a node's sets will hold, what the machine has, and the load-time refusal.

With the openvino_genai 2026.4 Python bindings (no ``clone()``), every pipeline set compiles its own
copy of the weights: OpenVINO's CPU plugin keeps a private copy in each compiled model, with or without
a model cache. A node with ``NUM_STREAMS`` N therefore needs about N times one set's memory. The
estimate of one set is the size of the model's weight files (``*.bin``) times
:data:`RESIDENT_PER_WEIGHT_BYTE`, measured on the SD1.5-shaped benchmark model (docs/performance.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("calculators.image_gen")

#: Resident bytes per byte of weight files, for one set after its first requests (fp16 IR at the
#: CPU's default precision; measured on the SD1.5-shaped model, see docs/performance.md).
RESIDENT_PER_WEIGHT_BYTE = 2.0
GIB = 2**30


def weights_bytes(models_path: Path) -> int:
    """Total size of the model's weight files (every ``*.bin`` below ``models_path``)."""
    return sum(p.stat().st_size for p in models_path.rglob("*.bin") if p.is_file())


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

    @property
    def per_set(self) -> int:
        return int(self.weights * RESIDENT_PER_WEIGHT_BYTE)

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
