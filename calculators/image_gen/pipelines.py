"""OpenVINO GenAI pipelines of one ImageGenCalculator node: a pool of pipeline sets.

What the model is (:class:`ModelInfo`, its family and tasks) is read by
:mod:`calculators.image_gen.model_info`; this module re-exports those names.

A :class:`PipelineSet` is one inpainting, one image-to-image and one text-to-image pipeline sharing
one weight load (inpainting loaded from disk, image-to-image derived from it, text-to-image from
that; a refused derivation falls back to loading from disk; FLUX and SD3 load each from disk, see
:data:`DERIVABLE`). OpenVINO GenAI's Python bindings have
no ``clone()`` and a pipeline runs one ``generate`` at a time, so a node keeps a
:class:`PipelinePool` of sets (``NUM_STREAMS``, default 1) and each request borrows one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calculators.image_gen.genai_errors import genai_reason
from calculators.image_gen.lora import LoraPlan
from calculators.image_gen.memory import InsufficientMemory, MemoryEstimate, available_bytes
from calculators.image_gen.model_info import (
    DERIVABLE,
    FAMILY_GUIDANCE,
    FAMILY_TEXT_FIELDS,
    GUIDANCE_FIXED_AT_FIRST_GENERATE,
    MODEL_DEFAULT_STEPS,
    T5_FAMILIES,
    UNET_FAMILIES,
    Family,
    Guidance,
    ModelInfo,
    Task,
    family_of,
    read_model_info,
)
from calculators.image_gen.options import NodeSettings, Resolution
from calculators.image_gen.warmup import warm_up
from ovms_graph.errors import RequestCancelled, ServiceUnavailable

log = logging.getLogger("calculators.image_gen")

#: Public names, including those re-exported from model_info (importers predate the split).
__all__ = [
    "DERIVABLE",
    "FAMILY_GUIDANCE",
    "FAMILY_TEXT_FIELDS",
    "GUIDANCE_FIXED_AT_FIRST_GENERATE",
    "MODEL_DEFAULT_STEPS",
    "T5_FAMILIES",
    "UNET_FAMILIES",
    "Family",
    "Guidance",
    "ImageGenResources",
    "ModelDefaults",
    "ModelInfo",
    "PipelineBuilder",
    "PipelinePool",
    "PipelineSet",
    "Task",
    "build_resources",
    "compile_properties",
    "family_of",
    "genai_reason",
    "model_defaults",
    "read_model_info",
]


@dataclass(frozen=True)
class ModelDefaults:
    """What the model does when a request leaves a value out (from its generation config)."""

    resolution: Resolution
    guidance_scale: float
    #: The T5 sequence length; OpenVINO GenAI 2026.4 fixes it at a pipeline's first generate.
    max_sequence_length: int = 512
    #: How much of an edit's input image is noised when the request gives no strength: image-to-image.
    strength: float = 0.8
    #: The same for inpainting (OpenVINO GenAI's inpainting pipelines default to 1.0).
    inpainting_strength: float = 1.0
    #: The model's own step count (LCM: 4, SD3 and FLUX: 28, SD: 50).
    num_inference_steps: int = 50


@dataclass
class PipelineSet:
    """One pipeline per available task, sharing weights; used by one request at a time."""

    index: int
    pipelines: dict[Task, Any] = field(default_factory=dict)

    def get(self, task: Task) -> Any:
        return self.pipelines[task]


def compile_properties(settings: NodeSettings, sets: int, cores: int | None = None,
                       cache_dir: Path | None = None) -> dict[str, Any]:
    """The properties passed to ``compile``: plugin_config (NUM_STREAMS removed), and with more than
    one set on CPU the threads split between sets (INFERENCE_NUM_THREADS, pinning off) unless the
    operator set them. Sets run truly in parallel only that way. ``cache_dir`` (the server's
    ``--cache_dir``) becomes CACHE_DIR unless plugin_config names one."""
    props = dict(settings.plugin_config)
    if cache_dir is not None:
        props.setdefault("CACHE_DIR", str(cache_dir))
    if sets > 1 and all(d.upper() == "CPU" for d in settings.devices):
        total = cores if cores is not None else (os.cpu_count() or 1)
        props.setdefault("INFERENCE_NUM_THREADS", max(1, total // sets))
        props.setdefault("ENABLE_CPU_PINNING", False)
    return props


def edit_limit(settings: NodeSettings) -> str | None:
    """Why this node cannot serve edits whatever the model, or None. openvino_genai 2026.4's VAE
    encoder takes one image, and a pipeline reshaped for N images per prompt expects N: every
    image-to-image and inpainting generate fails on such a node."""
    images = settings.static_num_images_per_prompt or 1
    if not settings.reshaped or images == 1:
        return None
    return (f"the node is reshaped for static_num_images_per_prompt {images}, and openvino_genai edits one image "
            "at a time; serve edits from a node with static_num_images_per_prompt 1")


class PipelineBuilder:
    """Builds pipeline sets for one node: loads, reshapes and compiles, derives what it can."""

    def __init__(self, settings: NodeSettings, properties: Mapping[str, Any],
                 extra_kwargs: Callable[[], Mapping[str, Any]], *, derive: bool = True) -> None:
        self.settings = settings
        self.properties = dict(properties)
        self.extra_kwargs = extra_kwargs
        self.derive = derive
        #: Why a task could not be built (first set), for load logs and request errors.
        self.refused: dict[Task, str] = {}

    def _classes(self) -> dict[Task, Any]:
        import openvino_genai  # type: ignore[import-untyped]

        return {Task.INPAINTING: openvino_genai.InpaintingPipeline,
                Task.IMAGE2IMAGE: openvino_genai.Image2ImagePipeline,
                Task.TEXT2IMAGE: openvino_genai.Text2ImagePipeline}

    def _load(self, task: Task) -> Any:
        pipe = self._classes()[task](str(self.settings.models_path))
        if self.settings.reshaped:
            res = self.settings.static_resolutions[0]
            images = self.settings.static_num_images_per_prompt or 1
            guidance = self.settings.static_guidance_scale
            if guidance is None:
                guidance = float(pipe.get_generation_config().guidance_scale)
            pipe.reshape(images, res.height, res.width, guidance)
        kwargs = {**self.properties, **self.extra_kwargs()}
        pipe.compile(*self.settings.devices, **kwargs)
        return pipe

    def build(self, index: int) -> PipelineSet:
        """One set. Inpainting from disk, image-to-image derived from it, text-to-image derived from
        that; each step falls back to loading from disk when derivation is refused (or, with
        ``derive`` off, always loads from disk). A task that cannot be built at all is left out
        (``refused`` says why)."""
        classes = self._classes()
        built = PipelineSet(index)
        source: Any = None
        limit = edit_limit(self.settings)
        for task in (Task.INPAINTING, Task.IMAGE2IMAGE, Task.TEXT2IMAGE):
            if limit is not None and task is not Task.TEXT2IMAGE:
                self.refused.setdefault(task, limit)
                continue
            pipe: Any = None
            if source is not None and self.derive:
                try:
                    pipe = classes[task](source)
                except Exception as exc:  # GenAI refuses some derivations; loading from disk may still work
                    log.info("set %d: %s cannot be derived (%s); loading it from disk", index, task.value,
                             genai_reason(exc))
            if pipe is None:
                try:
                    pipe = self._load(task)
                except Exception as exc:
                    self.refused.setdefault(task, f"{type(exc).__name__}: {genai_reason(exc)}")
                    log.info("set %d: %s is not available for this model: %s", index, task.value,
                             genai_reason(exc))
                    continue
            built.pipelines[task] = pipe
            source = pipe
        return built


class PipelinePool:
    """A fixed set of pipeline sets; each request borrows one. Not a global lock: N sets serve N
    requests at once. Thread-safe."""

    def __init__(self, sets: list[PipelineSet]) -> None:
        self._all = list(sets)
        self._free = list(sets)
        self._cond = threading.Condition()
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def available(self) -> int:
        """How many sets are free right now (for tests and metrics)."""
        with self._cond:
            return len(self._free)

    def acquire(self, cancelled: Callable[[], bool], poll: float = 0.05) -> PipelineSet:
        """A free set, waiting as long as needed. Raises RequestCancelled when ``cancelled()``
        turns true while waiting, ServiceUnavailable once the pool is closed."""
        with self._cond:
            while True:
                if self._closed:
                    raise ServiceUnavailable("the model is shutting down")
                if self._free:
                    return self._free.pop()
                if cancelled():
                    raise RequestCancelled("the client went away while waiting for a free pipeline")
                self._cond.wait(poll)

    def release(self, pipes: PipelineSet) -> None:
        """Give a set back (exactly once per acquire)."""
        with self._cond:
            if pipes not in self._free:
                self._free.append(pipes)
            self._cond.notify()

    def close(self) -> None:
        """Refuse new borrowers and drop the pipelines once every set is back (waits up to 60 s)."""
        with self._cond:
            self._closed = True
            deadline = time.monotonic() + 60.0
            while len(self._free) < len(self._all) and time.monotonic() < deadline:
                self._cond.wait(0.1)
            for pipes in self._all:
                pipes.pipelines.clear()
            self._free.clear()
            self._cond.notify_all()


@dataclass
class ImageGenResources:
    """The IMAGE_GEN_NODE_RESOURCES side packet: everything a request of this node needs.

    It is an :class:`ovms_graph.calculator.Resources`: ``concurrency`` (the number of pipeline sets)
    tells the runtime how many requests the node can run at once, ``memory_estimate`` what the sets
    hold, and ``close()`` releases the pipelines at shutdown.
    """

    node: str
    settings: NodeSettings
    info: ModelInfo
    defaults: ModelDefaults
    pool: PipelinePool
    lora: LoraPlan
    tasks: frozenset[Task]
    refused: Mapping[Task, str] = field(default_factory=dict)
    memory: MemoryEstimate | None = None

    @property
    def concurrency(self) -> int:
        return self.pool.size

    @property
    def memory_estimate(self) -> int | None:
        """Estimated resident bytes of every pipeline set (published as a metric by the runtime)."""
        return self.memory.total if self.memory is not None else None

    def close(self) -> None:
        self.pool.close()
        self.lora.close()


def model_defaults(pipes: PipelineSet) -> ModelDefaults:
    """Default size and guidance of the model, from the generation config of any built pipeline; the
    default strengths from each edit pipeline's own config (that is what its generate uses)."""
    built = [pipes.pipelines[t] for t in (Task.TEXT2IMAGE, Task.IMAGE2IMAGE, Task.INPAINTING) if t in pipes.pipelines]
    if not built:
        raise ValueError("no pipeline was built")
    config = built[0].get_generation_config()

    def strength(task: Task) -> float:
        pipe = pipes.pipelines.get(task)
        return float((pipe.get_generation_config() if pipe is not None else config).strength)

    return ModelDefaults(Resolution(int(config.width), int(config.height)), float(config.guidance_scale),
                         int(config.max_sequence_length), strength(Task.IMAGE2IMAGE), strength(Task.INPAINTING),
                         int(config.num_inference_steps))


