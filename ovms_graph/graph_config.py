"""Reading graph.pbtxt: MediaPipe's CalculatorGraphConfig in protobuf text format.

:func:`parse_graph` turns a file into a :class:`GraphSpec`: the parsed proto, one
:class:`NodeSpec` per node with its stream references split into tag, index and name, its options
unpacked into the registered message types, and a source map so every later problem can name the
line it comes from. Syntax errors are reported as ``file:line:column``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from ovms_graph.errors import ConfigError, Problem
from ovms_graph.protos import calculator_pb2

TAG_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class StreamRef:
    """A ``TAG:name`` / ``TAG:index:name`` / ``name`` reference to a stream or side packet."""

    raw: str
    tag: str
    index: int
    name: str

    @property
    def key(self) -> str:
        """``TAG`` for index 0, ``TAG:index`` otherwise: how calculators address the port."""
        return self.tag if self.index == 0 else f"{self.tag}:{self.index}"


def parse_stream_ref(raw: str) -> StreamRef:
    """Split a stream reference; raises ValueError with a user-facing reason when malformed."""
    parts = raw.split(":")
    if len(parts) == 1:
        tag, index, name = "", "0", parts[0]
    elif len(parts) == 2:
        tag, index, name = parts[0], "0", parts[1]
    elif len(parts) == 3:
        tag, index, name = parts
    else:
        raise ValueError(f'"{raw}" is not TAG:name, TAG:index:name or name')
    if tag and not TAG_RE.match(tag):
        raise ValueError(f'"{raw}": tag "{tag}" must match [A-Z_][A-Z0-9_]*')
    if not index.isdigit():
        raise ValueError(f'"{raw}": index "{index}" must be a non-negative integer')
    if not NAME_RE.match(name):
        raise ValueError(f'"{raw}": name "{name}" must match [a-z_][a-z0-9_]*')
    return StreamRef(raw, tag, int(index), name)


class SourceMap:
    """Line numbers of the nodes and fields of one pbtxt text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        self._build(text)

    def _record(self, path: str, line: int) -> None:
        self._lines.setdefault(path, line)
        self._lines.setdefault(re.sub(r"\[0\]$", "", path), line)
        self._lines.setdefault(re.sub(r"\[\d+\]", "", path), line)

    def _build(self, text: str) -> None:
        walker = _PathWalker(_tokens(text), self._record)
        i = 0
        while i < len(walker.toks):
            i = walker.step(i)

    def node_line(self, index: int) -> int | None:
        return self._lines.get(f"node[{index}]")

    def field_line(self, node_index: int | None, field_path: str) -> int | None:
        """Line of ``field_path`` (e.g. ``lora_adapters[1].alias``) in a node, or at graph level.

        A field that is absent (e.g. a missing required one) maps to its closest present parent.
        """
        prefix = f"node[{node_index}]." if node_index is not None else ""
        for path in _candidate_paths(field_path):
            line = self._lines.get(prefix + path)
            if line is not None:
                return line
        return self.node_line(node_index) if node_index is not None else None


#: Where a field of a node may sit: on the node, or inside its options (either spelling).
_CONTAINERS = ("", "node_options[0].", "options[0].", "node_options.", "options.")


def _candidate_paths(field_path: str) -> Iterator[str]:
    """The recorded paths that may hold ``field_path``, closest first: the path in each container,
    then each of its parents the same way, then the options field it is inside of, if any."""
    segments = field_path.split(".")
    inside_options = len(segments) > 1 and segments[0] in ("node_options", "options")
    if inside_options:
        segments = segments[1:]  # "node_options.x": x inside the options, either spelling
    for end in range(len(segments), 0, -1):
        path = ".".join(segments[:end])
        yield from (container + path for container in _CONTAINERS)
    if inside_options:
        yield from ("node_options", "options")


def _tokens(text: str) -> list[tuple[str, int]]:
    """The pbtxt tokens of ``text`` with their 1-based lines; from a malformed token on, nothing.

    Each line is tokenized on its own (a text-format token never spans lines), so the line numbers
    need no private Tokenizer state.
    """
    toks: list[tuple[str, int]] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        try:
            tok = text_format.Tokenizer([line])
            while not tok.AtEnd():
                toks.append((tok.token, number))
                tok.NextToken()
        except text_format.ParseError:  # a malformed tail still maps what came before it
            break
    return toks


