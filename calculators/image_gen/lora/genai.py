"""The OpenVINO GenAI side of a LoRA plan: ``openvino_genai.Adapter`` objects and the
``AdapterConfig`` each pipeline set compiles with and each request generates with.

:class:`GenaiAdapters` is owned by one :class:`~calculators.image_gen.lora.plan.LoraPlan`; it loads
the adapter files once and keeps the per-configuration marker adapters (see
:meth:`GenaiAdapters.marker`). The plan decides which adapters and alphas; this module only turns
its decisions into OpenVINO GenAI objects.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from calculators.image_gen.lora.entries import LoraAdapter, LoraMode

if TYPE_CHECKING:
    from calculators.image_gen.lora.plan import LoraPlan

#: Key of the marker adapter registered at compile time (no alias can contain NUL).
SENTINEL = "\x00marker"
#: How many per-configuration markers a plan keeps (least recently used go first).
MARKER_CACHE = 1024

Order = tuple[tuple[str, float], ...]


def empty_safetensors() -> Any:
    """An ov.Tensor holding a safetensors file without tensors: an adapter that touches nothing."""
    import numpy as np
    import openvino as ov  # type: ignore[import-untyped]

    raw = json.dumps({"__metadata__": {"ovms_graph": "configuration marker"}}).encode()
    data = struct.pack("<Q", len(raw)) + raw
    return ov.Tensor(np.frombuffer(data, dtype=np.uint8).copy())


class GenaiAdapters:
    """The loaded adapters and marker cache of one plan. Thread-safe."""

    def __init__(self, adapters: Sequence[LoraAdapter]) -> None:
        self._adapters = tuple(adapters)
        self._fused = tuple(a for a in self._adapters if a.mode is LoraMode.FUSE)
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] | None = None
        self._marker_lock = threading.Lock()
        self._markers: OrderedDict[Order, Any] = OrderedDict()

    def loaded(self) -> dict[str, Any]:
        """alias -> openvino_genai.Adapter (plus the compile-time marker under :data:`SENTINEL`),
        loaded once and shared by every pipeline set."""
        with self._lock:
            if self._loaded is None:
                import openvino_genai  # type: ignore[import-untyped]

                self._loaded = {a.alias: openvino_genai.Adapter(str(a.path)) for a in self._adapters}
                self._loaded[SENTINEL] = openvino_genai.Adapter(empty_safetensors())
            return self._loaded

    def _fixed_fused(self, fuse_merged: bool) -> list[tuple[Any, float]]:
        """The FUSE adapters that ride along in the DYNAMIC / STATIC configuration (not merged)."""
        if fuse_merged:
            return []
        ov = self.loaded()
        return [(ov[a.alias], a.alpha) for a in self._fused]

    def compile_kwargs(self, plan: LoraPlan, fuse_merged: bool) -> dict[str, Any]:
        """See :meth:`LoraPlan.compile_kwargs`; ``fuse_merged`` when the FUSE adapters are already
        in the model's weights."""
        if plan.empty:
            return {}
        import openvino_genai

        mode = openvino_genai.AdapterConfig.Mode
        ov = self.loaded()
        if plan.is_static:
            pairs = self._fixed_fused(fuse_merged) + [(ov[alias], alpha)
                                                      for alias, alpha in plan.static_alphas().items()]
            return {"adapters": openvino_genai.AdapterConfig(pairs, mode.MODE_STATIC)}
        if plan.dynamic:
            pairs = self._fixed_fused(fuse_merged) + [(ov[a.alias], 0.0) for a in plan.dynamic]
            return {"adapters": openvino_genai.AdapterConfig([*pairs, (ov[SENTINEL], 0.0)], mode.MODE_DYNAMIC)}
        if fuse_merged:
            return {}
        return {"adapters": openvino_genai.AdapterConfig([(ov[a.alias], a.alpha) for a in plan.fused],
                                                         mode.MODE_FUSE)}

    def request_config(self, order: Order, base: Order, fuse_merged: bool) -> Any:
        """The ``AdapterConfig`` of one request whose DYNAMIC adapters are ``order``
        (:meth:`LoraPlan.request_order`; ``base`` is the base request's): fixed FUSE adapters,
        ``order``, then its marker."""
        import openvino_genai

        ov = self.loaded()
        pairs = self._fixed_fused(fuse_merged) + [(ov[alias], alpha) for alias, alpha in order]
        return openvino_genai.AdapterConfig([*pairs, (self.marker(order, base), 0.0)])

    def marker(self, order: Order, base: Order) -> Any:
        """The empty marker adapter of one configuration (a :meth:`LoraPlan.request_order` value):
        the same object for the same configuration, a distinct one for every other; ``base`` (every
        alpha 0 in registration order) uses the one registered at compile time. A changed marker
        makes OpenVINO GenAI reload the adapter state in full."""
        if order == base:
            return self.loaded()[SENTINEL]
        with self._marker_lock:
            known = self._markers.get(order)
            if known is not None:
                self._markers.move_to_end(order)
                return known
        import openvino_genai

        marker = openvino_genai.Adapter(empty_safetensors())
        with self._marker_lock:
            marker = self._markers.setdefault(order, marker)
            if len(self._markers) > MARKER_CACHE:
                self._markers.popitem(last=False)
            return marker