def build_resources(node: str, settings: NodeSettings, info: ModelInfo, lora: LoraPlan, *,
                    cache_dir: Path | None = None) -> ImageGenResources:
    """Load, reshape and compile ``settings.num_streams`` pipeline sets, with compiled models cached in
    ``cache_dir`` unless plugin_config sets CACHE_DIR. Raises RuntimeError naming every task's
    failure when no pipeline at all can be built.

    Stages: memory check, pipeline sets, model defaults, warm-up, load log."""
    sets = settings.num_streams
    # FUSE adapters combined with switchable ones are merged into a copy of the model (see LoraPlan).
    settings = dataclasses.replace(settings, models_path=lora.model_dir(settings.models_path))
    properties = compile_properties(settings, sets, cache_dir=cache_dir)
    memory = _check_memory(node, settings, properties)
    builder = PipelineBuilder(settings, properties, lora.compile_kwargs, derive=info.family in DERIVABLE)
    started = time.monotonic()
    all_sets = _build_sets(builder, settings)
    first = all_sets[0]
    tasks = frozenset(first.pipelines)
    refused = {t: r for t, r in builder.refused.items() if t not in tasks}
    defaults = model_defaults(first)
    warm_up(node, all_sets, settings, info, lora)
    settings = _with_model_default_steps(settings, info, defaults)
    _log_loaded(node, settings, info, tasks, refused, properties.get("CACHE_DIR"), started)
    return ImageGenResources(node=node, settings=settings, info=info, defaults=defaults,
                             pool=PipelinePool(all_sets), lora=lora, tasks=tasks, refused=refused,
                             memory=memory)


