"""The ``ovms-graph`` command: ``serve`` and ``validate``, plus the subcommands installed packages add.

Flag names and meanings follow OVMS, so an OVMS command line works after replacing ``ovms`` by
``ovms-graph serve``. Usage errors exit 2 naming the flag; ``validate`` exits 2 when it finds any
problem. Installed calculator packages add subcommands and ``serve`` flags through the
``ovms_graph.cli_commands`` entry point group (:mod:`ovms_graph.commands`); image generation adds
``pull`` and ``serve --source_model`` that way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ovms_graph.commands import (
    CliExtension,
    GraphSource,
    finite_float,
    load_extensions,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from ovms_graph.config import GraphEntry, load_config
from ovms_graph.errors import ConfigError, Problem
from ovms_graph.registry import Registry
from ovms_graph.settings import LOG_LEVELS, ServerOptions, configure_logging
from ovms_graph.validation import validate_entries

__all__ = ["ServerOptions", "build_parser", "configure_logging", "main", "server_options", "validate"]


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rest_port expects a port number, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"--rest_port expects 0..65535, got {value!r}")
    return number


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--rest_port", type=_port, default=8000, help="HTTP port (default 8000)")
    g.add_argument("--rest_bind_address", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    g.add_argument("--api_key_file", type=Path, help="file holding the API key; /v3 and /v1 then need it")
    g.add_argument("--metrics_enable", action="store_true", help="serve Prometheus metrics on /metrics")
    g.add_argument("--max_queued_requests", type=non_negative_int("--max_queued_requests"), default=32,
                   help="requests that may wait per graph before 503 (default 32)")
    g.add_argument("--max_request_size", type=positive_int("--max_request_size"), default=67108864,
                   help="largest accepted request body in bytes (default 67108864)")
    g.add_argument("--shutdown_timeout", type=finite_float("--shutdown_timeout"), default=30.0,
                   help="seconds in-flight requests may take after SIGTERM (default 30)")
    g.add_argument("--drain_delay", type=non_negative_float("--drain_delay"), default=5.0,
                   help="seconds after SIGTERM that new requests are still served while readiness is "
                        "already false, so load balancers stop routing first (default 5; SIGINT skips it)")
    g.add_argument("--cache_dir", type=Path,
                   help="folder for compiled-model blobs, so later starts load faster (a graph's "
                        "plugin_config CACHE_DIR wins)")


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log_level", choices=LOG_LEVELS, default="INFO", help="log verbosity (default INFO)")


def build_parser(extensions: list[CliExtension] | None = None) -> argparse.ArgumentParser:
    """The ``ovms-graph`` parser with the subcommands and serve flags of ``extensions`` (default: the
    installed ones); every subcommand takes ``--log_level``."""
    if extensions is None:
        extensions = load_extensions()
    parser = argparse.ArgumentParser(prog="ovms-graph", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve graphs from a config.json or a pulled model")
    serve.add_argument("--config_path", type=Path, help="OVMS config.json listing the graphs")
    _add_server_flags(serve)
    for extension in extensions:
        extension.add_serve_flags(serve)

    for extension in extensions:
        extension.add_commands(sub)

    validate = sub.add_parser("validate", help="check graphs and print every problem (exit 2 if any)")
    validate.add_argument("path", nargs="?", type=Path, help="a graph.pbtxt or a config.json")
    validate.add_argument("--config_path", type=Path, help="config.json (same as the positional path)")
    for command in sub.choices.values():
        _add_common_flags(command)
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return parser


def server_options(ns: argparse.Namespace) -> ServerOptions:
    return ServerOptions(rest_port=ns.rest_port, rest_bind_address=ns.rest_bind_address, log_level=ns.log_level,
                         api_key_file=ns.api_key_file, metrics_enable=ns.metrics_enable,
                         max_queued_requests=ns.max_queued_requests, max_request_size=ns.max_request_size,
                         shutdown_timeout=ns.shutdown_timeout, drain_delay=ns.drain_delay,
                         cache_dir=ns.cache_dir.resolve() if ns.cache_dir is not None else None)


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


def main(argv: Sequence[str] | None = None) -> int:
    extensions = load_extensions()
    parser = build_parser(extensions)
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    if ns.command == "validate":
        target = ns.path or ns.config_path
        if target is None:
            parser.error("validate needs a graph.pbtxt or config.json path (or --config_path)")
        return validate(target, Registry.from_entry_points())
    if ns.command != "serve":
        run: int = ns.run(ns)
        return run
    from ovms_graph.serve import run_serve
    return run_serve(ns.config_path, server_options(ns), _serve_source(ns, parser, extensions))


def _serve_source(ns: argparse.Namespace, parser: argparse.ArgumentParser,
                  extensions: list[CliExtension]) -> GraphSource | None:
    """The extension graph source ``serve`` was given, None for ``--config_path``; usage errors exit 2."""
    given = [e for e in extensions if e.source_given(ns)]
    problem = _source_usage_problem(ns.config_path is not None, given, extensions)
    if problem is not None:
        parser.error(problem)
    return given[0].serve_source(ns, parser) if given else None


def _source_usage_problem(config_given: bool, given: list[CliExtension],
                          extensions: list[CliExtension]) -> str | None:
    """Why ``serve``'s graph source flags cannot be used, None when exactly one source was given."""
    named = (["--config_path"] if config_given else []) + [str(e.source_flag) for e in given]
    if not named:
        flags = [e.source_flag for e in extensions if e.source_flag is not None]
        return "serve needs " + " or ".join(["--config_path", *flags])
    if len(named) > 1:
        return f"{named[0]} and {named[1]} cannot be used together"
    return None


if __name__ == "__main__":
    sys.exit(main())
