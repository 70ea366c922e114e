"""Which image sizes a model can generate, decided from the exported model itself (SPEC §9).

A size works when each side is a multiple of the model's size step. For a UNet model the step is the
VAE's scale times the smallest latent multiple the UNet IR accepts, found by reshaping the IR to
candidate latent sizes and letting OpenVINO's shape inference say whether every skip connection still
matches: the project's own exporter upsamples by exactly 2 per block (a 2-block UNet needs even latents,
SD 1.5's 4 blocks multiples of 8), while optimum-intel's export upsamples to the skip connection's size
and takes any latent size. Transformer models (SD3, FLUX) need whole patches, which their config states.
Sizes are always multiples of 8 (SPEC §5).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from calculators.image_gen.options import Resolution

log = logging.getLogger("calculators.image_gen")

#: Latent multiples tried, smallest first; a UNet that needs more than 64 is not one GenAI serves.
LATENT_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
#: Latent sizes (in units of the candidate multiple) that must infer: odd, and different per axis,
#: so that neither an even count of blocks nor a square shape hides a mismatch.
_PROBES = ((3, 5), (1, 1))


def unet_latent_multiple(xml: Path) -> int | None:
    """The smallest latent multiple the UNet IR at ``xml`` accepts on both axes, or None when the IR
    cannot tell (missing, unreadable, no ``sample`` input of rank 4, or no candidate up to 64 infers).

    Reads the IR (never compiles it); the answer is cached per file, path and modification time.
    """
    try:
        stat = xml.stat()
    except OSError:
        return None
    return _probe(str(xml.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _probe(path: str, mtime_ns: int, size: int) -> int | None:
    model = _read_model(path)
    name = _sample_input(model) if model is not None else None
    if name is None:
        return None
    for multiple in LATENT_MULTIPLES:
        if all(_infers(model, name, multiple * h, multiple * w) for h, w in _PROBES):
            log.debug("%s accepts latents in multiples of %d", path, multiple)
            return multiple
    return None


def _read_model(path: str) -> Any:
    """The IR at ``path``, or None (logged) when OpenVINO cannot read it."""
    import openvino as ov  # type: ignore[import-untyped]

    try:
        return ov.Core().read_model(path)
    except Exception as exc:  # an unreadable IR: the caller falls back to the config's rule
        log.warning("cannot read %s to find the sizes it accepts: %s", path, exc)
        return None


def _sample_input(model: Any) -> str | None:
    """The name of the model's ``sample`` input, or None when it has none of static rank 4."""
    sample = next((p for p in model.inputs if "sample" in p.get_names()), None)
    if sample is None:
        return None
    rank = sample.get_partial_shape().rank
    if rank.is_dynamic or rank.get_length() != 4:
        return None
    return str(sample.get_any_name())


def _infers(model: object, name: str, height: int, width: int) -> bool:
    """Whether shape inference succeeds with the ``name`` input at latent ``height`` x ``width``."""
    trial = model.clone()  # type: ignore[attr-defined]
    shape = trial.input(name).get_partial_shape()
    shape[2] = height
    shape[3] = width
    try:
        trial.reshape({name: shape})
    except Exception:  # OpenVINO reports a shape mismatch (e.g. a skip-connection Concat) as RuntimeError
        return False
    return True


def size_problem(side: str, value: int, multiple: int) -> str | None:
    """The message for a ``side`` (width or height) that is not a multiple of ``multiple``, else None."""
    if value % multiple == 0:
        return None
    return f"{side} must be divisible by {multiple}, got {value}"


def _side_candidates(value: int, multiple: int, most: int | None) -> list[int]:
    """``value`` when it is a multiple within ``most``; else the multiples just below and above it
    that fit; else the largest multiple within ``most``."""
    def within(v: int) -> bool:
        return most is None or v <= most

    if value % multiple == 0 and within(value):
        return [value]
    down = value - value % multiple
    found = [v for v in (down, down + multiple) if v > 0 and within(v)]
    if not found and most is not None and most >= multiple:
        found = [most - most % multiple]
    return found


def nearest_sizes(size: Resolution, multiple: int, limit: Resolution | None = None) -> list[Resolution]:
    """The sizes nearest to ``size`` whose sides are multiples of ``multiple`` (each side rounded down
    and up, a side that already fits kept), within ``limit`` when given; smallest first."""
    widths = _side_candidates(size.width, multiple, limit.width if limit else None)
    heights = _side_candidates(size.height, multiple, limit.height if limit else None)
    return [Resolution(w, h) for w in widths for h in heights]
