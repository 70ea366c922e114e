"""Graph validation: every structural problem of a GraphSpec, one Problem each.

Checks, in MediaPipe's spirit (``validated_graph_config.cc``): fields the runtime does not act on
are refused by name; stream references follow MediaPipe's grammar; every node input has exactly one
producer; graph outputs are produced; side packets are provided; there are no cycles; calculators
exist; port tags, requiredness, exact names and types match each calculator's declared contract;
node options are of a type the calculator accepts; and each calculator's own ``contract`` and
``check_options`` hooks pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from ovms_graph.aliases import GraphAliases, cross_graph_problems
from ovms_graph.calculator import Calculator, LoadContext, Port
from ovms_graph.config import GraphEntry
from ovms_graph.errors import ConfigError, Problem, RegistryError
from ovms_graph.graph_config import GraphSpec, NodeSpec, StreamRef, parse_graph
from ovms_graph.packets import HttpPayload, HttpResponse, ServerSentEvent
from ovms_graph.registry import Registry

# The only CalculatorGraphConfig / Node fields the runtime acts on (SPEC §4); others are refused.
GRAPH_FIELDS = {"node", "input_stream", "output_stream", "input_side_packet"}
NODE_FIELDS = {"name", "calculator", "input_stream", "output_stream", "input_side_packet",
               "output_side_packet", "options", "node_options"}

# Types of the streams the front end feeds and reads, by tag.
WELL_KNOWN_STREAM_TYPES: dict[str, Any] = {
    "HTTP_REQUEST_PAYLOAD": HttpPayload,
    "HTTP_RESPONSE_PAYLOAD": (HttpResponse, ServerSentEvent),
}


def _as_tuple(t: Any) -> tuple[Any, ...]:
    return t if isinstance(t, tuple) else (t,)


def types_compatible(produced: Any, consumed: Any) -> bool:
    """Whether packets of type ``produced`` may flow into a port declared as ``consumed``."""
    if produced is Any or consumed is Any or produced is object or consumed is object:
        return True
    wanted = _as_tuple(consumed)
    for p in _as_tuple(produced):
        if not any(isinstance(p, type) and isinstance(c, type) and issubclass(p, c) for c in wanted):
            return False
    return True


def type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " | ".join(type_name(x) for x in t)
    return getattr(t, "__name__", str(t))


def _refused_fields(spec: GraphSpec) -> list[Problem]:
    problems = []
    for fd, _ in spec.proto.ListFields():
        if fd.name not in GRAPH_FIELDS:
            problems.append(spec.problem(
                f"graph field \"{fd.name}\" is part of MediaPipe's schema but ovms-graph does not act on it; "
                "remove it", field=fd.name))
    for node in spec.nodes:
        for fd, _ in node.proto.ListFields():
            if fd.name not in NODE_FIELDS:
                problems.append(spec.problem(
                    f"node field \"{fd.name}\" is part of MediaPipe's schema but ovms-graph does not act on it; "
                    "remove it", node=node, field=fd.name))
    return problems


@dataclass(frozen=True)
class _PortGroup:
    """One kind of a node's connections (e.g. its ``input_stream`` fields) and the ports declared for it."""

    field: str
    refs: list[StreamRef]
    ports: tuple[Port, ...]


def _port_problems(spec: GraphSpec, node: NodeSpec, calc: type[Calculator]) -> list[Problem]:
    """The node's streams and side packets against the calculator's declared ports, one group at a
    time: first what is connected, then what is required but not connected."""
    groups = [
        _PortGroup("input_stream", node.input_streams, calc.inputs),
        _PortGroup("output_stream", node.output_streams, calc.outputs),
        _PortGroup("input_side_packet", node.input_side_packets, calc.input_side_packets),
        _PortGroup("output_side_packet", node.output_side_packets, calc.output_side_packets),
    ]
    problems: list[Problem] = []
    for group in groups:
        problems += _connection_problems(spec, node, calc, group)
        problems += _unconnected_problems(spec, node, group)
    return problems


