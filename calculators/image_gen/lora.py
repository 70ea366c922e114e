"""LoRA adapters of an ImageGenCalculator node: load-time rules, routing, and per-request alphas.

A node's ``lora_adapters`` and ``composite_lora_adapters`` become one :class:`LoraPlan`. The plan
is built once at load and is immutable; the calculator uses it in these places:

* ``LoraPlan.check(options, ctx)`` in ``check_options``: every problem with the LoRA options, each
  naming the alias and the rule (missing or unreadable ``.safetensors``, a file whose tensors match
  no layer of the model, bad, unknown or duplicate aliases, composite rules, mode rules);
* ``plan.model_dir(settings.models_path)`` before building pipelines: the folder to load every
  pipeline from (a merged copy when FUSE adapters sit under DYNAMIC / STATIC ones, else
  ``models_path`` itself); ``plan.close()`` at shutdown removes that copy (idempotent);
* ``plan.compile_kwargs()``: the keyword arguments to add to every pipeline set's construction or
  ``compile`` call (``adapters=AdapterConfig``; call it once per compile);
* ``plan.register_routes(ctx)`` in ``create_resources``: DYNAMIC adapter aliases and composites
  become routable ``model`` names; STATIC makes exactly one name routable and hides the base
  model; FUSE adapters are never routable;
* ``plan.generate_kwargs(model, lora_alphas)`` per request, before any pipeline set is taken, and
  passed to ``generate`` of every task, base requests included: the validated ``adapters=``
  keyword; raises ``BadRequest`` naming the offending ``lora_alphas`` key.

Modes (SPEC §6, the reference's "LoRA Adapters" section):

* DYNAMIC: every DYNAMIC adapter is registered at compile time; each request passes an
  ``AdapterConfig`` with exactly the adapters it activates, so each pipeline set carries its own,
  complete adapter state and layers of inactive adapters cost (almost) nothing.
* STATIC: the adapters are compiled in with fixed alphas (a composite component's alpha wins over
  the adapter's); ``lora_alphas`` is rejected.
* FUSE: merged into the base weights at load; invisible to routing; combinable with DYNAMIC.
  Alone, OpenVINO GenAI's MODE_FUSE merges them. Under DYNAMIC or STATIC adapters (one adapter
  controller per model, one mode: GenAI cannot do both) :meth:`LoraPlan.model_dir` merges them
  into a copy of a UNet model's weights, bit-identical to MODE_FUSE; for other architectures they
  ride along at their fixed alpha in the DYNAMIC / STATIC configuration.

Alpha precedence: request ``lora_alphas`` > composite component alpha > adapter alpha > 1.0.

Example config:

    node {
      name: "ImageGenExecutor"
      calculator: "ImageGenCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:input"
      input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
      output_stream: "HTTP_RESPONSE_PAYLOAD:output"
      node_options: {
        [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
          models_path: "./"
          lora_adapters { alias: "style" path: "loras/style.safetensors" alpha: 0.8 }
          lora_adapters { alias: "detail" path: "loras/detail.safetensors" }
          composite_lora_adapters {
            alias: "mix"
            components { adapter_alias: "style" }
            components { adapter_alias: "detail" alpha: 0.5 }
          }
        }
      }
    }
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import shutil
import struct
import tempfile
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calculators.image_gen.options import json_kind
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions, LoraLoadMode
from ovms_graph.aliases import is_dot_name, is_valid_alias
from ovms_graph.calculator import LoadContext, NodeIssue
from ovms_graph.errors import BadRequest

log = logging.getLogger("calculators.image_gen.lora")

#: Prefix of every field this module reports (the runtime renders it after the node).
FIELD_PREFIX = "node_options."
#: Request field carrying per-request alpha overrides.
LORA_ALPHAS = "lora_alphas"
STATIC_ALPHAS_MESSAGE = ("lora_alphas is not supported for STATIC LoRA adapters: alphas are baked in at "
                         "compile time and cannot be overridden per request")


class LoraMode(enum.Enum):
    """How an adapter is applied (``LoraLoadMode`` in the options proto)."""

    DYNAMIC = "DYNAMIC"
    STATIC = "STATIC"
    FUSE = "FUSE"

    @classmethod
    def from_proto(cls, value: int) -> LoraMode:
        names = {int(LoraLoadMode.DYNAMIC): cls.DYNAMIC, int(LoraLoadMode.STATIC): cls.STATIC,
                 int(LoraLoadMode.FUSE): cls.FUSE}
        return names[int(value)]


@dataclass(frozen=True)
class LoraAdapter:
    """One ``lora_adapters`` entry; ``index`` is its position in the node's options."""

    alias: str
    path: Path
    alpha: float
    mode: LoraMode
    index: int

    @property
    def field(self) -> str:
        return f"{FIELD_PREFIX}lora_adapters[{self.index}]"


