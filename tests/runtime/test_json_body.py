"""The one JSON parse of a request body: the front end's strictness, also in the calculator runner."""

from __future__ import annotations

import pytest

from ovms_graph.calculator import Calculator, CalculatorContext, Port
from ovms_graph.errors import BadRequest
from ovms_graph.json_body import parse_json_object
from ovms_graph.packets import HttpPayload, MultipartView
from ovms_graph.registry import Registry
from ovms_graph.testing import CalculatorRunner


@pytest.mark.parametrize(("body", "message"), [
    (b"", "request body is empty; expected a JSON object"),
    (b"{", "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b'{"n": NaN}', "malformed JSON: NaN is not allowed (numbers must be finite)"),
    (b'{"n": -Infinity}', "malformed JSON: -Infinity is not allowed (numbers must be finite)"),
    (b'{"n": 1e999}', "malformed JSON: number 1e999 is out of range"),
    (b'{"prompt": "a", "prompt": "b"}', 'malformed JSON: duplicate key "prompt"'),
    (b'{"a": {"b": 1, "b": 2}}', 'malformed JSON: duplicate key "b"'),
    (b"\xff", "malformed JSON: the body is not valid UTF-8"),
    (b"[1]", "JSON body must be an object, got array"),
])
def test_parse_json_object_refuses_what_the_front_end_refuses(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_json_object(body)
    assert info.value.message == message


def test_parse_json_object_keeps_values_and_key_order() -> None:
    parsed = parse_json_object(b'{"prompt": "a", "n": 2, "lora_alphas": {"x": 0.5}}')
    assert parsed == {"prompt": "a", "n": 2, "lora_alphas": {"x": 0.5}}
    assert list(parsed) == ["prompt", "n", "lora_alphas"]


class Echo(Calculator):
    """Answers with the ``parsed_json`` it was given."""

    inputs = (Port("HTTP_REQUEST_PAYLOAD", HttpPayload, "request"),)
    outputs = (Port("JSON", object, "the payload's parsed_json"),)

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("JSON", cc.inputs["HTTP_REQUEST_PAYLOAD"].parsed_json)


NODE = 'node { calculator: "Echo" input_stream: "HTTP_REQUEST_PAYLOAD:in" output_stream: "JSON:out" }'


def _runner() -> CalculatorRunner:
    registry = Registry()
    registry.register(Echo)
    return CalculatorRunner(NODE, registry=registry)


def test_the_runner_builds_json_payloads_with_the_front_ends_parser() -> None:
    with _runner() as runner:
        payload = runner.json_payload(b'{"prompt": "a cat", "n": 2}')
        assert (payload.route, payload.model, payload.body) == ("images/generations", "graph",
                                                                b'{"prompt": "a cat", "n": 2}')
        assert runner.run({"HTTP_REQUEST_PAYLOAD": payload}) == [("JSON", {"prompt": "a cat", "n": 2})]
        for body, message in ((b'{"prompt": "a", "n": NaN}', "malformed JSON: NaN is not allowed (numbers must "
                                                             "be finite)"),
                              (b'{"prompt": "a", "prompt": "b"}', 'malformed JSON: duplicate key "prompt"')):
            with pytest.raises(BadRequest) as info:
                runner.json_payload(body)
            assert info.value.message == message


def test_the_runner_feeds_payloads_as_given() -> None:
    raw = HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"{not json",
                      route="images/generations", model="graph")
    form = HttpPayload(uri="/v3/images/edits", method="POST", headers={}, body=b"--x--", route="images/edits",
                       model="graph", multipart=MultipartView(fields={"prompt": ("a",)}))
    with _runner() as runner:
        assert runner.run({"HTTP_REQUEST_PAYLOAD": raw}) == [("JSON", None)]
        assert runner.run({"HTTP_REQUEST_PAYLOAD": form}) == [("JSON", None)]