class _PathWalker:
    """Walks pbtxt tokens, recording the line of each field path (``node[1].input_stream[0]``)."""

    def __init__(self, toks: list[tuple[str, int]], record: Callable[[str, int], None]) -> None:
        self.toks = toks
        self.record = record
        self.stack: list[str] = []
        self.counters: list[dict[str, int]] = [defaultdict(int)]

    def _kind(self, j: int) -> str | None:
        return self.toks[j][0] if j < len(self.toks) else None

    def _open(self, segment: str) -> None:
        self.stack.append(segment)
        self.counters.append(defaultdict(int))

    def step(self, i: int) -> int:
        """Consume the construct at token ``i``; the index of the next one."""
        t = self.toks[i][0]
        if t in ("}", ">"):
            if self.stack:
                self.stack.pop()
                self.counters.pop()
            return i + 1
        if t == "[":
            return self._extension(i)
        if _IDENT_RE.match(t) and self._kind(i + 1) in (":", "{", "<"):
            return self._field(i)
        return i + 1

    def _extension(self, i: int) -> int:
        j = i + 1
        while j < len(self.toks) and self.toks[j][0] != "]":
            j += 1
        j += 1
        if self._kind(j) == ":":
            j += 1
        if self._kind(j) in ("{", "<"):
            self._open("")  # Any / extension bracket: transparent in paths
            return j + 1
        return j

    def _field(self, i: int) -> int:
        t, line = self.toks[i]
        j = i + 1
        if self._kind(j) == ":":
            j += 1
        idx = self.counters[-1][t]
        self.counters[-1][t] += 1
        segment = f"{t}[{idx}]"
        self.record(".".join(s for s in [*self.stack, segment] if s), line)
        if self._kind(j) in ("{", "<"):
            self._open(segment)
            return j + 1
        if self._kind(j) == "[":
            while j < len(self.toks) and self.toks[j][0] != "]":
                j += 1
        return j + 1




@dataclass
class NodeSpec:
    """One node of a graph, with its references parsed and its options unpacked."""

    index: int
    name: str
    label: str
    calculator: str
    input_streams: list[StreamRef]
    output_streams: list[StreamRef]
    input_side_packets: list[StreamRef]
    output_side_packets: list[StreamRef]
    proto: calculator_pb2.CalculatorGraphConfig.Node
    line: int | None
    options: list[Message] = field(default_factory=list)
    #: Fields holding a malformed stream reference (already reported while parsing).
    malformed: set[str] = field(default_factory=set)

    def option(self, message_type: type[Message]) -> Message | None:
        """The node's options of ``message_type``, or None."""
        for opt in self.options:
            if isinstance(opt, message_type):
                return opt
        return None


@dataclass
class GraphSpec:
    """A parsed graph.pbtxt. Structural validity is checked separately (``validation``)."""

    file: Path
    proto: calculator_pb2.CalculatorGraphConfig
    source: SourceMap
    input_streams: list[StreamRef]
    output_streams: list[StreamRef]
    input_side_packets: list[StreamRef]
    nodes: list[NodeSpec]
    problems: list[Problem]

    def problem(self, message: str, *, node: NodeSpec | None = None, field: str | None = None) -> Problem:
        """A Problem located in this graph (file, line, node, calculator, field)."""
        if node is None:
            line = self.source.field_line(None, field) if field else None
            return Problem(message, file=str(self.file), line=line, field=field)
        line = self.source.field_line(node.index, field) if field else node.line
        return Problem(message, file=str(self.file), line=line or node.line, node=node.label,
                       calculator=node.calculator or None, field=field)


