"""ImageGenCalculator: text-to-image, image-to-image and inpainting on OpenVINO GenAI pipelines.

Takes one ``HttpPayload`` per request on ``HTTP_REQUEST_PAYLOAD``: ``images/generations`` (JSON)
is text-to-image; ``images/edits`` (multipart) is image-to-image, or inpainting when a ``mask`` is
uploaded. Answers with one ``HttpResponse`` (``{"created", "data": [{"b64_json"}, ...], "rng_seed",
"size", "quality", "output_format", "background"}``) on
``HTTP_RESPONSE_PAYLOAD``, or with ``stream: true`` a sequence of ``ServerSentEvent`` packets in
OpenAI's image streaming shape (partial images, then one ``...completed`` event).

Load time builds the node's pipelines once (``IMAGE_GEN_NODE_RESOURCES:pipes``, exactly as OVMS
requires): a pool of pipeline sets sized by ``plugin_config`` ``NUM_STREAMS`` (default 1), CPU
threads split between sets. Each request validates every field (``calculators.image_gen.request``)
before it borrows a set, runs ``generate`` with a step callback that stops at the next step once
the client is gone, and gives the set back. LoRA adapters are handled by
``calculators.image_gen.lora``.

Options (``mediapipe.ImageGenCalculatorOptions``, field numbers as in OVMS): models_path (required,
relative to the graph's folder), device (1 name, or 3: text encoder, denoiser, VAE), plugin_config
(JSON object; NUM_STREAMS sets the pool size), max_resolution, default_resolution,
max_num_images_per_prompt, default_num_inference_steps, max_num_inference_steps, resolution
(static shapes), num_images_per_prompt and guidance_scale (with one static resolution),
lora_adapters, composite_lora_adapters.

Example config:

    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"

    node: {
      name: "ImageGenExecutor"
      calculator: "ImageGenCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:input"
      input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
      output_stream: "HTTP_RESPONSE_PAYLOAD:output"
      node_options: {
        [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
          models_path: "./"
          device: "CPU"
          plugin_config: '{"NUM_STREAMS": 2}'
          max_resolution: "1024x1024"
          default_num_inference_steps: 20
        }
      }
    }
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from google.protobuf.message import Message

from calculators.image_gen.images import encode_b64
from calculators.image_gen.lora import LoraPlan, read_lora_file
from calculators.image_gen.memory import InsufficientMemory
from calculators.image_gen.options import NodeSettings, parse_options
from calculators.image_gen.pipelines import (
    UNET_FAMILIES,
    Family,
    ImageGenResources,
    ModelInfo,
    PipelineSet,
    Task,
    build_resources,
    read_model_info,
)
from calculators.image_gen.request import EDITS, ImageRequest, RequestRules, parse_request
from calculators.image_gen.sizes import nearest_sizes
from calculators.image_gen.streaming import StepCallback, StreamShape
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.calculator import Calculator, CalculatorContext, LoadContext, NodeIssue, Port
from ovms_graph.errors import ConfigError, GenerationError, Problem, RequestCancelled, RequestError
from ovms_graph.graph_config import NodeSpec
from ovms_graph.packets import HttpPayload, HttpResponse, ServerSentEvent

log = logging.getLogger("calculators.image_gen")

INPUT = "HTTP_REQUEST_PAYLOAD"
OUTPUT = "HTTP_RESPONSE_PAYLOAD"
RESOURCES = "IMAGE_GEN_NODE_RESOURCES"
RESOURCES_NAME = "pipes"


def _size_issues(settings: NodeSettings, info: ModelInfo) -> list[NodeIssue]:
    """Configured sizes the model cannot generate (each side a multiple of the model's own step)."""
    issues = []
    multiple = info.size_multiple
    named = [("default_resolution", settings.default_resolution)]
    named += [("resolution", r) for r in settings.static_resolutions]
    for name, res in named:
        if res is not None and (res.width % multiple or res.height % multiple):
            near = ", ".join(str(r) for r in nearest_sizes(res, multiple, settings.max_resolution))
            issues.append(NodeIssue(f"{res}: width and height must be divisible by {multiple} for this "
                                    f"{info.family.value} model; nearest sizes that work: {near}",
                                    field=f"node_options.{name}"))
        elif res is not None and info.max_side is not None and max(res.width, res.height) > info.max_side:
            issues.append(NodeIssue(f"{res}: this {info.family.value} model generates at most {info.max_side} "
                                    "pixels per side (its transformer's pos_embed_max_size)",
                                    field=f"node_options.{name}"))
    return issues


#: Key prefixes of kohya adapters for UNet models (UNet, CLIP text encoders).
_UNET_LORA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")


def _lora_family_issues(options: ImageGenCalculatorOptions, ctx: LoadContext, info: ModelInfo) -> list[NodeIssue]:
    """Adapters the model's family cannot use: an adapter made only of UNet-model layers (kohya
    ``lora_unet_...``/``lora_te_...``) on an SD3 or FLUX model, whose denoiser is a transformer;
    OpenVINO GenAI would silently leave it unused. (UNet families check each layer in LoraPlan.)"""
    if info.family in UNET_FAMILIES or info.family is Family.UNKNOWN:
        return []
    issues = []
    for adapter in LoraPlan.from_options(options, ctx).adapters:
        problem, keys = read_lora_file(adapter.path)
        if problem is None and keys and all(k.startswith(_UNET_LORA_PREFIXES) for k in keys):
            issues.append(NodeIssue(
                f'LoRA adapter "{adapter.alias}": {adapter.path} is for UNet models (kohya lora_unet_/lora_te_ '
                f"layers); {info.family.value} models have a transformer denoiser, so none of its layers can apply",
                field=f"{adapter.field}.path"))
    return issues


def _device_issues(settings: NodeSettings) -> list[NodeIssue]:
    """Devices OpenVINO does not have on this machine (virtual devices such as AUTO pass through)."""
    import openvino

    available = openvino.Core().available_devices
    families = {name.split(".")[0] for name in available}
    missing = [d for d in dict.fromkeys(settings.devices)
               if ":" not in d and d.split(".")[0] not in {"AUTO", "MULTI", "HETERO", "BATCH"}
               and d not in available and d not in families]
    return [NodeIssue(f'device "{d}" is not available on this machine (available: {", ".join(available)})',
                      field="node_options.device") for d in missing]


def _config_error(issues: list[NodeIssue]) -> ConfigError:
    return ConfigError([Problem(i.message, field=i.field) for i in issues])


def _loadable_model(options: ImageGenCalculatorOptions | None, ctx: LoadContext) -> tuple[NodeSettings, ModelInfo]:
    """The node's settings and model, on devices this machine has; ConfigError otherwise."""
    settings, issues = parse_options(options, ctx)
    if settings is None or options is None:
        raise _config_error(issues)
    try:
        info = read_model_info(settings.models_path)
    except ValueError as exc:
        raise ConfigError(Problem(str(exc), field="node_options.models_path")) from exc
    # Checked here rather than in check_options: `validate` may run on a machine without the
    # accelerator the graph is written for; loading may not.
    missing = _device_issues(settings)
    if missing:
        raise _config_error(missing)
    return settings, info


def _build_resources(node: str, settings: NodeSettings, info: ModelInfo, lora: LoraPlan, ctx: LoadContext
                     ) -> ImageGenResources:
    """build_resources, its failures as ConfigError naming the field to change."""
    try:
        return build_resources(node, settings, info, lora, cache_dir=ctx.cache_dir)
    except InsufficientMemory as exc:
        raise ConfigError(Problem(str(exc), field="node_options.plugin_config")) from exc
    except RuntimeError as exc:
        raise ConfigError(Problem(str(exc), field="node_options.models_path")) from exc


def _response_json(request: ImageRequest, encoded: list[bytes]) -> bytes:
    """The non-streamed answer as JSON: what a gpt-image response carries and this server knows, plus
    the seed that reproduces the images. The base64 images (ASCII that JSON never escapes) are spliced
    in as they are rather than scanned again by ``json.dumps``: they are most of the bytes."""
    fields: dict[str, Any] = {"rng_seed": request.rng_seed, "size": request.size, "quality": request.quality,
                              "output_format": request.output_format, "background": "opaque"}
    if request.end_user is not None:
        fields["safety_identifier"] = request.end_user
    rest = json.dumps(fields, separators=(",", ":")).encode()
    images = b'"},{"b64_json":"'.join(encoded)  # the one copy of the image bytes besides the final one
    return b"".join((b'{"created":%d,"data":[{"b64_json":"' % int(time.time()), images, b'"}],', rest[1:]))


class ImageGenCalculator(Calculator):
    """OpenAI images API (generations, edits) on OpenVINO GenAI image generation pipelines."""

    inputs = (Port(INPUT, HttpPayload, "an images/generations (JSON) or images/edits (multipart) request"),)
    outputs = (Port(OUTPUT, (HttpResponse, ServerSentEvent),
                    "the JSON response, or Server-Sent Events when the request streams"),)
    input_side_packets = (Port(RESOURCES, ImageGenResources,
                               "the node's pipelines, built once at load and shared by its requests",
                               exact_name=RESOURCES_NAME),)
    resources_port = RESOURCES
    requires_name = True
    options_types = (ImageGenCalculatorOptions,)

    # ----- load time -----
    @classmethod
    def contract(cls, node: NodeSpec) -> Iterable[NodeIssue]:
        """The side packet must be ``IMAGE_GEN_NODE_RESOURCES:pipes`` exactly (OVMS's rule); the port
        checks catch a wrong tag or name, this catches the ``TAG:index:name`` spelling."""
        for ref in node.input_side_packets:
            if ref.tag == RESOURCES and ref.name == RESOURCES_NAME and ref.raw != f"{RESOURCES}:{RESOURCES_NAME}":
                yield NodeIssue(
                    f'every ImageGenCalculator node MUST have exactly input_side_packet: '
                    f'"{RESOURCES}:{RESOURCES_NAME}"; got "{ref.raw}"', field="input_side_packet")

    @classmethod
    def check_options(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Iterable[NodeIssue]:
        """Every option rule (SPEC §4, §9) and every LoRA rule; reads files, loads no model."""
        typed = options if isinstance(options, ImageGenCalculatorOptions) else None
        settings, issues = parse_options(typed, ctx)
        info: ModelInfo | None = None
        if settings is not None:
            try:
                info = read_model_info(settings.models_path)
            except ValueError as exc:
                issues.append(NodeIssue(str(exc), field="node_options.models_path"))
            else:
                issues.extend(_size_issues(settings, info))
        if typed is not None:
            issues.extend(LoraPlan.check(typed, ctx))
            if settings is not None and info is not None:
                issues.extend(_lora_family_issues(typed, ctx, info))
        return issues

    @classmethod
    def declared_aliases(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Iterable[str]:
        """Every LoRA adapter and composite alias, FUSE and STATIC ones included (all count toward
        uniqueness across graphs)."""
        typed = options if isinstance(options, ImageGenCalculatorOptions) else None
        plan = LoraPlan.from_options(typed, ctx)
        return [a.alias for a in plan.adapters] + [c.alias for c in plan.composites]

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> ImageGenResources:
        """Read the model type, build the pool of pipeline sets, register LoRA aliases."""
        typed = options if isinstance(options, ImageGenCalculatorOptions) else None
        settings, info = _loadable_model(typed, ctx)
        lora = LoraPlan.from_options(typed, ctx)
        resources = _build_resources(node.name or node.label, settings, info, lora, ctx)
        lora.register_routes(ctx)
        return resources

    # ----- request time -----
    def __init__(self, node: NodeSpec, side_packets: Mapping[str, Any]) -> None:
        super().__init__(node, side_packets)
        self._resources: ImageGenResources = side_packets[RESOURCES]
        self._pipes: PipelineSet | None = None

    def process(self, cc: CalculatorContext) -> None:
        payload: HttpPayload = cc.inputs[INPUT]
        res = self._resources
        started = time.monotonic()
        request = parse_request(payload, RequestRules(res.settings, res.info, res.defaults, res.tasks, res.refused))
        cc.request.end_user = request.end_user
        lora_kwargs = res.lora.generate_kwargs(payload.model, request.lora_alphas)

        def cancelled() -> bool:
            return cc.request.cancelled

        self._pipes = res.pool.acquire(cancelled)
        pipe = self._pipes.get(request.task)
        shape = None
        if request.stream:
            prefix = "image_edit" if request.route == EDITS else "image_generation"
            shape = StreamShape(prefix, request.size, request.output_format, request.output_compression,
                                quality=request.quality, rng_seed=request.rng_seed,
                                safety_identifier=request.end_user)

        def decode(latent: Any) -> np.ndarray:
            return np.array(pipe.decode(latent).data, copy=True)

        callback = StepCallback(cancelled, partial_images=request.partial_images, decode=decode,
                                emit=lambda event: cc.emit(OUTPUT, event), shape=shape)
        images = self._generate(pipe, request, {**request.generate_kwargs(), **lora_kwargs, "callback": callback},
                                cc)
        if callback.stopped or cc.request.cancelled:
            self._release()
            log.info("request %s: the client went away; generation stopped after step %d of %d",
                     cc.request.request_id, callback.steps, request.num_inference_steps)
            raise RequestCancelled("the client went away; generation stopped")
        self._release()  # the pixels are copied: the set can serve the next request while we encode

        encoded = [encode_b64(pixels, request.output_format, request.output_compression) for pixels in images]
        log.debug("request %s: %s %s x%d, %d steps, %.2f s", cc.request.request_id, request.task.value,
                  request.size, request.num_images, request.num_inference_steps, time.monotonic() - started)
        if shape is not None:
            final = encoded[0].decode("ascii")
            if request.partial_images and callback.sent == 0:  # too few steps, or the worker dropped them
                cc.emit(OUTPUT, shape.partial(final, 0))
            cc.emit(OUTPUT, shape.completed(final))
        else:
            cc.emit(OUTPUT, HttpResponse(_response_json(request, encoded)))

    def _generate(self, pipe: Any, request: ImageRequest, kwargs: dict[str, Any], cc: CalculatorContext
                  ) -> np.ndarray:
        """Run the pipeline; returns a private copy of the [n, H, W, 3] uint8 result (the tensor's
        memory is reused by the pipeline's next generate)."""
        import openvino as ov  # type: ignore[import-untyped]

        try:
            if request.task is Task.TEXT2IMAGE:
                result = pipe.generate(request.prompt, **kwargs)
            elif request.task is Task.IMAGE2IMAGE:
                result = pipe.generate(request.prompt, ov.Tensor(request.image), **kwargs)
            else:
                result = pipe.generate(request.prompt, ov.Tensor(request.image), ov.Tensor(request.mask), **kwargs)
            return np.array(result.data, copy=True)
        except RequestError:
            raise
        except Exception as exc:
            log.exception("request %s: %s generation failed in node %s", cc.request.request_id,
                          request.task.value, self.node.label)
            raise GenerationError(f"image generation failed (request {cc.request.request_id}); see the server "
                                  "log") from exc

    def _release(self) -> None:
        if self._pipes is not None:
            self._resources.pool.release(self._pipes)
            self._pipes = None

    def close(self, cc: CalculatorContext) -> None:
        self._release()
