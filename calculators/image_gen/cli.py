"""``ovms-graph pull`` and ``serve --source_model``: image generation's part of the command line.

Reaches the runtime's CLI through the ``ovms_graph.cli_commands`` entry point ``image_gen``
(:class:`ImageGenCommands`). ``pull`` exits 0 when the model is ready to serve, 1 when a download or
conversion failed and 2 for flags that cannot be used; ``serve --source_model`` pulls first and serves
the graph the pull wrote.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calculators.image_gen import pull
from calculators.image_gen.option_table import DIRECT_FLAG_ROWS, OptionRow, finite, positive
from calculators.image_gen.pull import PullOptions
from ovms_graph.commands import CliExtension, GraphSource, Subparsers, finite_float, positive_int
from ovms_graph.config import GraphEntry

DEVICES = ("CPU", "GPU", "NPU")


def _device(value: str) -> str:
    parts = value.split()
    if len(parts) not in (1, 3) or any(p not in DEVICES for p in parts):
        raise argparse.ArgumentTypeError(
            f'--target_device expects CPU, GPU, NPU or three of them ("CPU GPU NPU"), got {value!r}')
    return " ".join(parts)


def _flag_type(row: OptionRow) -> Callable[[str], Any]:
    """How a table row's flag parses: counts (range ``positive``) as positive integers, scales (``finite``)
    as finite numbers, other numbers as the proto field's type, anything else as text (the graph checks
    and the calculator check it further)."""
    if row.range is positive:
        return positive_int(f"--{row.field}")
    if row.range is finite:
        return finite_float(f"--{row.field}")
    return row.python_type if row.python_type in (int, float) else str


def add_pull_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    """The ``pull`` flag group (also on ``serve``, where none is required)."""
    g = p.add_argument_group("pull")
    g.add_argument("--source_model", required=required,
                   help="Hugging Face model id, e.g. OpenVINO/stable-diffusion-v1-5-int8-ov")
    g.add_argument("--model_repository_path", type=Path, required=required, help="folder models are pulled into")
    g.add_argument("--task", choices=("image_generation",), help="task; inferred from model_index.json when omitted")
    g.add_argument("--model_name", help="served name (default: the source model id)")
    g.add_argument("--target_device", type=_device, help='CPU, GPU, NPU, or "TEXT DENOISE VAE" devices')
    g.add_argument("--source_loras", help="alias=source[:alpha],...; composites alias=@a:0.7+@b:0.5")
    for row in DIRECT_FLAG_ROWS:
        g.add_argument(f"--{row.field}", type=_flag_type(row), help=row.help)
    g.add_argument("--num_streams", type=positive_int("--num_streams"), help="pipeline sets per node")
    g.add_argument("--weight-format", "--weight_format", dest="weight_format",
                   choices=("int8", "int4", "fp16", "fp32"), default="int8",
                   help="weight format when converting a non-OpenVINO model (default int8)")
    g.add_argument("--overwrite_models", action="store_true", help="download again even when present")


def pull_options(ns: argparse.Namespace) -> PullOptions:
    """The parsed ``pull`` (or ``serve --source_model``) flags."""
    direct = {row.field: getattr(ns, row.field) for row in DIRECT_FLAG_ROWS}
    return PullOptions(
        source_model=ns.source_model, model_repository_path=ns.model_repository_path, task=ns.task,
        model_name=ns.model_name, target_device=ns.target_device, source_loras=ns.source_loras,
        num_streams=ns.num_streams, weight_format=ns.weight_format, overwrite_models=ns.overwrite_models,
        config_path=getattr(ns, "config_path", None), **direct)


def pulled_graphs(options: PullOptions) -> GraphSource:
    """What ``serve --source_model`` serves: the graph ``pull_model(options)`` writes (PullError otherwise)."""
    def source() -> list[GraphEntry]:
        return [pull.pull_model(options)]  # looked up per call, so tests can stand in for pull_model
    return source


def _run_pull(ns: argparse.Namespace) -> int:
    return pull.run_pull(pull_options(ns))


class ImageGenCommands(CliExtension):
    """Adds ``pull`` and the ``serve --source_model`` graph source."""

    source_flag = "--source_model"

    def add_commands(self, subparsers: Subparsers) -> None:
        pull = subparsers.add_parser("pull", help="download a model and write its graph.pbtxt, then exit")
        add_pull_flags(pull, required=True)
        pull.add_argument("--config_path", type=Path, help="config.json to create or update with the model")
        pull.set_defaults(run=_run_pull)

    def add_serve_flags(self, serve: argparse.ArgumentParser) -> None:
        add_pull_flags(serve, required=False)

    def serve_source(self, ns: argparse.Namespace, parser: argparse.ArgumentParser) -> GraphSource:
        if ns.model_repository_path is None:
            parser.error("--source_model needs --model_repository_path")
        return pulled_graphs(pull_options(ns))