def _connection_problems(spec: GraphSpec, node: NodeSpec, calc: type[Calculator], group: _PortGroup
                         ) -> list[Problem]:
    """Each connection names a declared tag, connects its port once and uses the port's exact name."""
    declared = {p.tag: p for p in group.ports}
    problems: list[Problem] = []
    seen: set[str] = set()
    for ref in group.refs:
        port = declared.get(ref.tag)
        if port is None:
            allowed = ", ".join(sorted(declared)) or "none"
            problems.append(spec.problem(
                f'unknown tag {ref.tag or "(no tag)"} in "{ref.raw}"; {calc.registry_name()} declares: {allowed}',
                node=node, field=group.field))
            continue
        if ref.key in seen:
            problems.append(spec.problem(f'port {ref.key} is connected twice', node=node, field=group.field))
        seen.add(ref.key)
        if port.exact_name is not None and ref.name != port.exact_name:
            problems.append(spec.problem(
                f'expected "{port.tag}:{port.exact_name}" exactly, got "{ref.raw}"', node=node, field=group.field))
    return problems


def _unconnected_problems(spec: GraphSpec, node: NodeSpec, group: _PortGroup) -> list[Problem]:
    """Every required port is connected (not reported when the field held a malformed reference)."""
    if group.field in node.malformed:
        return []
    connected = {r.tag for r in group.refs}
    return [spec.problem(f'required port {port.tag} ({port.description}) is not connected; '
                         f'add {group.field}: "{port.tag}:{port.exact_name or port.tag.lower()}"',
                         node=node, field=group.field)
            for port in group.ports if port.required and port.tag not in connected]


def _cycle(spec: GraphSpec, producers: dict[str, int]) -> list[int] | None:
    edges: dict[int, set[int]] = {n.index: set() for n in spec.nodes}
    for node in spec.nodes:
        for ref in node.input_streams:
            src = producers.get(ref.name)
            if src is not None and src >= 0:
                edges[src].add(node.index)
    state: dict[int, int] = {}
    stack: list[int] = []

    def visit(n: int) -> list[int] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


@dataclass
class _Streams:
    """Who produces each stream (-1: a graph input_stream) and the packet type it carries."""

    producers: dict[str, int]
    types: dict[str, Any]


def validate_graph(spec: GraphSpec, registry: Registry, *, graph_name: str | None = None,
                   check_options: bool = True) -> list[Problem]:
    """Every problem of ``spec`` (including those found while parsing), in file order.

    One stage per concern, each returning its problems: refused fields, calculators, node names,
    stream producers, node inputs and side packets, graph outputs, cycles, then each node's ports,
    option types, contract and (when nothing else is wrong with the node) its ``check_options``.
    """
    problems: list[Problem] = list(spec.problems) + _refused_fields(spec)
    calcs = _calculators(spec, registry, problems)
    problems += _name_problems(spec, calcs)
    streams, producer_problems = _streams(spec, calcs)
    problems += producer_problems
    problems += _input_problems(spec, calcs, streams)
    problems += _output_problems(spec, streams)
    problems += _cycle_problems(spec, streams.producers)
    ctx = LoadContext(graph_name or spec.file.parent.name, spec.file)
    for node in spec.nodes:
        calc = calcs.get(node.index)
        if calc is None:
            continue
        problems += _port_problems(spec, node, calc)
        problems += _option_type_problems(spec, node, calc)
        problems += [spec.problem(issue.message, node=node, field=issue.field) for issue in calc.contract(node)]
        if check_options and not any(p.node == node.label for p in problems):
            problems += _check_options_problems(spec, node, calc, ctx)
    problems.sort(key=lambda p: (p.line or 0))
    return problems


def _calculators(spec: GraphSpec, registry: Registry, problems: list[Problem]) -> dict[int, type[Calculator]]:
    """Each node's calculator class by node index; a missing or unknown one adds its problem."""
    calcs: dict[int, type[Calculator]] = {}
    for node in spec.nodes:
        if not node.calculator:
            problems.append(spec.problem("calculator is not set", node=node, field="calculator"))
            continue
        try:
            calcs[node.index] = registry.get(node.calculator)
        except RegistryError as exc:
            problems.append(spec.problem(str(exc), node=node, field="calculator"))
    return calcs