@dataclass(frozen=True)
class CompositeComponent:
    """One component of a composite: a registered adapter alias and its configured alpha."""

    adapter_alias: str
    alpha: float


@dataclass(frozen=True)
class CompositeAdapter:
    """One ``composite_lora_adapters`` entry; components apply in the order they are listed."""

    alias: str
    components: tuple[CompositeComponent, ...]
    index: int

    @property
    def field(self) -> str:
        return f"{FIELD_PREFIX}composite_lora_adapters[{self.index}]"


@dataclass(frozen=True)
class ActiveLoras:
    """What one request applies: alias -> alpha of every active (routable-selected) adapter, in
    application order, after precedence but before request overrides are checked."""

    model: str
    alphas: Mapping[str, float]


def _default_alpha(value: float) -> bool:
    return value == 1.0


def _fmt(value: float) -> str:
    """A float32 option value as the operator wrote it (0.7, not 0.699999988079071)."""
    return f"{value:.7g}"


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
        self._ov_lock = threading.Lock()
        self._ov_adapters: dict[str, Any] | None = None
        self._merged: MergedModel | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._fp_lock = threading.Lock()
        self._markers: OrderedDict[tuple[tuple[str, float], ...], Any] = OrderedDict()

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

    def routable_names(self) -> list[str]:
        """Every ``model`` name this node answers besides (or, with STATIC, instead of) the graph's."""
        if self.is_static:
            return [self.composites[0].alias] if self.composites else [self.static[0].alias]
        return [a.alias for a in self.dynamic] + [c.alias for c in self.composites]

    @property
    def base_routable(self) -> bool:
        return not self.is_static

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
            alphas[comp.adapter_alias] = comp.alpha if not _default_alpha(comp.alpha) else adapter.alpha
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
        active = self.active(model_name)
        alphas = dict(active.alphas)
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadRequest(f'lora_alphas["{key}"] must be a finite number, got {_json_repr(value)}',
                                 param=LORA_ALPHAS)
            if abs(value) > _FLOAT32_MAX:
                raise BadRequest(f'lora_alphas["{key}"] is out of range: {_json_repr(value)} does not fit a 32-bit '
                                 "float", param=LORA_ALPHAS)
            alphas[key] = float(value)
        return alphas

    # ----- load time -----
    @classmethod
    def check(cls, options: ImageGenCalculatorOptions | None, ctx: LoadContext) -> list[NodeIssue]:
        """Every problem with the node's LoRA options; reads the adapter files' headers and the
        model's layer names (never loads a model). Each message names the alias and the rule.

        A file whose tensors match some but not all layers is accepted with a warning in the log.
        """
        plan = cls.from_options(options, ctx)
        issues: list[NodeIssue] = []

        def issue(fld: str, message: str) -> None:
            issues.append(NodeIssue(message, field=fld))

        seen: dict[str, str] = {}
        named: list[tuple[str, str, str]] = [(a.alias, a.field, "LoRA adapter") for a in plan.adapters]
        named += [(c.alias, c.field, "composite LoRA adapter") for c in plan.composites]
        for alias, fld, kind in named:
            if not alias:
                issue(f"{fld}.alias", f"{kind} alias is missing or empty")
                continue
            if is_dot_name(alias):
                issue(f"{fld}.alias", f'{kind} alias "{alias}" may not be "." or ".." (it would name a folder '
                                      "outside loras/)")
            elif not is_valid_alias(alias):
                issue(f"{fld}.alias", f'{kind} alias "{alias}" may only contain letters, digits, ".", "_" and '
                                      "\"-\" ([A-Za-z0-9._-]+)")
            if alias == ctx.graph_name:
                issue(f"{fld}.alias", f'{kind} alias "{alias}" equals the graph name; aliases must differ from '
                                      "graph names")
            first = seen.get(alias)
            if first is not None:
                issue(f"{fld}.alias", f'LoRA alias "{alias}" is used twice (first by {first}); aliases must be '
                                      "unique")
            else:
                seen[alias] = fld.removeprefix(FIELD_PREFIX)

        static = plan.static
        dynamic = plan.dynamic
        if static and dynamic:
            issue(f"{static[0].field}.mode",
                  f"STATIC and DYNAMIC LoRA adapters cannot be mixed in one node (STATIC: "
                  f"{_names(static)}; DYNAMIC: {_names(dynamic)})")
        if any(d.upper().startswith("NPU") for d in plan.devices) and dynamic:
            issue(f"{dynamic[0].field}.mode",
                  f"NPU supports only STATIC and FUSE LoRA adapters; set mode: STATIC on {_names(dynamic)}")
        if static and len(static) > 1 and len(plan.composites) != 1:
            where = f"{FIELD_PREFIX}composite_lora_adapters"
            issue(where, f"STATIC mode with several adapters ({_names(static)}) needs exactly one composite "
                         f"(composite_lora_adapters) to name the routable combination, found "
                         f"{len(plan.composites)}")
        elif static and len(static) == 1 and len(plan.composites) > 1:
            issue(f"{FIELD_PREFIX}composite_lora_adapters",
                  f"STATIC mode allows at most one composite, found {len(plan.composites)} "
                  f"({_names(plan.composites)})")

        for comp_entry in plan.composites:
            if not comp_entry.components:
                issue(f"{comp_entry.field}.components",
                      f'composite LoRA adapter "{comp_entry.alias}" has no components; list at least one '
                      "components { adapter_alias: \"...\" }")
            used: set[str] = set()
            for j, comp in enumerate(comp_entry.components):
                fld = f"{comp_entry.field}.components[{j}]"
                target = plan._by_alias.get(comp.adapter_alias)
                if target is None:
                    known = ", ".join(f'"{a.alias}"' for a in plan.adapters) or "none"
                    issue(f"{fld}.adapter_alias",
                          f'composite LoRA adapter "{comp_entry.alias}" refers to unknown LoRA adapter '
                          f'"{comp.adapter_alias}" (lora_adapters aliases: {known})')
                    continue
                if comp.adapter_alias in used:
                    issue(f"{fld}.adapter_alias",
                          f'composite LoRA adapter "{comp_entry.alias}" lists "{comp.adapter_alias}" twice')
                used.add(comp.adapter_alias)
                if target.mode is LoraMode.FUSE:
                    issue(f"{fld}.adapter_alias",
                          f'composite LoRA adapter "{comp_entry.alias}" refers to FUSE adapter '
                          f'"{comp.adapter_alias}"; FUSE adapters are always applied and cannot be part of a '
                          "composite")
                if not _default_alpha(comp.alpha) and not _default_alpha(target.alpha):
                    issue(f"{fld}.alpha",
                          f'LoRA adapter "{comp.adapter_alias}" has a non-default alpha both on the adapter '
                          f'({_fmt(target.alpha)}) and in composite "{comp_entry.alias}" ({_fmt(comp.alpha)}); '
                          "set alpha at only one level")
                if not math.isfinite(comp.alpha):
                    issue(f"{fld}.alpha", f'composite LoRA adapter "{comp_entry.alias}": alpha of '
                                          f'"{comp.adapter_alias}" must be a finite number')
            if static and comp_entry.components:
                listed = {c.adapter_alias for c in comp_entry.components}
                missing = [a for a in static if a.alias not in listed]
                if missing:
                    issue(f"{comp_entry.field}.components",
                          f'STATIC composite "{comp_entry.alias}" must list every STATIC adapter; missing '
                          f"{_names(missing)}")

        layers: LayerIndex | None = None
        models_path = ctx.resolve_path(options.models_path) if options is not None and options.models_path else None
        if models_path is not None and models_path.is_dir():
            layers = LayerIndex.for_model(models_path)
        for adapter in plan.adapters:
            if not math.isfinite(adapter.alpha):
                issue(f"{adapter.field}.alpha", f'LoRA adapter "{adapter.alias}": alpha must be a finite number')
            fld = f"{adapter.field}.path"
            if options is not None and not options.lora_adapters[adapter.index].path:
                issue(fld, f'LoRA adapter "{adapter.alias}": path is missing or empty')
                continue
            problem, keys = read_lora_file(adapter.path)
            if problem is not None:
                issue(fld, f'LoRA adapter "{adapter.alias}": {problem}')
                continue
            if layers is None:
                continue
            matched, unmatched = layers.match(keys)
            if not matched:
                sample = ", ".join(sorted(keys)[:2])
                issue(fld, f'LoRA adapter "{adapter.alias}": none of the {len(keys)} LoRA layers in {adapter.path} '
                           f"matches a layer of the model in {layers.root} (e.g. {sample}); OpenVINO GenAI would "
                           "silently ignore it. Is it for another architecture, or not in kohya format "
                           "(lora_unet_..., lora_te_...)?")
            elif unmatched:
                log.warning('LoRA adapter "%s" (%s): %d of %d LoRA layers match no layer of the model and will be '
                            "ignored, e.g. %s", adapter.alias, adapter.path, len(unmatched),
                            len(unmatched) + len(matched), ", ".join(sorted(unmatched)[:3]))
        return issues

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
        with self._ov_lock:
            if not self.fused or not (self.dynamic or self.static):
                return models_path
            if self._merged is not None:
                return self._merged.path
            reason = merge_unsupported(models_path, [a.path for a in self.fused])
            if reason is not None:
                log.warning("FUSE LoRA adapters %s cannot be merged into %s (%s); they are applied at their "
                            "fixed alpha together with the %s adapters instead", _names(self.fused), models_path,
                            reason, "STATIC" if self.static else "DYNAMIC")
                return models_path
            started = time.monotonic()
            merged = MergedModel.build(models_path, [(a.path, a.alpha) for a in self.fused])
            self._merged = merged
            self._finalizer = weakref.finalize(self, merged.remove)
            log.info("FUSE LoRA adapters %s merged into %s (%s) in %.1f s", _names(self.fused), merged.path,
                     ", ".join(merged.submodels), time.monotonic() - started)
            return merged.path

    def close(self) -> None:
        """Remove the merged model folder, if one was built. Idempotent."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def _fuse_merged(self) -> bool:
        return self._merged is not None

    def _adapters(self) -> dict[str, Any]:
        """alias -> openvino_genai.Adapter, loaded once and shared by every pipeline set."""
        with self._ov_lock:
            if self._ov_adapters is None:
                import openvino_genai  # type: ignore[import-untyped]

                self._ov_adapters = {a.alias: openvino_genai.Adapter(str(a.path)) for a in self.adapters}
                self._ov_adapters[_SENTINEL] = openvino_genai.Adapter(_empty_safetensors())
            return self._ov_adapters

    def _fixed_fused(self, ov: Mapping[str, Any]) -> list[tuple[Any, float]]:
        """The FUSE adapters that ride along in the DYNAMIC / STATIC configuration (not merged)."""
        if self._fuse_merged:
            return []
        return [(ov[a.alias], a.alpha) for a in self.fused]

    def compile_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every pipeline set's ``compile`` (or constructor); empty without LoRA.

        FUSE only: MODE_FUSE. STATIC: MODE_STATIC with the compiled alphas. DYNAMIC: MODE_DYNAMIC
        registering every DYNAMIC adapter at alpha 0 (plus an empty marker adapter, see
        :meth:`generate_kwargs`). Call :meth:`model_dir` first when the node has FUSE adapters.
        """
        if self.empty:
            return {}
        import openvino_genai

        mode = openvino_genai.AdapterConfig.Mode
        ov = self._adapters()
        if self.is_static:
            pairs = self._fixed_fused(ov) + [(ov[alias], alpha) for alias, alpha in self.static_alphas().items()]
            return {"adapters": openvino_genai.AdapterConfig(pairs, mode.MODE_STATIC)}
        if self.dynamic:
            pairs = self._fixed_fused(ov) + [(ov[a.alias], 0.0) for a in self.dynamic]
            return {"adapters": openvino_genai.AdapterConfig([*pairs, (ov[_SENTINEL], 0.0)], mode.MODE_DYNAMIC)}
        if self._fuse_merged:
            return {}
        return {"adapters": openvino_genai.AdapterConfig([(ov[a.alias], a.alpha) for a in self.fused],
                                                         mode.MODE_FUSE)}

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
        import openvino_genai

        return {"adapters": openvino_genai.AdapterConfig(self._dynamic_pairs(self._adapters(), alphas))}

    def request_order(self, alphas: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        """The DYNAMIC adapters one request passes to ``generate``, as (alias, alpha) pairs: the
        active ones (``alphas``, in application order) first, then every other registered DYNAMIC
        adapter in ``lora_adapters`` order at alpha 0. Pure; alphas are rounded to float32."""
        active = tuple((alias, _as_float32(alpha)) for alias, alpha in alphas.items())
        rest = tuple((a.alias, 0.0) for a in self.dynamic if a.alias not in alphas)
        return active + rest

    def _dynamic_pairs(self, ov: Mapping[str, Any], alphas: Mapping[str, float]) -> list[tuple[Any, float]]:
        order = self.request_order(alphas)
        pairs = self._fixed_fused(ov) + [(ov[alias], alpha) for alias, alpha in order]
        return [*pairs, (self.marker(order), 0.0)]

    def marker(self, order: tuple[tuple[str, float], ...]) -> Any:
        """The empty marker adapter of one configuration (a :meth:`request_order` value): the same
        object for the same configuration, a distinct one for every other; the base (every alpha 0
        in registration order) uses the one registered at compile time. A changed marker makes
        OpenVINO GenAI reload the adapter state in full."""
        if order == self.request_order({}):
            return self._adapters()[_SENTINEL]
        with self._fp_lock:
            known = self._markers.get(order)
            if known is not None:
                self._markers.move_to_end(order)
                return known
        import openvino_genai

        marker = openvino_genai.Adapter(_empty_safetensors())
        with self._fp_lock:
            marker = self._markers.setdefault(order, marker)
            if len(self._markers) > _MARKER_CACHE:
                self._markers.popitem(last=False)
            return marker


# ----- request helpers -----
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


def _names(items: Iterable[LoraAdapter | CompositeAdapter]) -> str:
    return ", ".join(f'"{i.alias}"' for i in items)


# ----- adapter files -----
_SAFETENSORS_DTYPES = {"F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024
# OpenVINO GenAI's default LoRA tensor patterns (lora/adapter.cpp, default_lora_patterns).
_PART_A = re.compile(r"((.*)[_.](lora[_.](A|down)\.weight))|((.*lora[12])\.(down\.weight))")
_PART_B = re.compile(r"((.*)[_.](lora[_.](B|up)\.weight))|((.*lora[12])\.(up\.weight))")
_PART_ALPHA = re.compile(r"(.*)\.alpha")
_SENTINEL = "\x00marker"
_MARKER_CACHE = 1024
_FLOAT32_MAX = 3.4028234663852886e38


def _layer_of(name: str) -> tuple[str, str] | None:
    """``(layer, part)`` of a LoRA tensor name as OpenVINO GenAI groups it, part in down/up/alpha."""
    for pattern, part in ((_PART_A, "down"), (_PART_B, "up")):
        match = pattern.fullmatch(name)
        if match is not None:
            return (match.group(2) if match.group(2) is not None else match.group(6)), part
    match = _PART_ALPHA.fullmatch(name)
    return (match.group(1), "alpha") if match is not None else None


def _read_header(path: Path) -> tuple[str | None, dict[str, Any], int]:
    """``(problem, header, data offset)`` of a safetensors file; reads the header only."""
    if not path.exists():
        return f"file not found: {path}", {}, 0
    if not path.is_file():
        return f"{path} is not a file", {}, 0
    if path.suffix.lower() != ".safetensors":
        return f"{path} is not a .safetensors file", {}, 0
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path} is not a valid .safetensors file (it is {len(head)} bytes long)", {}, 0
            (size,) = struct.unpack("<Q", head)
            if size > _MAX_HEADER:
                return f"{path} is not a valid .safetensors file (header size {size} is implausible)", {}, 0
            raw = fh.read(size)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}", {}, 0
    if len(raw) < size:
        return f"{path} is not a valid .safetensors file (truncated header)", {}, 0
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{path} is not a valid .safetensors file (its header is not JSON)", {}, 0
    if not isinstance(header, dict):
        return f"{path} is not a valid .safetensors file (its header is not a JSON object)", {}, 0
    return None, header, 8 + size


