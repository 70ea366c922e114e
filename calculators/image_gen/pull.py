"""``ovms-graph pull`` and ``serve --source_model``: fetch a model from Hugging Face and write its graph.

What a pull guarantees:

* Every flag is checked (graph options, ``--source_loras`` grammar, local LoRA files) before anything
  is downloaded; such problems raise :class:`UsageError` (exit status 2) naming the flag. What depends
  on what the Hub or a URL holds (a file that is not in the repository, a repository that is not an
  image generation model) is a :class:`FetchError` (exit status 1), like any failed download.
* The model lands in ``<model_repository_path>/<source_model>/``. It is downloaded into a hidden
  sibling folder (``.<name>.download``) and renamed into place only when complete, so an interrupted
  pull never leaves a folder that passes for a whole model; the next pull resumes the download.
* A model already present is not downloaded again (not even contacted) unless ``--overwrite_models``.
* A repository in OpenVINO IR layout is used as is; any other diffusers repository is converted with
  optimum-intel (the ``[convert]`` extra) at ``--weight-format``.
* LoRA adapters from Hugging Face or URLs are fetched into ``<model dir>/loras/<alias>/`` the same way;
  local adapter files are referenced in place.
* graph.pbtxt is (re)written from the flags; with ``--config_path`` the config.json entry is created
  or updated. Download and conversion failures raise :class:`FetchError` (exit status 1).

``HF_ENDPOINT`` and ``HF_TOKEN`` are read when a pull starts. Progress bars are shown only when
standard error is a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from calculators.image_gen.convert import check_convertible, convert_model, is_openvino_ir
from calculators.image_gen.fetch import (
    FetchError,
    Hub,
    PullError,
    UsageError,
    download_url,
    fetch_error,
    first_line,
    hub_from_env,
    install_folder,
    progress_bars,
    remove_path,
)
from calculators.image_gen.graph_writer import (
    CompositeComponentLine,
    CompositeLine,
    GraphFlags,
    LoraAdapterLine,
    check_graph_flags,
    render_graph,
    write_graph,
)
from calculators.image_gen.option_table import DIRECT_FLAG_ROWS, with_flag_fields
from calculators.image_gen.source_loras import (
    LoraAdapterSource,
    LoraSourceKind,
    SourceLoras,
    SourceLorasError,
    parse_source_loras,
    valid_repo_id,
)
from ovms_graph.config import GraphEntry, write_model_entry
from ovms_graph.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("int8", "int4", "fp16", "fp32")
LORA_SOURCE_MARKER = ".ovms_graph_source.json"

#: model_index.json ``_class_name`` values that OpenVINO GenAI 2026.4 serves as image generation.
IMAGE_GENERATION_PIPELINES = frozenset({
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
    "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline",
    "LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline",
    "FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline", "Flux2KleinPipeline",
    "QwenImagePipeline", "ZImagePipeline",
})

# Files a diffusers repository may carry that a conversion never reads (checkpoints in other formats).
_CONVERT_IGNORE = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*.tflite", "*.ot"]


@dataclass(frozen=True)
class _PullOptions:
    source_model: str
    model_repository_path: Path
    task: str | None = None
    model_name: str | None = None
    target_device: str | None = None
    source_loras: str | None = None
    num_streams: int | None = None
    weight_format: str = "int8"
    overwrite_models: bool = False
    config_path: Path | None = None


PullOptions = with_flag_fields(_PullOptions, """What ``pull`` (and ``serve --source_model``) downloads and writes
    into graph.pbtxt. Besides the fields above, one per ``--<field>`` row of the option table (``resolution``,
    ``max_num_inference_steps``, ...), None when the flag is not given.""")


@dataclass(frozen=True)
class PullPlan:
    """Checked flags: where the model goes, what it is served as, and what the graph will say."""

    source_model: str
    model_dir: Path
    served_name: str
    graph: GraphFlags
    loras: SourceLoras


# ----- phase 1: flags ------------------------------------------------------------------------------

def plan_pull(options: PullOptions, *, cwd: Path | None = None) -> PullPlan:
    """Check every flag without touching the network; raises UsageError listing every problem."""
    source = options.source_model
    served = options.model_name or source
    graph = GraphFlags(device=options.target_device, num_streams=options.num_streams,
                       **{row.field: getattr(options, row.field) for row in DIRECT_FLAG_ROWS})
    loras, lora_problems = _plan_loras(options, served, cwd)
    problems = _pull_flag_problems(options) + check_graph_flags(graph) + lora_problems
    if problems:
        raise UsageError("\n".join(problems))
    model_dir = Path(os.path.normpath(options.model_repository_path.absolute() / source))
    return PullPlan(source, model_dir, served, graph, loras)


def _pull_flag_problems(options: PullOptions) -> list[str]:
    """The problems of the flags that are the pull's own (not graph options, not ``--source_loras``)."""
    problems: list[str] = []
    source = options.source_model
    if not source or not valid_repo_id(source):
        problems.append(f'--source_model: expected a Hugging Face model id such as '
                        f'OpenVINO/stable-diffusion-v1-5-int8-ov, got "{source}"')
    if options.task not in (None, "image_generation"):
        problems.append(f'--task: only image_generation is supported, got "{options.task}"')
    if options.weight_format not in WEIGHT_FORMATS:
        problems.append(f'--weight-format: expected one of {", ".join(WEIGHT_FORMATS)}, got "{options.weight_format}"')
    if options.model_name is not None and not options.model_name.strip():
        problems.append("--model_name: must not be empty")
    return problems