def _check_memory(node: str, settings: NodeSettings, properties: Mapping[str, Any]) -> MemoryEstimate:
    """What the node's pipeline sets will hold, logged; InsufficientMemory when it does not fit."""
    memory = MemoryEstimate.for_model(settings.num_streams, settings.models_path, properties)
    available = available_bytes()
    log.info('node "%s": memory: %s = about %.2f GiB; %s available', node, memory.describe(), memory.total / 2**30,
             f"{available / 2**30:.2f} GiB" if available is not None else "unknown")
    refusal = memory.refusal(available)
    if refusal is not None:
        raise InsufficientMemory(refusal)
    return memory


def _build_sets(builder: PipelineBuilder, settings: NodeSettings) -> list[PipelineSet]:
    """``settings.num_streams`` sets, each with the tasks of the first; RuntimeError when the first has
    none or a later one differs."""
    first = builder.build(0)
    if not first.pipelines:
        reasons = "; ".join(f"{t.value}: {r}" for t, r in builder.refused.items())
        raise RuntimeError(f"no pipeline could be built from {settings.models_path} ({reasons})")
    all_sets = [first]
    tasks = frozenset(first.pipelines)
    for index in range(1, settings.num_streams):
        more = builder.build(index)
        if frozenset(more.pipelines) != tasks:
            raise RuntimeError(f"pipeline set {index} could not build the same tasks as set 0 "
                               f"({sorted(t.value for t in more.pipelines)} vs {sorted(t.value for t in tasks)})")
        all_sets.append(more)
    return all_sets