def read_lora_file(path: Path) -> tuple[str | None, set[str]]:
    """``(problem, layer keys)`` of a .safetensors LoRA file: the problem (user-facing, without the
    alias) or None, and the LoRA layer names its tensors address (``lora_unet_..._to_q``).

    Reads the header only. Mirrors what openvino_genai.Adapter requires: a safetensors file whose
    LoRA tensors are F32, F16 or BF16 and come in down/up pairs.
    """
    problem, header, _ = _read_header(path)
    if problem is not None:
        return problem, set()
    parts: dict[str, set[str]] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        grouped = _layer_of(name)
        if grouped is None:
            continue
        dtype = info.get("dtype")
        if dtype not in _SAFETENSORS_DTYPES:
            return f"tensor {name} has dtype {dtype}; OpenVINO GenAI reads only F32, F16 and BF16 LoRA tensors", set()
        parts.setdefault(grouped[0], set()).add(grouped[1])
    if not parts:
        return f"{path} contains no LoRA tensors (expected names like lora_unet_..._to_q.lora_down.weight)", set()
    for layer, kinds in sorted(parts.items()):
        if not {"down", "up"} <= kinds:
            missing = "up" if "down" in kinds else "down"
            return f"LoRA layer {layer} has no {missing} weight", set()
    return None, set(parts)