def _name_problems(spec: GraphSpec, calcs: dict[int, type[Calculator]]) -> list[Problem]:
    """Names used twice, and missing names where the calculator requires one."""
    problems: list[Problem] = []
    names: dict[str, NodeSpec] = {}
    for node in spec.nodes:
        if not node.name:
            calc = calcs.get(node.index)
            if calc is not None and calc.requires_name:
                problems.append(spec.problem(f"{calc.registry_name()} nodes must have a name", node=node,
                                             field="name"))
            continue
        if node.name in names:
            problems.append(spec.problem(f'node name "{node.name}" is used twice (first on line '
                                         f"{names[node.name].line})", node=node, field="name"))
        names.setdefault(node.name, node)
    return problems


def _streams(spec: GraphSpec, calcs: dict[int, type[Calculator]]) -> tuple[_Streams, list[Problem]]:
    """Producers: graph inputs (-1) and node outputs; each stream name exactly once."""
    problems: list[Problem] = []
    streams = _Streams({}, {})
    for ref in spec.input_streams:
        if ref.name in streams.producers:
            problems.append(spec.problem(f'stream "{ref.name}" is declared twice', field="input_stream"))
        streams.producers[ref.name] = -1
        streams.types[ref.name] = WELL_KNOWN_STREAM_TYPES.get(ref.tag, Any)
    for node in spec.nodes:
        calc = calcs.get(node.index)
        declared = {p.tag: p for p in calc.outputs} if calc else {}
        for ref in node.output_streams:
            if ref.name in streams.producers:
                other = streams.producers[ref.name]
                by = "a graph input_stream" if other < 0 else f'node "{spec.nodes[other].label}"'
                problems.append(spec.problem(f'stream "{ref.name}" already has a producer: {by}; '
                                             "every stream needs exactly one", node=node, field="output_stream"))
                continue
            streams.producers[ref.name] = node.index
            port = declared.get(ref.tag)
            streams.types[ref.name] = port.type if port else Any
    return streams, problems


def _input_problems(spec: GraphSpec, calcs: dict[int, type[Calculator]], streams: _Streams) -> list[Problem]:
    """Node input streams without a producer or of the wrong type; side packets nobody provides."""
    side_available = {ref.name for ref in spec.input_side_packets}
    for node in spec.nodes:
        side_available.update(ref.name for ref in node.output_side_packets)
    problems: list[Problem] = []
    for node in spec.nodes:
        calc = calcs.get(node.index)
        problems += _input_stream_problems(spec, node, calc, streams)
        for ref in node.input_side_packets:
            own = calc is not None and calc.resources_port == ref.tag
            if not own and ref.name not in side_available:
                problems.append(spec.problem(
                    f'input side packet "{ref.raw}" is not provided (by a graph input_side_packet, a node '
                    "output_side_packet or the calculator's own resources)", node=node, field="input_side_packet"))
    return problems


def _input_stream_problems(spec: GraphSpec, node: NodeSpec, calc: type[Calculator] | None,
                           streams: _Streams) -> list[Problem]:
    problems: list[Problem] = []
    inputs = {p.tag: p for p in calc.inputs} if calc else {}
    for ref in node.input_streams:
        if ref.name not in streams.producers:
            problems.append(spec.problem(
                f'input stream "{ref.name}" has no producer (no graph input_stream or node output_stream '
                "is named so)", node=node, field="input_stream"))
            continue
        port = inputs.get(ref.tag)
        if port is not None and not types_compatible(streams.types[ref.name], port.type):
            problems.append(spec.problem(
                f'stream "{ref.name}" carries {type_name(streams.types[ref.name])} but {ref.tag} expects '
                f"{type_name(port.type)}", node=node, field="input_stream"))
    return problems


