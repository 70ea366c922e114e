"""How a calculator package adds to the ``ovms-graph`` command line.

The runtime's CLI owns ``serve`` and ``validate``. Everything else reaches it through the entry point
group ``ovms_graph.cli_commands``: each entry names a :class:`CliExtension` subclass, which the CLI
instantiates (without arguments) and asks, in entry-point-name order, to

* :meth:`CliExtension.add_commands`: add its own subcommands (each parser sets a ``run`` default, a
  callable taking the parsed namespace and returning the exit status; ``--log_level`` is added to every
  subcommand by the CLI);
* :meth:`CliExtension.add_serve_flags`: add flags to ``serve``;
* :meth:`CliExtension.serve_source`: when its ``source_flag`` was given to ``serve``, return a
  :data:`GraphSource` that ``serve`` calls instead of reading ``--config_path``.

Guarantees: an extension that cannot be imported is reported on standard error and left out, so the
runtime's own subcommands keep working. A :class:`~ovms_graph.errors.CommandError` raised by a graph
source is printed as ``ovms-graph serve: error: <message>`` and ``serve`` exits with its ``exit_code``.
The argparse types below word their errors as ``<flag> expects ...``, like the runtime's own flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from ovms_graph.config import GraphEntry

ENTRY_POINT_GROUP = "ovms_graph.cli_commands"

#: What ``serve`` calls for its graphs when an extension's source flag was given; raises CommandError.
GraphSource = Callable[[], list[GraphEntry]]
#: A subcommand's body: the parsed namespace in, the exit status out.
CommandRun = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser] (private type)


class CliExtension:
    """Base of what an ``ovms_graph.cli_commands`` entry point names; every hook is optional."""

    #: The ``serve`` flag that makes ``serve`` take its graphs from this extension instead of
    #: ``--config_path`` (e.g. ``--source_model``); None: the extension adds no graph source.
    source_flag: str | None = None

    def add_commands(self, subparsers: Subparsers) -> None:
        """Add subcommands with ``subparsers.add_parser(...)``; each sets ``run`` via ``set_defaults``."""

    def add_serve_flags(self, serve: argparse.ArgumentParser) -> None:
        """Add flags to ``serve`` (they reach :meth:`serve_source` in the namespace)."""

    def source_given(self, ns: argparse.Namespace) -> bool:
        """Whether ``source_flag`` was given to ``serve``."""
        return self.source_flag is not None and getattr(ns, _dest(self.source_flag), None) is not None

    def serve_source(self, ns: argparse.Namespace, parser: argparse.ArgumentParser) -> GraphSource:
        """The graphs ``serve`` should serve, called only when :meth:`source_given`; flag usage errors go
        through ``parser.error`` (exit status 2)."""
        raise NotImplementedError


def load_extensions(group: str = ENTRY_POINT_GROUP) -> list[CliExtension]:
    """Every installed extension, in entry point name order; broken ones are reported and skipped."""
    extensions: list[CliExtension] = []
    for ep in sorted(metadata.entry_points(group=group), key=lambda ep: ep.name):
        try:
            extension = ep.load()()
        except Exception as exc:  # a broken plugin must not take the runtime's own commands down
            print(f"ovms-graph: warning: CLI extension {ep.name} ({ep.value}) cannot be loaded: {exc}",
                  file=sys.stderr)
            continue
        if isinstance(extension, CliExtension):
            extensions.append(extension)
    return extensions


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


# ----- argparse types shared by the runtime's flags and extensions' flags -----

def positive_int(flag: str) -> Callable[[str], int]:
    """An argparse type: an integer > 0, or ``<flag> expects a positive integer, got '<value>'``."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a positive integer, got {value!r}")
        return number
    return parse


def non_negative_int(flag: str) -> Callable[[str], int]:
    """An argparse type: an integer >= 0."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative integer, got {value!r}") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative integer, got {value!r}")
        return number
    return parse


def finite_float(flag: str) -> Callable[[str], float]:
    """An argparse type: a finite number."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{flag} expects a finite number, got {value!r}")
        return number
    return parse


def non_negative_float(flag: str) -> Callable[[str], float]:
    """An argparse type: a finite number >= 0."""
    finite = finite_float(flag)

    def parse(value: str) -> float:
        number = finite(value)
        if number < 0:
            raise argparse.ArgumentTypeError(f"{flag} expects a non-negative number, got {value!r}")
        return number
    return parse