def _empty_safetensors() -> Any:
    """An ov.Tensor holding a safetensors file without tensors: an adapter that touches nothing."""
    import numpy as np
    import openvino as ov  # type: ignore[import-untyped]

    raw = json.dumps({"__metadata__": {"ovms_graph": "configuration marker"}}).encode()
    data = struct.pack("<Q", len(raw)) + raw
    return ov.Tensor(np.frombuffer(data, dtype=np.uint8).copy())


def _as_float32(value: float) -> float:
    """``value`` as OpenVINO GenAI stores an alpha (C++ float)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# ----- how OpenVINO GenAI's UNet pipelines name LoRA layers -----
_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
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
    if ".in." in name:
        name = re.sub(r"in\.layers\.2", "conv1", name)
    if ".out." in name:
        name = re.sub(r"out\.layers\.3", "conv2", name)
    if "downsamplers" in name or "upsamplers" in name:
        name = re.sub("op", "conv", name)
    if "skip" in name:
        name = re.sub(r"skip\.connection", "conv_shortcut", name)
    for pattern, repl in ((r"lora.unet", "lora_unet"), (r"lora.te", "lora_te"), (r"base.model", "base_model")):
        name = re.sub(pattern, repl, name)
    return name


def unet_submodels(root: Path) -> dict[str, str]:
    """Submodel folder -> LoRA prefix OpenVINO GenAI uses for it, for UNet models (SD 1.x/2.x, SDXL,
    LCM and their inpainting variants); empty for other architectures."""
    if not (root / "unet" / "openvino_model.xml").is_file():
        return {}
    if (root / "text_encoder_2").is_dir():
        return {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    return {"unet": "lora_unet", "text_encoder": "lora_te"}


def _applies(key: str, prefix: str, name: str) -> bool:
    """OpenVINO GenAI's rule: the layer name without the prefix is a substring of the node's
    friendly name, or of the friendly name with dots as underscores."""
    if not key.startswith(prefix):
        return False
    rest = key[len(prefix):]
    return rest in name or rest in name.replace(".", "_")


class LayerIndex:
    """Friendly names of the weighted layers (MatMul, Convolution) of a UNet model's submodels, read
    from the OpenVINO IR XML: answers which LoRA layers OpenVINO GenAI would apply."""

    _cache: dict[tuple[str, float], LayerIndex] = {}
    _cache_lock = threading.Lock()

    def __init__(self, root: Path, layers: Mapping[str, tuple[str, ...]], prefixes: Mapping[str, str]) -> None:
        self.root = root
        self.layers = dict(layers)
        self.prefixes = dict(prefixes)

    @classmethod
    def for_model(cls, root: Path) -> LayerIndex | None:
        """The index of the model folder ``root``, or None when it is not a UNet model (then the
        names go through rules this index does not model, e.g. FLUX's). Cached per folder and time."""
        prefixes = unet_submodels(root)
        if not prefixes:
            return None
        stamp = max((root / sub / "openvino_model.xml").stat().st_mtime
                    for sub in prefixes if (root / sub / "openvino_model.xml").is_file())
        key = (str(root.resolve()), stamp)
        with cls._cache_lock:
            cached = cls._cache.get(key)
        if cached is not None:
            return cached
        layers = {sub: _weighted_layer_names(root / sub / "openvino_model.xml")
                  for sub in prefixes if (root / sub / "openvino_model.xml").is_file()}
        index = cls(root, layers, prefixes)
        with cls._cache_lock:
            cls._cache[key] = index
        return index

    def match(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """``(matched, unmatched)`` LoRA layer keys. SGM-style keys (``input_blocks``), which OpenVINO
        GenAI renames through block arithmetic, count as matched: they are not refused."""
        matched: set[str] = set()
        unmatched: set[str] = set()
        for key in keys:
            ok = any(b in key for b in _SGM_BLOCKS) or self._matches(diffusers_layer_name(key))
            (matched if ok else unmatched).add(key)
        return matched, unmatched

    def _matches(self, key: str) -> bool:
        return any(_applies(key, self.prefixes[sub], name)
                   for sub, names in self.layers.items() for name in names)


def _weighted_layer_names(xml: Path) -> tuple[str, ...]:
    names: list[str] = []
    try:
        for _, elem in ET.iterparse(str(xml), events=("end",)):
            if elem.tag == "layer":
                if elem.get("type") in _WEIGHTED_LAYERS:
                    names.append(elem.get("name", ""))
                elem.clear()
    except (ET.ParseError, OSError) as exc:
        log.warning("cannot read layer names from %s: %s", xml, exc)
    return tuple(names)


_WEIGHTED_LAYERS = {"MatMul", "Convolution"}


# ----- FUSE merged into the weights, next to DYNAMIC / STATIC adapters -----
def merge_unsupported(models_path: Path, adapters: Sequence[Path]) -> str | None:
    """Why the FUSE adapters cannot be merged by :class:`MergedModel` (None when they can)."""
    if not unet_submodels(models_path):
        return "only UNet models (SD 1.x/2.x, SDXL) are merged here"
    for path in adapters:
        _, keys = read_lora_file(path)
        if any(b in k for k in keys for b in _SGM_BLOCKS):
            return f"{path} uses SGM block names (input_blocks, ...)"
    return None


def _load_lora_tensors(path: Path) -> dict[str, dict[str, Any]]:
    """Normalized layer name -> {"down", "up"} float32 arrays of one adapter, sorted by name (the
    order OpenVINO GenAI searches them in)."""
    import numpy as np

    problem, header, offset = _read_header(path)
    if problem is not None:
        raise ValueError(problem)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    layers: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        grouped = _layer_of(name)
        if grouped is None or grouped[1] == "alpha":
            continue
        begin, end = info["data_offsets"]
        raw = np.asarray(data[offset + begin:offset + end])
        if info["dtype"] == "BF16":
            values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.view(np.float16 if info["dtype"] == "F16" else np.float32).astype(np.float32)
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
        import openvino as ov

        core = ov.Core()
        tensors = [(_load_lora_tensors(path), alpha) for path, alpha in adapters]
        dest = Path(tempfile.mkdtemp(prefix="ovms-graph-fused-"))
        try:
            merged: list[str] = []
            for sub, prefix in unet_submodels(models_path).items():
                xml = models_path / sub / "openvino_model.xml"
                if not xml.is_file():
                    continue
                model = core.read_model(str(xml))
                if _fuse_into(core, model, tensors, prefix):
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


def _fuse_into(core: Any, model: Any, adapters: Sequence[tuple[Mapping[str, Mapping[str, Any]], float]],
               prefix: str) -> int:
    """Replace the weights of every layer the adapters apply to; returns how many were replaced."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    replaced = 0
    helpers: dict[tuple[Any, ...], Any] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() not in _WEIGHTED_LAYERS:
            continue
        name = node.get_friendly_name()
        found: list[tuple[Mapping[str, Any], float]] = []
        for layers, alpha in adapters:
            for key, parts in layers.items():
                if _applies(key, prefix, name):
                    found.append((parts, alpha))
                    break
        if not found:
            continue
        weights = node.input_value(1)
        source = weights.get_node()
        convert = source if source.get_type_name() == "Convert" else None
        constant = convert.input_value(0).get_node() if convert is not None else source
        if constant.get_type_name() != "Constant":
            raise ValueError(f"cannot merge a LoRA adapter into {name}: its weights are not a plain constant "
                             "(compressed weights?); MODE_FUSE needs f32/f16/bf16 weights")
        down = np.concatenate([np.asarray(p["down"]) for p, _ in found], axis=0)
        up = np.concatenate([np.asarray(p["up"]) for p, _ in found], axis=1)
        alphas = np.concatenate([np.full((1, np.asarray(p["down"]).shape[0]), a, np.float32) for p, a in found],
                                axis=1)
        target_rank = len(weights.get_partial_shape())
        signature = (constant.get_output_element_type(0).get_type_name(), str(constant.get_output_partial_shape(0)),
                     convert is not None, target_rank, down.shape, up.shape)
        compiled = helpers.get(signature)
        if compiled is None:
            w = ops.parameter(constant.get_output_partial_shape(0), constant.get_output_element_type(0))
            target = ops.convert(w, convert.get_output_element_type(0)) if convert is not None else w
            target_type = target.get_output_element_type(0)
            inputs = [ops.parameter(list(alphas.shape), np.float32), ops.parameter(list(up.shape), np.float32),
                      ops.parameter(list(down.shape), np.float32)]
            cast = [p if target_type == ov.Type.f32 else ops.convert(p, target_type) for p in inputs]
            delta = ops.matmul(ops.multiply(cast[0], cast[1]), cast[2], False, False)
            if target_rank != 2:
                delta = ops.reshape(delta, ops.constant(np.array([0, 0] + [1] * (target_rank - 2), np.uint32)), True)
            helper = ov.Model([ops.add(target, delta)], [w, *inputs])
            compiled = core.compile_model(helper, "CPU")
            helpers[signature] = compiled
        fused = compiled([constant.get_tensor_view(), alphas, up, down])[0]
        replacement = ops.constant(np.array(fused, copy=True))
        for consumer in list(weights.get_target_inputs()):
            consumer.replace_source_output(replacement.output(0))
        replaced += 1
    return replaced
