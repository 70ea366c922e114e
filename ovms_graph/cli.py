"""The ``ovms-graph`` command: ``serve``, ``pull`` and ``validate``.

Flag names and meanings follow OVMS, so an OVMS command line works after replacing ``ovms`` by
``ovms-graph serve``. Usage errors exit 2 naming the flag; ``validate`` exits 2 when it finds any
problem; download or conversion failures exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ovms_graph.config import GraphEntry, load_config
from ovms_graph.errors import ConfigError, Problem
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_entries

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")
DEVICES = ("CPU", "GPU", "NPU")


@dataclass(frozen=True)
class ServerOptions:
    """Front-end settings common to every way of serving."""

    rest_port: int = 8000
    rest_bind_address: str = "127.0.0.1"
    log_level: str = "INFO"
    api_key_file: Path | None = None
    metrics_enable: bool = False
    max_queued_requests: int = 32
    max_request_size: int = 64 * 1024 * 1024
    shutdown_timeout: float = 30.0
    drain_delay: float = 5.0
    #: Where compiled models are cached between starts (``--cache_dir``); None: no cache unless a
    #: graph's plugin_config sets CACHE_DIR.
    cache_dir: Path | None = None


@dataclass(frozen=True)
class PullOptions:
    """What ``pull`` (and ``serve --source_model``) downloads and writes into graph.pbtxt."""

    source_model: str
    model_repository_path: Path
    task: str | None = None
    model_name: str | None = None
    target_device: str | None = None
    source_loras: str | None = None
    resolution: str | None = None
    max_resolution: str | None = None
    default_resolution: str | None = None
    max_num_images_per_prompt: int | None = None
    default_num_inference_steps: int | None = None
    max_num_inference_steps: int | None = None
    num_images_per_prompt: int | None = None
    guidance_scale: float | None = None
    num_streams: int | None = None
    weight_format: str = "int8"
    overwrite_models: bool = False
    config_path: Path | None = None


def _positive_int(flag: str):  # type: ignore[no-untyped-def]
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {value!r}")
        return number
    return parse


def _non_negative_int(flag: str):  # type: ignore[no-untyped-def]
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative integer, got {value!r}") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative integer, got {value!r}")
        return number
    return parse


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rest_port expects a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"--rest_port expects 0..65535, got {value!r}")
    return number


def _float(flag: str):  # type: ignore[no-untyped-def]
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{flag} expects a finite number, got {value!r}")
        return number
    return parse


def _non_negative_float(flag: str):  # type: ignore[no-untyped-def]
    finite = _float(flag)

    def parse(value: str) -> float:
        number: float = finite(value)
        if number < 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative number, got {value!r}")
        return number
    return parse


def _device(value: str) -> str:
    parts = value.split()
    if len(parts) not in (1, 3) or any(p not in DEVICES for p in parts):
        raise argparse.ArgumentTypeError(
            f'--target_device expects CPU, GPU, NPU or three of them ("CPU GPU NPU"), got {value!r}')
    return " ".join(parts)


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--rest_port", type=_port, default=8000, help="HTTP port (default 8000)")
    g.add_argument("--rest_bind_address", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    g.add_argument("--api_key_file", type=Path, help="file holding the API key; /v3 and /v1 then need it")
    g.add_argument("--metrics_enable", action="store_true", help="serve Prometheus metrics on /metrics")
    g.add_argument("--max_queued_requests", type=_non_negative_int("--max_queued_requests"), default=32,
                   help="requests that may wait per graph before 503 (default 32)")
    g.add_argument("--max_request_size", type=_positive_int("--max_request_size"), default=67108864,
                   help="largest accepted request body in bytes (default 67108864)")
    g.add_argument("--shutdown_timeout", type=_float("--shutdown_timeout"), default=30.0,
                   help="seconds in-flight requests may take after SIGTERM (default 30)")
    g.add_argument("--drain_delay", type=_non_negative_float("--drain_delay"), default=5.0,
                   help="seconds after SIGTERM that new requests are still served while readiness is "
                        "already false, so load balancers stop routing first (default 5; SIGINT skips it)")
    g.add_argument("--cache_dir", type=Path,
                   help="folder for compiled-model blobs, so later starts load faster (a graph's "
                        "plugin_config CACHE_DIR wins)")


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log_level", choices=LOG_LEVELS, default="INFO", help="log verbosity (default INFO)")


def _add_pull_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("pull")
    g.add_argument("--source_model", required=required,
                   help="Hugging Face model id, e.g. OpenVINO/stable-diffusion-v1-5-int8-ov")
    g.add_argument("--model_repository_path", type=Path, required=required, help="folder models are pulled into")
    g.add_argument("--task", choices=("image_generation",), help="task; inferred from model_index.json when omitted")
    g.add_argument("--model_name", help="served name (default: the source model id)")
    g.add_argument("--target_device", type=_device, help='CPU, GPU, NPU, or "TEXT DENOISE VAE" devices')
    g.add_argument("--source_loras", help="alias=source[:alpha],...; composites alias=@a:0.7+@b:0.5")
    g.add_argument("--resolution", help="static resolution(s) WxH, space separated")
    g.add_argument("--max_resolution", help="largest WxH a request may ask for")
    g.add_argument("--default_resolution", help="WxH used when a request gives none")
    g.add_argument("--max_num_images_per_prompt", type=_positive_int("--max_num_images_per_prompt"))
    g.add_argument("--default_num_inference_steps", type=_positive_int("--default_num_inference_steps"))
    g.add_argument("--max_num_inference_steps", type=_positive_int("--max_num_inference_steps"))
    g.add_argument("--num_images_per_prompt", type=_positive_int("--num_images_per_prompt"))
    g.add_argument("--guidance_scale", type=_float("--guidance_scale"))
    g.add_argument("--num_streams", type=_positive_int("--num_streams"), help="pipeline sets per node")
    g.add_argument("--weight-format", "--weight_format", dest="weight_format",
                   choices=("int8", "int4", "fp16", "fp32"), default="int8",
                   help="weight format when converting a non-OpenVINO model (default int8)")
    g.add_argument("--overwrite_models", action="store_true", help="download again even when present")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovms-graph", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,pull,validate}")

    serve = sub.add_parser("serve", help="serve graphs from a config.json or a pulled model")
    serve.add_argument("--config_path", type=Path, help="OVMS config.json listing the graphs")
    _add_server_flags(serve)
    _add_pull_flags(serve, required=False)
    _add_common_flags(serve)

    pull = sub.add_parser("pull", help="download a model and write its graph.pbtxt, then exit")
    _add_pull_flags(pull, required=True)
    pull.add_argument("--config_path", type=Path, help="config.json to create or update with the model")
    _add_common_flags(pull)

    validate = sub.add_parser("validate", help="check graphs and print every problem (exit 2 if any)")
    validate.add_argument("path", nargs="?", type=Path, help="a graph.pbtxt or a config.json")
    validate.add_argument("--config_path", type=Path, help="config.json (same as the positional path)")
    _add_common_flags(validate)
    return parser


def server_options(ns: argparse.Namespace) -> ServerOptions:
    return ServerOptions(rest_port=ns.rest_port, rest_bind_address=ns.rest_bind_address, log_level=ns.log_level,
                         api_key_file=ns.api_key_file, metrics_enable=ns.metrics_enable,
                         max_queued_requests=ns.max_queued_requests, max_request_size=ns.max_request_size,
                         shutdown_timeout=ns.shutdown_timeout, drain_delay=ns.drain_delay,
                         cache_dir=ns.cache_dir.resolve() if ns.cache_dir is not None else None)


def pull_options(ns: argparse.Namespace) -> PullOptions:
    return PullOptions(
        source_model=ns.source_model, model_repository_path=ns.model_repository_path, task=ns.task,
        model_name=ns.model_name, target_device=ns.target_device, source_loras=ns.source_loras,
        resolution=ns.resolution, max_resolution=ns.max_resolution, default_resolution=ns.default_resolution,
        max_num_images_per_prompt=ns.max_num_images_per_prompt,
        default_num_inference_steps=ns.default_num_inference_steps,
        max_num_inference_steps=ns.max_num_inference_steps, num_images_per_prompt=ns.num_images_per_prompt,
        guidance_scale=ns.guidance_scale, num_streams=ns.num_streams, weight_format=ns.weight_format,
        overwrite_models=ns.overwrite_models, config_path=getattr(ns, "config_path", None))


def graph_entries(path: Path) -> list[GraphEntry]:
    """The graphs behind ``path``: a config.json's entries, or one graph.pbtxt named after its folder."""
    if path.suffix == ".json":
        return load_config(path)
    if not path.is_file():
        raise ConfigError(Problem("no such file", file=str(path)))
    return [GraphEntry(path.resolve().parent.name, path, str(path))]


