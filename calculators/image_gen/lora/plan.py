"""The LoRA plan of one node: which adapters exist, which ``model`` names route to them, which
alphas a request applies, and the order OpenVINO GenAI receives them in.

Facts, routing and alpha resolution are pure; the plan owns its caches (the model's layer names,
the loaded OpenVINO GenAI adapters and markers, the merged FUSE folder) and hands the OpenVINO work
to :mod:`~calculators.image_gen.lora.genai` and :mod:`~calculators.image_gen.lora.fuse`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calculators.image_gen.lora import rules
from calculators.image_gen.lora.entries import (
    CompositeAdapter,
    CompositeComponent,
    LoraAdapter,
    LoraMode,
    default_alpha,
)
from calculators.image_gen.lora.fuse import FusedFolder
from calculators.image_gen.lora.genai import GenaiAdapters
from calculators.image_gen.lora.layer_names import LayerIndexes
from calculators.image_gen.options import json_kind
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import LoadContext, NodeIssue
from ovms_graph.errors import BadRequest

#: Request field carrying per-request alpha overrides.
LORA_ALPHAS = "lora_alphas"
STATIC_ALPHAS_MESSAGE = ("lora_alphas is not supported for STATIC LoRA adapters: alphas are baked in at "
                         "compile time and cannot be overridden per request")
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class ActiveLoras:
    """What one request applies: alias -> alpha of every active (routable-selected) adapter, in
    application order, after precedence but before request overrides are checked."""

    model: str
    alphas: Mapping[str, float]


def _as_float32(value: float) -> float:
    """``value`` as OpenVINO GenAI stores an alpha (C++ float)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


