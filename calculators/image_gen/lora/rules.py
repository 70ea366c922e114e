"""Load-time rules of a node's LoRA options, one function per stage, each returning its problems.

The stages run in this order and all of them run (a node's every problem is reported at once):
aliases, modes, composites, adapter files. Messages name the alias and the rule; fields are the
``node_options`` paths the runtime renders after the node.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from calculators.image_gen.lora.entries import (
    FIELD_PREFIX,
    CompositeAdapter,
    CompositeComponent,
    LoraAdapter,
    LoraMode,
    default_alpha,
    fmt_alpha,
    names,
)
from calculators.image_gen.lora.layer_names import LayerIndex
from calculators.image_gen.lora.safetensors_header import read_lora_file
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.aliases import is_dot_name, is_valid_alias
from ovms_graph.calculator import NodeIssue

if TYPE_CHECKING:
    from calculators.image_gen.lora.plan import LoraPlan

log = logging.getLogger("calculators.image_gen.lora")


def alias_issues(plan: LoraPlan, graph_name: str) -> list[NodeIssue]:
    """Missing, malformed, graph-named and duplicate aliases of adapters and composites."""
    issues: list[NodeIssue] = []
    seen: dict[str, str] = {}
    named: list[tuple[str, str, str]] = [(a.alias, a.field, "LoRA adapter") for a in plan.adapters]
    named += [(c.alias, c.field, "composite LoRA adapter") for c in plan.composites]
    for alias, fld, kind in named:
        if not alias:
            issues.append(NodeIssue(f"{kind} alias is missing or empty", field=f"{fld}.alias"))
            continue
        issues += [NodeIssue(message, field=f"{fld}.alias") for message in _alias_problems(alias, kind, graph_name)]
        first = seen.get(alias)
        if first is not None:
            issues.append(NodeIssue(f'LoRA alias "{alias}" is used twice (first by {first}); aliases must be '
                                    "unique", field=f"{fld}.alias"))
        else:
            seen[alias] = fld.removeprefix(FIELD_PREFIX)
    return issues


def _alias_problems(alias: str, kind: str, graph_name: str) -> list[str]:
    problems: list[str] = []
    if is_dot_name(alias):
        problems.append(f'{kind} alias "{alias}" may not be "." or ".." (it would name a folder outside loras/)')
    elif not is_valid_alias(alias):
        problems.append(f'{kind} alias "{alias}" may only contain letters, digits, ".", "_" and "-" '
                        "([A-Za-z0-9._-]+)")
    if alias == graph_name:
        problems.append(f'{kind} alias "{alias}" equals the graph name; aliases must differ from graph names')
    return problems


def mode_issues(plan: LoraPlan) -> list[NodeIssue]:
    """Modes that cannot be combined: STATIC with DYNAMIC, DYNAMIC on NPU, STATIC composite counts."""
    issues: list[NodeIssue] = []
    static, dynamic = plan.static, plan.dynamic
    composites = f"{FIELD_PREFIX}composite_lora_adapters"
    if static and dynamic:
        issues.append(NodeIssue(f"STATIC and DYNAMIC LoRA adapters cannot be mixed in one node (STATIC: "
                                f"{names(static)}; DYNAMIC: {names(dynamic)})", field=f"{static[0].field}.mode"))
    if any(d.upper().startswith("NPU") for d in plan.devices) and dynamic:
        issues.append(NodeIssue(f"NPU supports only STATIC and FUSE LoRA adapters; set mode: STATIC on "
                                f"{names(dynamic)}", field=f"{dynamic[0].field}.mode"))
    if len(static) > 1 and len(plan.composites) != 1:
        issues.append(NodeIssue(f"STATIC mode with several adapters ({names(static)}) needs exactly one composite "
                                f"(composite_lora_adapters) to name the routable combination, found "
                                f"{len(plan.composites)}", field=composites))
    elif len(static) == 1 and len(plan.composites) > 1:
        issues.append(NodeIssue(f"STATIC mode allows at most one composite, found {len(plan.composites)} "
                                f"({names(plan.composites)})", field=composites))
    return issues


def composite_issues(plan: LoraPlan) -> list[NodeIssue]:
    """Every composite's problems: no components, bad components, STATIC adapters it leaves out."""
    issues: list[NodeIssue] = []
    for entry in plan.composites:
        if not entry.components:
            issues.append(NodeIssue(f'composite LoRA adapter "{entry.alias}" has no components; list at least one '
                                    "components { adapter_alias: \"...\" }", field=f"{entry.field}.components"))
        used: set[str] = set()
        for j, comp in enumerate(entry.components):
            issues += component_issues(plan, entry, j, comp, used)
            used.add(comp.adapter_alias)
        issues += _static_composite_issues(plan, entry)
    return issues


