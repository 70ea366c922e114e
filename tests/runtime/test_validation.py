"""Operator-facing messages for invalid graphs: every problem, one per line, exactly as printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms_graph.errors import ConfigError
from ovms_graph.graph_config import parse_graph_text, parse_stream_ref
from ovms_graph.validation import validate_graph
from tests.runtime import fakes

H = 'input_stream: "TEXT:in"\noutput_stream: "TEXT:out"\n'
UPPER = 'node { calculator: "Upper" input_stream: "TEXT:in" output_stream: "TEXT:out" }'


def problems(text: str) -> list[str]:
    try:
        spec = parse_graph_text(text, Path("graph.pbtxt"), [])
        return [str(p) for p in validate_graph(spec, fakes.registry())]
    except ConfigError as exc:
        return [str(p) for p in exc.problems]


CASES = [
    ("unknown calculator", H + UPPER.replace('"Upper"', '"Uper"'),
     ['graph.pbtxt:3: node "#0" (Uper): calculator: unknown calculator "Uper"; did you mean \'Upper\'? '
      "(registered: Exclaim, Fail, Join, Recorder, Resourceful, Split, Upper, WaitForCancel)"]),
    ("calculator not set", H + 'node { input_stream: "TEXT:in" output_stream: "TEXT:out" }',
     ['graph.pbtxt:3: node "#0": calculator: calculator is not set']),
    ("input without producer", H + UPPER.replace("TEXT:in", "TEXT:missing"),
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: input stream "missing" has no producer '
      "(no graph input_stream or node output_stream is named so)"]),
    ("two producers", H + UPPER + "\n" + UPPER,
     ['graph.pbtxt:4: node "#1" (Upper): output_stream: stream "out" already has a producer: node "#0"; '
      "every stream needs exactly one"]),
    ("graph output not produced", 'input_stream: "TEXT:in"\noutput_stream: "TEXT:nowhere"\n' + UPPER,
     ['graph.pbtxt:2: output_stream: graph output stream "nowhere" is not produced by any node']),
    ("lower-case tag", H + UPPER.replace('"TEXT:in"', '"text:in"', 1).replace('input_stream: "TEXT:in"', "x", 0),
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: "text:in": tag "text" must match [A-Z_][A-Z0-9_]*']),
    ("upper-case name", H + UPPER.replace("TEXT:in", "TEXT:In"),
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: "TEXT:In": name "In" must match [a-z_][a-z0-9_]*']),
    ("bad index", H + UPPER.replace("TEXT:in", "TEXT:x:in"),
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: "TEXT:x:in": index "x" must be a non-negative integer']),
    ("undeclared tag", H + UPPER.replace("TEXT:in", "WORDS:in"),
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: unknown tag WORDS in "WORDS:in"; Upper declares: TEXT',
      'graph.pbtxt:3: node "#0" (Upper): input_stream: required port TEXT (text) is not connected; '
      'add input_stream: "TEXT:text"']),
    ("required port missing", H + 'node { calculator: "Upper" output_stream: "TEXT:out" }',
     ['graph.pbtxt:3: node "#0" (Upper): input_stream: required port TEXT (text) is not connected; '
      'add input_stream: "TEXT:text"']),
    ("port types differ", 'input_stream: "TEXT:in"\noutput_stream: "HTTP_RESPONSE_PAYLOAD:out"\n' + UPPER,
     ['graph.pbtxt:2: output_stream: graph output "HTTP_RESPONSE_PAYLOAD:out" carries str, '
      "expected HttpResponse | ServerSentEvent"]),
    ("cycle", H + 'node { name: "a" calculator: "Join" input_stream: "A:in" input_stream: "B:loop" '
     'output_stream: "TEXT:mid" }\nnode { name: "b" calculator: "Upper" input_stream: "TEXT:mid" '
     'output_stream: "TEXT:loop" }\nnode { calculator: "Upper" input_stream: "TEXT:mid" output_stream: "TEXT:out" }',
     ['graph.pbtxt:3: node "a" (Join): the graph has a cycle: "a" -> "b" -> "a"']),
    ("side packet not provided", H + UPPER.replace(" output_stream", ' input_side_packet: "MODEL:m" output_stream'),
     ['graph.pbtxt:3: node "#0" (Upper): input_side_packet: input side packet "MODEL:m" is not provided '
      "(by a graph input_side_packet, a node output_side_packet or the calculator's own resources)",
      'graph.pbtxt:3: node "#0" (Upper): input_side_packet: unknown tag MODEL in "MODEL:m"; Upper declares: none']),
    ("side packet name pinned", H + 'node { name: "r" calculator: "Resourceful" input_stream: "TEXT:in" '
     'input_side_packet: "RESOURCE:other" output_stream: "TEXT:out" }',
     ['graph.pbtxt:3: node "r" (Resourceful): input_side_packet: expected "RESOURCE:res" exactly, '
      'got "RESOURCE:other"']),
    ("name required", H + 'node { calculator: "Resourceful" input_stream: "TEXT:in" '
     'input_side_packet: "RESOURCE:res" output_stream: "TEXT:out" }',
     ['graph.pbtxt:3: node "#0" (Resourceful): name: Resourceful nodes must have a name']),
    ("duplicate node names", H + 'node { name: "x" calculator: "Upper" input_stream: "TEXT:in" '
     'output_stream: "TEXT:mid" }\nnode { name: "x" calculator: "Upper" input_stream: "TEXT:mid" '
     'output_stream: "TEXT:out" }',
     ['graph.pbtxt:4: node "x" (Upper): name: node name "x" is used twice (first on line 3)']),
    ("graph executor refused", H + 'executor { name: "pool" }\n' + UPPER,
     ['graph.pbtxt:3: executor: graph field "executor" is part of MediaPipe\'s schema but ovms-graph does not '
      "act on it; remove it"]),
    ("graph max_queue_size refused", "max_queue_size: 4\n" + H + UPPER,
     ['graph.pbtxt:1: max_queue_size: graph field "max_queue_size" is part of MediaPipe\'s schema but ovms-graph '
      "does not act on it; remove it"]),
    ("node input_stream_handler refused", H + 'node {\n  calculator: "Upper"\n  input_stream: "TEXT:in"\n'
     '  output_stream: "TEXT:out"\n  input_stream_handler { input_stream_handler: "ImmediateInputStreamHandler" }\n}',
     ['graph.pbtxt:7: node "#0" (Upper): input_stream_handler: node field "input_stream_handler" is part of '
      "MediaPipe's schema but ovms-graph does not act on it; remove it"]),
    ("calculator contract", H + 'node { name: "r" calculator: "Resourceful" input_stream: "TEXT:in" '
     'input_side_packet: "RESOURCE:res" output_stream: "TEXT:out" output_stream: "TEXT:out2" }',
     ['graph.pbtxt:3: node "r" (Resourceful): output_stream: port TEXT is connected twice',
      'graph.pbtxt:3: node "r" (Resourceful): output_stream: Resourceful has exactly one output']),
    ("options type nobody provides", H + UPPER.replace(" }", " node_options { [type.googleapis.com/"
                                                       "mediapipe.NopeOptions] { a: 1 } } }"),
     ['graph.pbtxt:3: syntax error: node_options type "mediapipe.NopeOptions" is not provided by any registered '
      "calculator (known option types: none)"]),
    ("syntax error with column", H + 'node { calculator: "Upper" bogus: 1 }',
     ['graph.pbtxt:3:28: syntax error: Message type "mediapipe.CalculatorGraphConfig.Node" has no field named '
      '"bogus".']),
    ("unterminated", H + 'node { calculator: "Upper"',
     ['graph.pbtxt:3:20: syntax error: Expected "}".']),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_graph_messages(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_every_problem_is_reported_at_once() -> None:
    text = ("max_queue_size: 4\n" + H + UPPER.replace('"Upper"', '"Uper"') + "\n"
            + 'node { calculator: "Upper" input_stream: "TEXT:nope" output_stream: "TEXT:other" }')
    found = problems(text)
    assert len(found) == 3
    assert [p.split(":")[1] for p in found] == ["1", "4", "5"]


def test_valid_graph_has_no_problems() -> None:
    assert problems(H + UPPER) == []


@pytest.mark.parametrize(("raw", "tag", "index", "name"), [
    ("in", "", 0, "in"),
    ("TEXT:in", "TEXT", 0, "in"),
    ("TEXT:2:in", "TEXT", 2, "in"),
    ("HTTP_REQUEST_PAYLOAD:input", "HTTP_REQUEST_PAYLOAD", 0, "input"),
    ("_T1:_x9", "_T1", 0, "_x9"),
])
def test_stream_references(raw: str, tag: str, index: int, name: str) -> None:
    ref = parse_stream_ref(raw)
    assert (ref.tag, ref.index, ref.name) == (tag, index, name)
    assert ref.key == (tag if index == 0 else f"{tag}:{index}")


@pytest.mark.parametrize(("raw", "message"), [
    ("A:B:c:d", '"A:B:c:d" is not TAG:name, TAG:index:name or name'),
    ("1TAG:x", '"1TAG:x": tag "1TAG" must match [A-Z_][A-Z0-9_]*'),
    ("T:-1:x", '"T:-1:x": index "-1" must be a non-negative integer'),
    ("T:", '"T:": name "" must match [a-z_][a-z0-9_]*'),
    ("T:a-b", '"T:a-b": name "a-b" must match [a-z_][a-z0-9_]*'),
])
def test_bad_stream_references(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_stream_ref(raw)
    assert str(info.value) == message
