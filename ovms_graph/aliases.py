"""Model-name aliases (LoRA adapters, composites): their grammar and their uniqueness across graphs.

An alias matches ``[A-Za-z0-9._-]+`` and is neither ``.`` nor ``..`` (``--source_loras`` fetches an
adapter into ``<model dir>/loras/<alias>/``, so an alias must name a folder of its own). Every alias a
config.json's graphs declare, routable or not, is unique across all of them and differs from every graph
name (SPEC §9): :func:`cross_graph_problems` reports each clash naming both graphs, for ``serve`` (aliases
registered at load) and ``validate`` (aliases declared by the node options) alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ovms_graph.errors import Problem

ALIAS_PATTERN = "[A-Za-z0-9._-]+"
_ALIAS_RE = re.compile(rf"^{ALIAS_PATTERN}$")
#: Names that match the pattern but would step out of ``loras/<alias>/``.
DOT_NAMES = (".", "..")


def is_valid_alias(name: str) -> bool:
    """Whether ``name`` may be an alias: the pattern, and not ``.`` or ``..``."""
    return bool(_ALIAS_RE.match(name)) and name not in DOT_NAMES


def is_dot_name(name: str) -> bool:
    """Whether ``name`` is ``.`` or ``..`` (it matches the pattern but is refused)."""
    return name in DOT_NAMES


@dataclass(frozen=True)
class GraphAliases:
    """The aliases one graph registers (or declares), in order; ``file`` is its graph.pbtxt."""

    graph: str
    file: str | None
    aliases: tuple[str, ...]


def cross_graph_problems(graphs: Sequence[GraphAliases], graph_names: Iterable[str] = ()) -> list[Problem]:
    """Every alias that breaks the grammar, is the name of a graph (of ``graphs`` or ``graph_names``), or is
    declared by two graphs (or twice by one); each message names the alias and both graphs involved."""
    problems: list[Problem] = []
    names = {g.graph for g in graphs} | set(graph_names)
    owners: dict[str, str] = {}
    for g in graphs:
        for alias in g.aliases:
            if not is_valid_alias(alias):
                why = 'may not be "." or ".."' if is_dot_name(alias) else f"must match {ALIAS_PATTERN}"
                problems.append(Problem(f'alias "{alias}" of graph "{g.graph}" {why}', file=g.file))
            elif alias in names:
                problems.append(Problem(f'alias "{alias}" of graph "{g.graph}" is also the name of graph "{alias}"; '
                                        "aliases must differ from graph names", file=g.file))
            elif alias in owners:
                other = owners[alias]
                where = "twice in the same graph" if other == g.graph else f'also by graph "{other}"'
                problems.append(Problem(f'alias "{alias}" of graph "{g.graph}" is registered {where}; '
                                        "aliases must be unique across every graph served together", file=g.file))
            owners.setdefault(alias, g.graph)
    return problems