def _output_problems(spec: GraphSpec, streams: _Streams) -> list[Problem]:
    """Graph outputs nobody produces, or produced with a type the front end cannot read."""
    problems: list[Problem] = []
    for ref in spec.output_streams:
        if ref.name not in streams.producers:
            problems.append(spec.problem(f'graph output stream "{ref.name}" is not produced by any node',
                                         field="output_stream"))
            continue
        expected = WELL_KNOWN_STREAM_TYPES.get(ref.tag)
        if expected is not None and not types_compatible(streams.types[ref.name], expected):
            problems.append(spec.problem(
                f'graph output "{ref.raw}" carries {type_name(streams.types[ref.name])}, expected '
                f"{type_name(expected)}", field="output_stream"))
    return problems


def _cycle_problems(spec: GraphSpec, producers: dict[str, int]) -> list[Problem]:
    cycle = _cycle(spec, producers)
    if not cycle:
        return []
    path = " -> ".join(f'"{spec.nodes[i].label}"' for i in cycle)
    return [spec.problem(f"the graph has a cycle: {path}", node=spec.nodes[cycle[0]])]


def _option_type_problems(spec: GraphSpec, node: NodeSpec, calc: type[Calculator]) -> list[Problem]:
    accepted: tuple[type[Message], ...] = calc.options_types
    names_ok = ", ".join(t.DESCRIPTOR.full_name for t in accepted) or "no options"
    return [spec.problem(f"options of type {opt.DESCRIPTOR.full_name} are not accepted by {calc.registry_name()} "
                         f"(accepts {names_ok})", node=node, field="node_options")
            for opt in node.options if not isinstance(opt, accepted)]


def _check_options_problems(spec: GraphSpec, node: NodeSpec, calc: type[Calculator],
                            ctx: LoadContext) -> list[Problem]:
    """The calculator's own load-time option rules; a calculator bug is reported with its node."""
    opts = [o for o in node.options if isinstance(o, calc.options_types)]
    try:
        issues = list(calc.check_options(node, opts[0] if opts else None, ctx))
    except Exception as exc:  # a calculator bug must still be reported, with its node
        return [spec.problem(f"check_options failed: {type(exc).__name__}: {exc}", node=node)]
    return [spec.problem(issue.message, node=node, field=issue.field) for issue in issues]


def declared_aliases(spec: GraphSpec, registry: Registry, *, graph_name: str | None = None) -> tuple[str, ...]:
    """The aliases the nodes of ``spec`` declare in their options, in node order (for a graph that
    validated; a calculator that is not registered declares none)."""
    ctx = LoadContext(graph_name or spec.file.parent.name, spec.file)
    aliases: list[str] = []
    for node in spec.nodes:
        try:
            calc = registry.get(node.calculator)
        except RegistryError:
            continue
        opts = [o for o in node.options if isinstance(o, calc.options_types)]
        aliases.extend(calc.declared_aliases(node, opts[0] if opts else None, ctx))
    return tuple(aliases)


@dataclass(frozen=True)
class EntriesCheck:
    """What :func:`validate_entries` found: the graphs valid on their own, each graph's own problems,
    and the alias clashes between the valid graphs."""

    valid: list[tuple[GraphEntry, GraphSpec]]
    problems: list[Problem]
    clashes: list[Problem]

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + self.clashes


def validate_entries(entries: Sequence[GraphEntry], registry: Registry) -> EntriesCheck:
    """Every problem of every graph, and every alias clash between the valid ones: aliases declared
    by their options must be unique across the graphs and differ from graph names (SPEC §9), each
    clash naming both graphs. Loads no model."""
    valid: list[tuple[GraphEntry, GraphSpec]] = []
    problems: list[Problem] = []
    for entry in entries:
        try:
            spec = parse_graph(entry.graph_path, registry.option_types())
            found = validate_graph(spec, registry, graph_name=entry.name)
        except ConfigError as exc:
            found = list(exc.problems)
        problems.extend(found)
        if not found:
            valid.append((entry, spec))
    declared = [GraphAliases(e.name, str(e.graph_path), declared_aliases(s, registry, graph_name=e.name))
                for e, s in valid]
    return EntriesCheck(valid, problems, cross_graph_problems(declared, graph_names=[e.name for e in entries]))