def _plan_loras(options: PullOptions, served: str, cwd: Path | None) -> tuple[SourceLoras, list[str]]:
    """The parsed ``--source_loras`` (empty when it has a problem) and its problems."""
    try:
        loras = parse_source_loras(options.source_loras, device=options.target_device, base_dir=cwd)
    except SourceLorasError as exc:
        return SourceLoras(), [str(exc)]
    return loras, [f"--source_loras: alias '{alias}' is the served model name; LoRA aliases must differ "
                   "from it (or set --model_name)" for alias in loras.aliases if alias == served]


# ----- helpers -------------------------------------------------------------------------------------

def _no_model_index(source: str) -> FetchError:
    return FetchError(f"--source_model {source}: not an image generation model: the repository has no "
                      "model_index.json (--task image_generation needs a diffusers pipeline, e.g. "
                      "OpenVINO/stable-diffusion-v1-5-int8-ov)")


def _check_pipeline(model_index: Path, source: str) -> str:
    """The pipeline class named by ``model_index``; FetchError when it is not an image generation model."""
    what = f"--source_model {source}"
    if not model_index.is_file():
        raise _no_model_index(source)
    try:
        data = json.loads(model_index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{what}: model_index.json is not valid JSON ({first_line(exc)})") from exc
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise FetchError(f"{what}: not an image generation model: model_index.json names no pipeline "
                         "(_class_name)")
    if name not in IMAGE_GENERATION_PIPELINES:
        raise FetchError(f"{what}: not an image generation model: model_index.json names pipeline '{name}', "
                         "which OpenVINO GenAI does not serve for image generation (supported: "
                         f"{', '.join(sorted(IMAGE_GENERATION_PIPELINES))})")
    return name


# ----- the model -----------------------------------------------------------------------------------

def _pull_model_files(plan: PullPlan, options: PullOptions, hub: Hub) -> None:
    """Download (and convert if needed) the model into ``plan.model_dir``; a no-op when present.

    Stages: list the repository, fetch and check model_index.json, fetch the rest, install (converted
    first unless it is OpenVINO IR).
    """
    target = plan.model_dir
    if target.is_dir() and not options.overwrite_models:
        print(f"Path already exists on local filesystem. Skipping download to path: {target}", flush=True)
        _check_pipeline(target / "model_index.json", plan.source_model)
        return
    revision, files = _repo_files(plan.source_model, hub)
    staging = target.with_name(f".{target.name}.download")
    if "model_index.json" not in files:
        raise _no_model_index(plan.source_model)
    common: dict[str, Any] = dict(revision=revision, local_dir=staging, endpoint=hub.endpoint, token=hub.token,
                                  force_download=options.overwrite_models)
    _snapshot(plan.source_model, hub, allow_patterns=["model_index.json"], **common)
    pipeline = _check_pipeline(staging / "model_index.json", plan.source_model)
    ir = is_openvino_ir(files)
    if not ir:
        check_convertible(plan.source_model)
    print(f"Downloading {plan.source_model} from {hub.endpoint} to {target}", flush=True)
    _snapshot(plan.source_model, hub, ignore_patterns=None if ir else _CONVERT_IGNORE, **common)
    remove_path(staging / ".cache")
    if ir:
        install_folder(staging, target)
        return
    converted = target.with_name(f".{target.name}.convert")
    remove_path(converted)
    convert_model(staging, converted, options.weight_format, source=plan.source_model, pipeline=pipeline)
    install_folder(converted, target)
    remove_path(staging)


def _repo_files(source: str, hub: Hub) -> tuple[str | None, list[str]]:
    """The repository's current revision and the files in it."""
    api = hub.api()
    try:
        info = api.model_info(source)
        revision = info.sha
        files = [s.rfilename for s in info.siblings] if info.siblings is not None else \
            api.list_repo_files(source, revision=revision)
    except Exception as exc:
        raise fetch_error(f"--source_model {source}", exc, hub) from exc
    return revision, files


def _snapshot(source: str, hub: Hub, **kwargs: Any) -> None:
    """``snapshot_download`` of ``source``; any failure becomes the FetchError that names ``--source_model``."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(source, **kwargs)
    except Exception as exc:
        raise fetch_error(f"--source_model {source}", exc, hub) from exc


# ----- LoRA adapters -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _LoraFetch:
    """A remote adapter and the file it resolves to (relative to its repo, or the URL's name)."""

    adapter: LoraAdapterSource
    file: str


def _lora_dir(plan: PullPlan, alias: str) -> Path:
    return plan.model_dir / "loras" / alias


def _present_lora(folder: Path, adapter: LoraAdapterSource) -> str | None:
    """The file of an earlier fetch of the same source into ``folder``, if it is there."""
    try:
        marker = json.loads((folder / LORA_SOURCE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("source") != adapter.spec:
        return None
    file = marker.get("file")
    if isinstance(file, str) and (folder / file).is_file():
        return file
    return None


def _resolve_hf_lora(adapter: LoraAdapterSource, hub: Hub) -> str:
    """The .safetensors file an HF adapter source names, checked against the repository's files."""
    what = f"--source_loras entry '{adapter.entry}'"
    try:
        files = hub.api().list_repo_files(adapter.source)
    except Exception as exc:
        raise fetch_error(what, exc, hub) from exc
    candidates = sorted(f for f in files if f.endswith(".safetensors"))
    if adapter.filename is not None:
        if adapter.filename in files:
            return adapter.filename
        listed = ", ".join(candidates) or "none"
        raise FetchError(f"{what}: repository {adapter.source} has no file '{adapter.filename}' "
                         f"(.safetensors files: {listed})")
    if not candidates:
        raise FetchError(f"{what}: repository {adapter.source} has no .safetensors file")
    if len(candidates) > 1:
        raise FetchError(f"{what}: repository {adapter.source} has several .safetensors files: "
                         f"{', '.join(candidates)}. Name one: {adapter.alias}={adapter.source}@<file>")
    return candidates[0]


def _fetch_lora(plan: PullPlan, fetch: _LoraFetch, hub: Hub, *, progress: bool, force: bool) -> None:
    adapter = fetch.adapter
    target = _lora_dir(plan, adapter.alias)
    staging = target.with_name(f".{adapter.alias}.download")
    what = f"--source_loras entry '{adapter.entry}'"
    staging.mkdir(parents=True, exist_ok=True)
    print(f"Downloading LoRA adapter '{adapter.alias}' from {adapter.spec}", flush=True)
    try:
        if adapter.kind is LoraSourceKind.HF_REPO:
            from huggingface_hub import hf_hub_download

            hf_hub_download(adapter.source, fetch.file, local_dir=staging, endpoint=hub.endpoint, token=hub.token,
                            force_download=force)
            remove_path(staging / ".cache")
        else:
            (staging / fetch.file).unlink(missing_ok=True)
            download_url(adapter.source, staging / fetch.file, hub, progress=progress)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{what}: download failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"{what}: download failed: {exc.reason}") from exc
    except Exception as exc:
        raise fetch_error(what, exc, hub) from exc
    marker = {"source": adapter.spec, "file": fetch.file}
    (staging / LORA_SOURCE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    install_folder(staging, target)


# ----- the whole pull ------------------------------------------------------------------------------

def _graph_flags(plan: PullPlan, lora_files: dict[str, str]) -> GraphFlags:
    mode = "STATIC" if plan.graph.uses_npu else "DYNAMIC"
    adapters = []
    for adapter in plan.loras.adapters:
        if adapter.kind is LoraSourceKind.LOCAL:
            assert adapter.path is not None
            path = str(adapter.path)
        else:
            path = f"loras/{adapter.alias}/{lora_files[adapter.alias]}"
        adapters.append(LoraAdapterLine(adapter.alias, path, adapter.alpha, mode))
    composites = tuple(
        CompositeLine(c.alias, tuple(CompositeComponentLine(p.adapter_alias, p.alpha) for p in c.components))
        for c in plan.loras.composites)
    return replace(plan.graph, lora_adapters=tuple(adapters), composite_lora_adapters=composites)


def _header(plan: PullPlan) -> str:
    lines = [f"Image generation graph for {plan.source_model}, written by ovms-graph pull.",
             "Rewritten on every pull; to keep manual edits, serve it with --config_path."]
    if plan.served_name != plan.source_model:
        lines.insert(1, f"Served as: {plan.served_name}")
    return "\n".join(lines)


def pull_model(options: PullOptions) -> GraphEntry:
    """Download what ``options`` name, write graph.pbtxt (and config.json), and return the graph to serve.

    Raises UsageError (exit status 2) for flags that cannot be used and FetchError (exit status 1)
    when a download or conversion fails; both are ConfigError values carrying one message.
    """
    plan = plan_pull(options)
    hub = hub_from_env()
    _quiet_http_clients()
    progress = sys.stderr.isatty()
    with progress_bars(progress):
        # Resolve every remote adapter before the (large) model download, so that a wrong
        # --source_loras entry is reported before anything is fetched.
        lora_files, fetches = _plan_lora_fetches(plan, options, hub)
        _pull_model_files(plan, options, hub)
        for fetch in fetches:
            _fetch_lora(plan, fetch, hub, progress=progress, force=options.overwrite_models)

    graph_path = plan.model_dir / "graph.pbtxt"
    text = render_graph(_graph_flags(plan, lora_files), header=_header(plan))
    if write_graph(graph_path, text):
        print(f"Wrote {graph_path}", flush=True)
    if options.config_path is not None:
        _write_config_entry(plan, options.config_path)
    return GraphEntry(plan.served_name, graph_path, f"--source_model {plan.source_model}")


def _quiet_http_clients() -> None:
    """huggingface_hub's HTTP clients log every request at INFO; show them only when debugging."""
    if not log.isEnabledFor(logging.DEBUG):
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _plan_lora_fetches(plan: PullPlan, options: PullOptions, hub: Hub
                       ) -> tuple[dict[str, str], list[_LoraFetch]]:
    """Each remote adapter's file (by alias), and the adapters still to be fetched."""
    lora_files: dict[str, str] = {}
    fetches: list[_LoraFetch] = []
    for adapter in plan.loras.adapters:
        if adapter.kind is LoraSourceKind.LOCAL:
            continue
        present = None if options.overwrite_models else _present_lora(_lora_dir(plan, adapter.alias), adapter)
        if present is not None:
            lora_files[adapter.alias] = present
            continue
        file = _resolve_hf_lora(adapter, hub) if adapter.kind is LoraSourceKind.HF_REPO else str(adapter.filename)
        fetches.append(_LoraFetch(adapter, file))
        lora_files[adapter.alias] = file
    return lora_files, fetches


def _write_config_entry(plan: PullPlan, config_file: Path) -> None:
    """Create or update the served model's entry in ``--config_path``."""
    config_path = config_file.absolute()
    base_path = os.path.relpath(plan.model_dir, config_path.parent)
    try:
        write_model_entry(config_path, plan.served_name, base_path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--config_path {config_file}: cannot update it: {first_line(exc)}") from exc
    print(f"Model '{plan.served_name}' is in {config_file} (base_path {base_path})", flush=True)


def run_pull(options: PullOptions) -> int:
    """``ovms-graph pull``: 0 when the model is ready to serve, 1 when a download or conversion failed,
    2 for flags that cannot be used or a written graph that does not validate."""
    try:
        entry = pull_model(options)
    except PullError as exc:
        print(f"ovms-graph pull: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    return validate_pulled(entry)


def validate_pulled(entry: GraphEntry) -> int:
    """Check the written graph with the installed calculators, as ``ovms-graph validate`` would;
    0 and one line when valid, 2 with every problem printed otherwise."""
    from ovms_graph.graph import load_spec
    from ovms_graph.registry import Registry
    from ovms_graph.validation import validate_graph

    registry = Registry.from_entry_points()
    try:
        problems = validate_graph(load_spec(entry.graph_path, registry), registry, graph_name=entry.name)
    except ConfigError as exc:
        problems = exc.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"ovms-graph pull: error: the written graph {entry.graph_path} does not validate", file=sys.stderr)
        return 2
    print(f'{entry.graph_path}: graph "{entry.name}" is valid', flush=True)
    return 0
