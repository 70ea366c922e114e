"""Shared helpers for the tiny-model tests: paths, f32 plugin config, pixel copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny"
# GenAI runs bf16 on CPUs that have it; f32 makes results pixel-exact and comparable.
F32: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}


def model_dir(name: str) -> Path:
    """The folder of a tiny model; fails (never skips) with the rebuild command when it is missing."""
    path = TINY / name
    if not (path / "model_index.json").is_file() and not path.is_dir():
        pytest.fail(f"{path} is missing: rebuild it with `make fixtures` (bash tools/build_fixtures.sh)")
    return path


def pixels(result: Any) -> np.ndarray:
    """A copy of a generate() result: GenAI reuses the output tensor's memory on the next call."""
    return np.array(result.data, copy=True)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def noise_image(size: int, seed: int = 0) -> ov.Tensor:
    rng = np.random.default_rng(seed)
    return ov.Tensor(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))


def square_mask(size: int) -> ov.Tensor:
    mask = np.zeros((1, size, size, 3), dtype=np.uint8)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4, :] = 255
    return ov.Tensor(mask)


class StepRecorder:
    """A GenAI step callback that records (step, num_steps) and never interrupts."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, step: int, num_steps: int, latent: Any) -> bool:
        self.calls.append((step, num_steps))
        return False