def _relaxed_file(fd: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)

    def relax(messages: Sequence[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            for f in m.field:
                if f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED:
                    f.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            relax(m.nested_type)

    relax(proto.message_type)
    return proto


@lru_cache(maxsize=32)
def _relaxed_graph_class(
        option_types: tuple[type[Message], ...]) -> tuple[type[Message], descriptor_pool.DescriptorPool]:
    """A CalculatorGraphConfig class whose pool knows ``option_types`` with required fields relaxed.

    text_format packs Any values eagerly and fails on a missing required field without saying
    where; parsing against relaxed copies lets the validator report it with file, line and node.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        pool.Add(_relaxed_file(fd))
        added.add(fd.name)

    add(calculator_pb2.DESCRIPTOR)
    for t in option_types:
        add(t.DESCRIPTOR.file)
    files = sorted(added)
    message_factory.GetMessageClassesForFiles(files, pool)
    graph_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("mediapipe.CalculatorGraphConfig"))
    return graph_cls, pool


def _any_type_line(text: str, type_name: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if type_name in line:
            return number
    return None


def parse_graph_text(text: str, file: Path, option_types: Sequence[type[Message]]) -> GraphSpec:
    """Parse pbtxt ``text``; raises ConfigError on syntax errors (file:line:column)."""
    graph_cls, pool = _relaxed_graph_class(tuple(option_types))
    relaxed = graph_cls()
    try:
        text_format.Parse(text, relaxed, descriptor_pool=pool)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        message = str(exc)
        if line is not None:
            message = re.sub(r"^\d+:\d+ : ", "", message)
        missing = re.match(r"Type (\S+) not found in descriptor pool", message)
        if missing:
            type_name = missing.group(1)
            line = _any_type_line(text, type_name)
            known = ", ".join(sorted(t.DESCRIPTOR.full_name for t in option_types)) or "none"
            message = (f'node_options type "{type_name}" is not provided by any registered calculator '
                       f"(known option types: {known})")
        where = f"{file}:{line}:{col}" if line is not None and col is not None else (
            f"{file}:{line}" if line is not None else str(file))
        raise ConfigError(Problem(f"syntax error: {message}", file=where)) from exc
    proto = calculator_pb2.CalculatorGraphConfig.FromString(relaxed.SerializePartialToString())
    return _build_spec(text, file, proto, option_types)


def parse_graph(path: Path, option_types: Sequence[type[Message]]) -> GraphSpec:
    """Read and parse ``path``; raises ConfigError when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(Problem(f"cannot read graph: {exc.strerror or exc}", file=str(path))) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem("graph is not UTF-8 text", file=str(path))) from exc
    return parse_graph_text(text, path, option_types)


#: A problem found while building a spec, before it can be located: (field, message).
_Found = tuple[str, str]


def _refs(values: Sequence[str], what: str, spec_problems: list[_Found]) -> list[StreamRef]:
    refs = []
    for raw in values:
        try:
            refs.append(parse_stream_ref(raw))
        except ValueError as exc:
            spec_problems.append((what, str(exc)))
    return refs


def _build_spec(text: str, file: Path, proto: calculator_pb2.CalculatorGraphConfig,
                option_types: Sequence[type[Message]]) -> GraphSpec:
    graph_problems: list[_Found] = []
    spec = GraphSpec(
        file=file, proto=proto, source=SourceMap(text),
        input_streams=_refs(proto.input_stream, "input_stream", graph_problems),
        output_streams=_refs(proto.output_stream, "output_stream", graph_problems),
        input_side_packets=_refs(proto.input_side_packet, "input_side_packet", graph_problems),
        nodes=[], problems=[],
    )
    for fld, msg in graph_problems:
        spec.problems.append(spec.problem(msg, field=fld))
    for index, node_proto in enumerate(proto.node):
        node, node_problems = _node_spec(index, node_proto, spec.source, option_types)
        for fld, msg in node_problems:
            spec.problems.append(spec.problem(msg, node=node, field=fld))
            node.malformed.add(fld)
        spec.nodes.append(node)
    return spec


def _node_spec(index: int, node_proto: calculator_pb2.CalculatorGraphConfig.Node, source: SourceMap,
               option_types: Sequence[type[Message]]) -> tuple[NodeSpec, list[_Found]]:
    """One node and its problems, in order: malformed stream references, unknown options types,
    missing required option fields."""
    problems: list[_Found] = []
    node = NodeSpec(
        index=index, name=node_proto.name, label=node_proto.name or f"#{index}",
        calculator=node_proto.calculator,
        input_streams=_refs(node_proto.input_stream, "input_stream", problems),
        output_streams=_refs(node_proto.output_stream, "output_stream", problems),
        input_side_packets=_refs(node_proto.input_side_packet, "input_side_packet", problems),
        output_side_packets=_refs(node_proto.output_side_packet, "output_side_packet", problems),
        proto=node_proto, line=source.node_line(index),
    )
    packed, unknown = _packed_options(node_proto, option_types)
    options = packed + _extension_options(node_proto, option_types)
    node.options.extend(opt for opt, _ in options)
    return node, problems + unknown + _missing_required(options)


def _packed_options(node_proto: calculator_pb2.CalculatorGraphConfig.Node,
                    option_types: Sequence[type[Message]]) -> tuple[list[tuple[Message, str]], list[_Found]]:
    """The ``node_options`` Any values unpacked, each with the field it came from (so problems inside it
    name that field), and one problem per value of a type no calculator registered."""
    by_name = {t.DESCRIPTOR.full_name: t for t in option_types}
    options: list[tuple[Message, str]] = []
    problems: list[_Found] = []
    for any_index, packed in enumerate(node_proto.node_options):
        type_name = packed.type_url.rsplit("/", 1)[-1]
        fld = f"node_options[{any_index}]" if len(node_proto.node_options) > 1 else "node_options"
        cls = by_name.get(type_name)
        if cls is None:
            problems.append((fld, f'unknown options type "{type_name}"'))
            continue
        unpacked = cls()
        unpacked.ParseFromString(packed.value)
        options.append((unpacked, fld))
    return options, problems


def _extension_options(node_proto: calculator_pb2.CalculatorGraphConfig.Node,
                       option_types: Sequence[type[Message]]) -> list[tuple[Message, str]]:
    """The registered extensions set in the node's legacy ``options`` field."""
    if not node_proto.HasField("options"):
        return []
    extensions = [getattr(cls, "ext", None) for cls in option_types]
    return [(node_proto.options.Extensions[ext], "options") for ext in extensions
            if ext is not None and node_proto.options.HasExtension(ext)]


def _missing_required(options: list[tuple[Message, str]]) -> list[_Found]:
    return [(f"{fld}.{missing}", "required field is missing") for opt, fld in options
            for missing in opt.FindInitializationErrors()]  # type: ignore[attr-defined]