def validate(path: Path, registry: Registry, out: object = sys.stdout) -> int:
    """Print every problem of every graph behind ``path``; 2 if any, else 0 with one line per graph."""
    try:
        entries = graph_entries(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 2
    check = validate_entries(entries, registry)
    problems = check.all_problems
    for p in problems:
        print(p, file=sys.stderr)
    failed = bool(problems)
    named = {p.file for p in problems}
    for entry, spec in check.valid:
        if str(entry.graph_path) not in named:
            calcs = ", ".join(sorted({n.calculator for n in spec.nodes}))
            print(f"{entry.graph_path}: graph \"{entry.name}\" is valid: {len(spec.nodes)} node(s) ({calcs})",
                  file=out)  # type: ignore[call-overload]
    if failed:
        print("validation failed", file=sys.stderr)
    return 2 if failed else 0


def configure_logging(level: str) -> None:
    logging.basicConfig(level=logging.DEBUG if level == "TRACE" else getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    if ns.command == "validate":
        target = ns.path or ns.config_path
        if target is None:
            parser.error("validate needs a graph.pbtxt or config.json path (or --config_path)")
        return validate(target, Registry.from_entry_points())
    if ns.command == "pull":
        from ovms_graph.pull import run_pull
        return run_pull(pull_options(ns))
    if ns.config_path is None and ns.source_model is None:
        parser.error("serve needs --config_path or --source_model")
    if ns.config_path is not None and ns.source_model is not None:
        parser.error("--config_path and --source_model cannot be used together")
    if ns.source_model is not None and ns.model_repository_path is None:
        parser.error("--source_model needs --model_repository_path")
    from ovms_graph.server import run_serve
    return run_serve(ns.config_path, pull_options(ns) if ns.source_model else None, server_options(ns))


if __name__ == "__main__":
    sys.exit(main())