def component_issues(plan: LoraPlan, entry: CompositeAdapter, j: int, comp: CompositeComponent,
                     used: set[str]) -> list[NodeIssue]:
    """The problems of component ``j`` of ``entry``; ``used`` holds the aliases listed before it."""
    fld = f"{entry.field}.components[{j}]"
    target = plan.adapter(comp.adapter_alias)
    if target is None:
        known = ", ".join(f'"{a.alias}"' for a in plan.adapters) or "none"
        return [NodeIssue(f'composite LoRA adapter "{entry.alias}" refers to unknown LoRA adapter '
                          f'"{comp.adapter_alias}" (lora_adapters aliases: {known})', field=f"{fld}.adapter_alias")]
    issues: list[NodeIssue] = []
    if comp.adapter_alias in used:
        issues.append(NodeIssue(f'composite LoRA adapter "{entry.alias}" lists "{comp.adapter_alias}" twice',
                                field=f"{fld}.adapter_alias"))
    if target.mode is LoraMode.FUSE:
        issues.append(NodeIssue(f'composite LoRA adapter "{entry.alias}" refers to FUSE adapter '
                                f'"{comp.adapter_alias}"; FUSE adapters are always applied and cannot be part of a '
                                "composite", field=f"{fld}.adapter_alias"))
    if not default_alpha(comp.alpha) and not default_alpha(target.alpha):
        issues.append(NodeIssue(f'LoRA adapter "{comp.adapter_alias}" has a non-default alpha both on the adapter '
                                f'({fmt_alpha(target.alpha)}) and in composite "{entry.alias}" '
                                f"({fmt_alpha(comp.alpha)}); set alpha at only one level", field=f"{fld}.alpha"))
    if not math.isfinite(comp.alpha):
        issues.append(NodeIssue(f'composite LoRA adapter "{entry.alias}": alpha of "{comp.adapter_alias}" must be '
                                "a finite number", field=f"{fld}.alpha"))
    return issues


def _static_composite_issues(plan: LoraPlan, entry: CompositeAdapter) -> list[NodeIssue]:
    if not plan.static or not entry.components:
        return []
    listed = {c.adapter_alias for c in entry.components}
    missing = [a for a in plan.static if a.alias not in listed]
    if not missing:
        return []
    return [NodeIssue(f'STATIC composite "{entry.alias}" must list every STATIC adapter; missing {names(missing)}',
                      field=f"{entry.field}.components")]


def file_issues(plan: LoraPlan, options: ImageGenCalculatorOptions | None, models_path: Path | None) -> list[NodeIssue]:
    """Every adapter's alpha and file problems: a non-finite alpha, a missing path, an unreadable
    or malformed file, a file none of whose layers the model at ``models_path`` has."""
    layers = plan.layer_indexes.for_model(models_path) if models_path is not None and models_path.is_dir() else None
    issues: list[NodeIssue] = []
    for adapter in plan.adapters:
        if not math.isfinite(adapter.alpha):
            issues.append(NodeIssue(f'LoRA adapter "{adapter.alias}": alpha must be a finite number',
                                    field=f"{adapter.field}.alpha"))
        given = options is None or bool(options.lora_adapters[adapter.index].path)
        problem = adapter_file_problem(adapter, given, layers)
        if problem is not None:
            issues.append(NodeIssue(f'LoRA adapter "{adapter.alias}": {problem}', field=f"{adapter.field}.path"))
    return issues


def adapter_file_problem(adapter: LoraAdapter, given: bool, layers: LayerIndex | None) -> str | None:
    """What is wrong with one adapter's file (without the alias), or None. ``given`` is False when
    the path option is empty; ``layers`` (None for non-UNet models) checks the layer names. A file
    whose tensors match some but not all layers is accepted with a warning in the log."""
    if not given:
        return "path is missing or empty"
    problem, keys = read_lora_file(adapter.path)
    if problem is not None or layers is None:
        return problem
    matched, unmatched = layers.match(keys)
    if not matched:
        sample = ", ".join(sorted(keys)[:2])
        return (f"none of the {len(keys)} LoRA layers in {adapter.path} matches a layer of the model in "
                f"{layers.root} (e.g. {sample}); OpenVINO GenAI would silently ignore it. Is it for another "
                "architecture, or not in kohya format (lora_unet_..., lora_te_...)?")
    if unmatched:
        log.warning('LoRA adapter "%s" (%s): %d of %d LoRA layers match no layer of the model and will be '
                    "ignored, e.g. %s", adapter.alias, adapter.path, len(unmatched),
                    len(unmatched) + len(matched), ", ".join(sorted(unmatched)[:3]))
    return None