def _with_model_default_steps(settings: NodeSettings, info: ModelInfo, defaults: ModelDefaults) -> NodeSettings:
    """Families whose step count is the model's own (see MODEL_DEFAULT_STEPS) default to it, within the
    node's maximum, unless the node sets default_num_inference_steps."""
    if info.family in MODEL_DEFAULT_STEPS and not settings.default_steps_given:
        steps = min(defaults.num_inference_steps, settings.max_num_inference_steps)
        return dataclasses.replace(settings, default_num_inference_steps=steps)
    return settings


def _log_loaded(node: str, settings: NodeSettings, info: ModelInfo, tasks: frozenset[Task],
                refused: Mapping[Task, str], cache: Any, started: float) -> None:
    """One INFO line: what was loaded, where, with which tasks, and how long it took since ``started``."""
    shapes = (f"static {settings.static_resolutions[0]}" if settings.reshaped else "dynamic shapes")
    log.info('node "%s": %s pipeline from %s; %d pipeline set(s) on %s, %s; tasks: %s%s; %s; loaded in %.1f s',
             node, info.label, settings.models_path, settings.num_streams, " ".join(settings.devices), shapes,
             ", ".join(t.value for t in Task if t in tasks),
             "".join(f"; {t.value} unavailable ({r})" for t, r in refused.items()),
             f"compiled models cached in {cache}" if cache else "no model cache", time.monotonic() - started)