class LoraPlan:
    """The LoRA configuration of one node: immutable after load, shared by every pipeline set.

    Thread-safe: ``generate_kwargs`` may be called from any number of request threads at once.
    """

    def __init__(self, graph_name: str, adapters: Sequence[LoraAdapter],
                 composites: Sequence[CompositeAdapter], devices: Sequence[str] = ("CPU",)) -> None:
        self.graph_name = graph_name
        self.adapters: tuple[LoraAdapter, ...] = tuple(adapters)
        self.composites: tuple[CompositeAdapter, ...] = tuple(composites)
        self.devices = tuple(devices)
        self._by_alias = {a.alias: a for a in self.adapters}
        self._composites = {c.alias: c for c in self.composites}
        #: The model's layer names, read once per folder (load-time checks).
        self.layer_indexes = LayerIndexes()
        self._genai = GenaiAdapters(self.adapters)
        self._fused_folder = FusedFolder()

    # ----- construction -----
    @classmethod
    def from_options(cls, options: ImageGenCalculatorOptions | None, ctx: LoadContext) -> LoraPlan:
        """The plan described by ``options``; never raises (run :meth:`check` first to find problems).

        Paths are resolved against the graph's folder unless absolute.
        """
        if options is None:
            return cls(ctx.graph_name, (), ())
        adapters = [
            LoraAdapter(alias=e.alias, path=ctx.resolve_path(e.path) if e.path else Path(),
                        alpha=float(e.alpha), mode=LoraMode.from_proto(e.mode), index=i)
            for i, e in enumerate(options.lora_adapters)
        ]
        composites = [
            CompositeAdapter(alias=c.alias, index=i, components=tuple(
                CompositeComponent(adapter_alias=p.adapter_alias, alpha=float(p.alpha)) for p in c.components))
            for i, c in enumerate(options.composite_lora_adapters)
        ]
        devices = tuple(options.device.split()) if options.HasField("device") else ("CPU",)
        return cls(ctx.graph_name, adapters, composites, devices or ("CPU",))

    # ----- facts -----
    @property
    def empty(self) -> bool:
        """True when the node has no LoRA adapters at all (nothing to pass to the pipelines)."""
        return not self.adapters

    def adapter(self, alias: str) -> LoraAdapter | None:
        """The adapter registered as ``alias``, if any."""
        return self._by_alias.get(alias)

    def by_mode(self, mode: LoraMode) -> tuple[LoraAdapter, ...]:
        return tuple(a for a in self.adapters if a.mode is mode)

    @property
    def dynamic(self) -> tuple[LoraAdapter, ...]:
        return self.by_mode(LoraMode.DYNAMIC)

    @property
    def static(self) -> tuple[LoraAdapter, ...]:
        return self.by_mode(LoraMode.STATIC)

    @property
    def fused(self) -> tuple[LoraAdapter, ...]:
        return self.by_mode(LoraMode.FUSE)

    @property
    def is_static(self) -> bool:
        return bool(self.static)

    # ----- routing -----
    def routable_names(self) -> list[str]:
        """Every ``model`` name this node answers besides (or, with STATIC, instead of) the graph's."""
        if self.is_static:
            return [self.composites[0].alias] if self.composites else [self.static[0].alias]
        return [a.alias for a in self.dynamic] + [c.alias for c in self.composites]

    @property
    def base_routable(self) -> bool:
        return not self.is_static

    def register_routes(self, ctx: LoadContext) -> None:
        """Register the node's aliases with the front end (call once, from ``create_resources``).

        Routable (listed in ``/v3/models``): with DYNAMIC adapters, every DYNAMIC adapter alias
        (kind ``lora``) and every composite (kind ``composite``); with STATIC ones, only the single
        adapter's alias or, with a composite, only the composite's, and the base graph name is
        hidden. Every other alias (FUSE adapters, kind ``fuse``; STATIC adapters behind their
        composite) is registered unlisted: never routable, but it still counts toward alias
        uniqueness across graphs (SPEC §9). A STATIC component sent as ``model`` is a 400 naming
        the composite to use.
        """
        routable = set(self.routable_names())
        hint = None
        if self.is_static and self.composites:
            use = self.composites[0].alias
            hint = f'it is compiled into STATIC composite "{use}"; use "{use}"'
        for adapter in self.adapters:
            kind = "fuse" if adapter.mode is LoraMode.FUSE else "lora"
            ctx.register_alias(adapter.alias, kind=kind, listed=adapter.alias in routable,
                               not_routable_hint=hint if adapter.mode is LoraMode.STATIC else None)
        for composite in self.composites:
            ctx.register_alias(composite.alias, kind="composite", listed=composite.alias in routable)
        if self.is_static:
            ctx.hide_base()

    # ----- alphas -----
    def static_alphas(self) -> dict[str, float]:
        """STATIC: alias -> compiled alpha (a composite component's non-default alpha wins)."""
        if not self.is_static:
            return {}
        if self.composites:
            return self._composite_alphas(self.composites[0])
        adapter = self.static[0]
        return {adapter.alias: adapter.alpha}

    def _composite_alphas(self, composite: CompositeAdapter) -> dict[str, float]:
        alphas: dict[str, float] = {}
        for comp in composite.components:
            adapter = self._by_alias[comp.adapter_alias]
            alphas[comp.adapter_alias] = comp.alpha if not default_alpha(comp.alpha) else adapter.alpha
        return alphas

    def active(self, model_name: str) -> ActiveLoras:
        """The adapters a request for ``model_name`` activates, with their configured alphas.

        The graph's own name (or any name that is not an alias) selects the base: no adapter
        (FUSE adapters are part of the base and never listed here).
        """
        if self.is_static:
            return ActiveLoras(model_name, self.static_alphas())
        adapter = self._by_alias.get(model_name)
        if adapter is not None and adapter.mode is LoraMode.DYNAMIC:
            return ActiveLoras(model_name, {adapter.alias: adapter.alpha})
        composite = self._composites.get(model_name)
        if composite is not None:
            return ActiveLoras(model_name, self._composite_alphas(composite))
        return ActiveLoras(model_name, {})

    def resolve_alphas(self, model_name: str, lora_alphas: object | None) -> dict[str, float]:
        """The alpha of every active adapter for this request: request > composite > adapter > 1.0.

        Raises BadRequest (param ``lora_alphas``) for a non-object value, a key that is not active
        for ``model_name``, an alpha that is not a finite JSON number (booleans included), and any
        ``lora_alphas`` with STATIC adapters. ``None`` means the field was absent.
        """
        alphas = dict(self.active(model_name).alphas)
        if lora_alphas is None:
            return alphas
        if self.is_static:
            raise BadRequest(STATIC_ALPHAS_MESSAGE, param=LORA_ALPHAS)
        if not isinstance(lora_alphas, Mapping):
            raise BadRequest(f"lora_alphas must be an object mapping adapter aliases to numbers, got "
                             f"{json_kind(lora_alphas)}", param=LORA_ALPHAS)
        for key, value in lora_alphas.items():
            if key not in alphas:
                raise BadRequest(_inactive_key_message(str(key), model_name, list(alphas)), param=LORA_ALPHAS)
            alphas[key] = _request_alpha(str(key), value)
        return alphas

    def request_order(self, alphas: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        """The DYNAMIC adapters one request passes to ``generate``, as (alias, alpha) pairs: the
        active ones (``alphas``, in application order) first, then every other registered DYNAMIC
        adapter in ``lora_adapters`` order at alpha 0. Pure; alphas are rounded to float32."""
        active = tuple((alias, _as_float32(alpha)) for alias, alpha in alphas.items())
        rest = tuple((a.alias, 0.0) for a in self.dynamic if a.alias not in alphas)
        return active + rest

    # ----- load time -----
    @classmethod
    def check(cls, options: ImageGenCalculatorOptions | None, ctx: LoadContext) -> list[NodeIssue]:
        """Every problem with the node's LoRA options; reads the adapter files' headers and the
        model's layer names (never loads a model). Each message names the alias and the rule.

        A file whose tensors match some but not all layers is accepted with a warning in the log.
        """
        plan = cls.from_options(options, ctx)
        models_path = ctx.resolve_path(options.models_path) if options is not None and options.models_path else None
        return [*rules.alias_issues(plan, ctx.graph_name), *rules.mode_issues(plan), *rules.composite_issues(plan),
                *rules.file_issues(plan, options, models_path)]

    # ----- OpenVINO GenAI -----
    def model_dir(self, models_path: Path) -> Path:
        """The folder every pipeline of this node must be loaded from (call before building any).

        ``models_path`` itself, except when FUSE adapters are combined with DYNAMIC or STATIC ones
        on a UNet model (SD 1.x/2.x, SDXL): OpenVINO GenAI builds one adapter controller per model,
        with one mode, so it cannot fuse some adapters and switch others. Then this returns a folder
        whose UNet and text encoders have the FUSE adapters merged into their weights exactly as
        MODE_FUSE computes them (everything else is symlinked). It is built once, on the first call,
        in a temporary folder removed when the plan is closed or collected. For other models the
        FUSE adapters are applied at their fixed alpha inside the DYNAMIC / STATIC configuration.
        """
        if not self.fused or not (self.dynamic or self.static):
            return models_path
        return self._fused_folder.model_dir(models_path, self.fused, "STATIC" if self.static else "DYNAMIC")

    def close(self) -> None:
        """Remove the merged model folder, if one was built. Idempotent."""
        self._fused_folder.close()

    def _adapters(self) -> dict[str, Any]:
        """alias -> openvino_genai.Adapter, loaded once and shared by every pipeline set."""
        return self._genai.loaded()

    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every pipeline set's ``compile`` (or constructor); empty without LoRA.

        FUSE only: MODE_FUSE. STATIC: MODE_STATIC with the compiled alphas. DYNAMIC: MODE_DYNAMIC
        registering every DYNAMIC adapter at alpha 0 (plus an empty marker adapter, see
        :meth:`generate_kwargs`). Call :meth:`model_dir` first when the node has FUSE adapters.
        """
        return self._genai.compile_kwargs(self, self._fused_folder.merged)

    def generate_kwargs(self, model_name: str, lora_alphas: object | None) -> dict[str, Any]:
        """Keyword arguments for one request's ``generate``, whatever the task, on whichever
        pipeline set serves it; pass them on every request, base requests included (a generate
        without ``adapters`` keeps the previous request's adapters).

        ``model_name`` is the routable name the front end matched (graph name or alias);
        ``lora_alphas`` the request's raw value (None when absent). Validates first (BadRequest,
        param ``lora_alphas``), so call it before taking a pipeline set from the pool.

        The ``adapters`` configuration is :meth:`request_order`: every registered DYNAMIC adapter,
        the active ones first in application order (a composite's components as listed), the
        inactive ones after them at alpha 0, then an empty marker adapter, one object per distinct
        configuration, so that any change reloads the set's adapter state in full. Listing only the
        active adapters is cheaper but wrong in OpenVINO GenAI 2026.4: at bf16, derived pipelines
        sharing weights return all-black images after a switch (see docs/lora.md). The marker
        avoids two more bugs on the alphas-only path: an alpha change is noticed only when the last
        adapter's alpha changes (``compare_configs`` in lora/adapter.cpp), and with fewer adapters
        than were registered it fails with "Tensor was not initialized".
        """
        alphas = self.resolve_alphas(model_name, lora_alphas)
        if not self.dynamic:
            return {}
        config = self._genai.request_config(self.request_order(alphas), self.request_order({}),
                                            self._fused_folder.merged)
        return {"adapters": config}

    def marker(self, order: tuple[tuple[str, float], ...]) -> Any:
        """The empty marker adapter of one configuration (a :meth:`request_order` value): the same
        object for the same configuration, a distinct one for every other; the base (every alpha 0
        in registration order) uses the one registered at compile time."""
        return self._genai.marker(order, self.request_order({}))


def _request_alpha(key: str, value: object) -> float:
    """One ``lora_alphas`` value as an alpha; BadRequest unless a finite number that fits a float32."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f'lora_alphas["{key}"] must be a finite number, got {_json_repr(value)}', param=LORA_ALPHAS)
    if abs(value) > _FLOAT32_MAX:
        raise BadRequest(f'lora_alphas["{key}"] is out of range: {_json_repr(value)} does not fit a 32-bit '
                         "float", param=LORA_ALPHAS)
    return float(value)


def _json_repr(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _inactive_key_message(key: str, model_name: str, active: list[str]) -> str:
    if not active:
        return (f'lora_alphas key "{key}" is not active for model "{model_name}": it applies no LoRA adapter '
                "(select an adapter or composite with the model field)")
    listed = ", ".join(f'"{a}"' for a in active)
    return f'lora_alphas key "{key}" is not active for model "{model_name}" (active adapters: {listed})'
