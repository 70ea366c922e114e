"""The alias rules (SPEC §9): grammar, and uniqueness across every graph of one config.json."""

from __future__ import annotations

import pytest

from ovms_graph.aliases import GraphAliases, cross_graph_problems, is_valid_alias


@pytest.mark.parametrize(("name", "valid"), [
    ("style", True), ("my.lora_v2-1", True), ("...", True), (".hidden", True), ("a..b", True),
    (".", False), ("..", False), ("../x", False), ("a/b", False), ("a\\b", False), ("", False), ("a b", False),
    ("pokémon", False),
])
def test_alias_grammar_refuses_dot_names_and_path_separators(name: str, valid: bool) -> None:
    assert is_valid_alias(name) is valid


# ([(graph, aliases)], extra graph names, messages)
CASES = [
    ([("a", ("x", "y")), ("b", ("z",))], (), []),
    ([("a", ("style",)), ("b", ("style",))], (),
     ['b.pbtxt: alias "style" of graph "b" is registered also by graph "a"; aliases must be unique across every '
      "graph served together"]),
    ([("a", ("b",)), ("b", ())], (),
     ['a.pbtxt: alias "b" of graph "a" is also the name of graph "b"; aliases must differ from graph names']),
    ([("a", ("c",))], ("c",),  # a graph that failed its own checks still owns its name
     ['a.pbtxt: alias "c" of graph "a" is also the name of graph "c"; aliases must differ from graph names']),
    ([("a", ("s", "s"))], (),
     ['a.pbtxt: alias "s" of graph "a" is registered twice in the same graph; aliases must be unique across every '
      "graph served together"]),
    ([("a", ("..",))], (), ['a.pbtxt: alias ".." of graph "a" may not be "." or ".."']),
    ([("a", ("x/y",))], (), ['a.pbtxt: alias "x/y" of graph "a" must match [A-Za-z0-9._-]+']),
]


@pytest.mark.parametrize(("graphs", "names", "messages"), CASES, ids=range(len(CASES)))
def test_aliases_are_unique_across_graphs_and_differ_from_graph_names(
        graphs: list[tuple[str, tuple[str, ...]]], names: tuple[str, ...], messages: list[str]) -> None:
    found = cross_graph_problems([GraphAliases(g, f"{g}.pbtxt", a) for g, a in graphs], graph_names=names)
    assert [str(p) for p in found] == messages
