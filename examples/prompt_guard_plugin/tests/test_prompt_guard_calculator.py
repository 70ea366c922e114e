"""PromptGuardCalculator in isolation: one node run by ovms_graph.testing.CalculatorRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ovms_graph.errors import BadRequest, ConfigError
from ovms_graph.graph_config import parse_graph_text
from ovms_graph.packets import HttpPayload
from ovms_graph.registry import Registry
from ovms_graph.testing import CalculatorRunner
from ovms_graph.validation import validate_graph

from ovms_graph_prompt_guard import prompt_guard_calculator
from ovms_graph_prompt_guard.prompt_guard_calculator import GuardRules, PromptGuardCalculator
from prompt_guard_helpers import (
    FIRST_OPTION_LINE,
    GUARDED_SD,
    IMAGE,
    OVMS_GRAPH,
    PLUGIN,
    form_payload,
    json_payload,
    node_text,
    registry,
)

DEFAULT = ('blocked_words: "gore"', 'blocked_words: "blood bath"', 'style_suffix: "flat colors"')


def run(tmp_path: Path, payload: HttpPayload, *options: str) -> HttpPayload:
    """The payload the node passes on for ``payload``; raises what the node raises."""
    with CalculatorRunner(node_text(*(options or DEFAULT)), registry=registry(),
                          graph_file=tmp_path / "graph.pbtxt") as runner:
        ((tag, out),) = runner.run({"HTTP_REQUEST_PAYLOAD": payload})
    assert tag == "HTTP_REQUEST_PAYLOAD"
    assert isinstance(out, HttpPayload)
    return out


@pytest.mark.parametrize(("payload", "options", "message", "param"), [
    (json_payload({"prompt": "a gore scene"}), (), 'prompt contains the blocked word "gore"', "prompt"),
    (json_payload({"prompt": "GORE!"}), (), 'prompt contains the blocked word "gore"', "prompt"),
    (json_payload({"prompt": "a Blood\n  Bath"}), (), 'prompt contains the blocked word "blood bath"', "prompt"),
    (json_payload({"prompt": "a cat", "prompt_2": "(gore)"}), (), 'prompt_2 contains the blocked word "gore"',
     "prompt_2"),
    (json_payload({"prompt": "gore", "prompt_3": "gore"}), (), 'prompt contains the blocked word "gore"', "prompt"),
    (form_payload({"prompt": "Gore in watercolor"}), (), 'prompt contains the blocked word "gore"', "prompt"),
    (form_payload({"prompt": "a cat", "prompt_3": "blood bath"}), (),
     'prompt_3 contains the blocked word "blood bath"', "prompt_3"),
    (json_payload({"prompt": "a Gore"}), ('blocked_words: "Gore"', "case_sensitive: true"),
     'prompt contains the blocked word "Gore"', "prompt"),
    (json_payload({"prompt": "a cat", "negative_prompt": "gore"}),
     ('blocked_words: "gore"', 'checked_fields: "negative_prompt"'),
     'negative_prompt contains the blocked word "gore"', "negative_prompt"),
    (json_payload({"prompt": "c++ code"}), ('blocked_words: "c++"',), 'prompt contains the blocked word "c++"',
     "prompt"),
])
def test_a_blocked_word_is_a_400_naming_the_field(tmp_path: Path, payload: HttpPayload, options: tuple[str, ...],
                                                  message: str, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        run(tmp_path, payload, *options)
    assert (refused.value.message, refused.value.param, refused.value.code) == (message, param, "blocked_word")


@pytest.mark.parametrize(("body", "options", "prompt"), [
    ({"prompt": "a red circle"}, (), "a red circle, flat colors"),
    ({"prompt": "the gorest of words"}, (), "the gorest of words, flat colors"),
    ({"prompt": "bloodgore"}, (), "bloodgore, flat colors"),
    ({"prompt": "a blood-bath"}, (), "a blood-bath, flat colors"),
    ({"prompt": "   "}, (), "flat colors"),
    ({"prompt": "a cat", "negative_prompt": "gore"}, (), "a cat, flat colors"),
    ({"prompt": "a GORE"}, ('blocked_words: "gore"', "case_sensitive: true"), "a GORE"),
    ({"prompt": "a cat", "prompt_2": "gore"}, ('blocked_words: "gore"', 'checked_fields: "prompt"'), "a cat"),
])
def test_an_allowed_prompt_is_passed_on_styled(tmp_path: Path, body: dict[str, Any], options: tuple[str, ...],
                                               prompt: str) -> None:
    out = run(tmp_path, json_payload(body), *options)
    assert out.parsed_json["prompt"] == prompt
    assert json.loads(out.body)["prompt"] == prompt


def test_a_json_rewrite_keeps_everything_but_the_prompt(tmp_path: Path) -> None:
    body = {"prompt": "a cat", "size": "64x64", "rng_seed": 7, "guidance_scale": 3.5, "stream": True,
            "lora_alphas": {"a": 0.5}, "model": "guarded"}
    original = json_payload(body, model="alias")
    out = run(tmp_path, original)
    assert out.parsed_json == {**body, "prompt": "a cat, flat colors"}
    assert json.loads(out.body) == out.parsed_json
    assert (out.model, out.route, out.uri, out.headers) == ("alias", original.route, original.uri, original.headers)
    assert original.parsed_json["prompt"] == "a cat"  # the input packet is never modified


def test_a_multipart_rewrite_keeps_files_and_other_fields(tmp_path: Path) -> None:
    original = form_payload({"prompt": "a cat", "size": "64x64", "strength": "0.5"})
    out = run(tmp_path, original)
    assert out.multipart is not None and original.multipart is not None
    assert dict(out.multipart.fields) == {"prompt": ("a cat, flat colors",), "size": ("64x64",),
                                          "strength": ("0.5",)}
    assert dict(out.multipart.files) == {"image": (IMAGE,)}
    assert out.body == original.body
    assert original.multipart.fields["prompt"] == ("a cat",)


@pytest.mark.parametrize("payload", [
    json_payload({"prompt": 5}),
    json_payload({"size": "64x64"}),
    json_payload({"prompt": ["a", "b"], "prompt_2": {"gore": 1}}),
    form_payload({"size": "64x64"}),
    form_payload({"prompt": ("a", "b")}),
    HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"{not json", route="images/generations",
                model="guarded"),
    HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b"[1]", route="images/generations",
                model="guarded"),
    HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b'{"prompt": "x", "prompt": "gore"}',
                route="images/generations", model="guarded"),
], ids=["prompt-not-a-string", "no-prompt", "non-string-fields", "form-no-prompt", "form-two-prompts",
        "malformed-json", "json-array", "duplicate-keys-read-strictly"])
def test_what_the_guard_cannot_read_is_passed_on_untouched_for_the_next_node_to_report(
        tmp_path: Path, payload: HttpPayload) -> None:
    assert run(tmp_path, payload) is payload


def test_without_style_suffix_an_allowed_request_is_the_same_packet(tmp_path: Path) -> None:
    payload = json_payload({"prompt": "a red circle"})
    assert run(tmp_path, payload, 'blocked_words: "gore"') is payload


def test_a_body_without_parsed_json_is_read_from_the_bytes(tmp_path: Path) -> None:
    raw = HttpPayload(uri="/v3/images/generations", method="POST", headers={}, body=b'{"prompt": "gore"}',
                      route="images/generations", model="guarded")
    with pytest.raises(BadRequest, match=r'^prompt contains the blocked word "gore"$'):
        run(tmp_path, raw)


def test_words_come_from_the_file_relative_to_the_graph(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "words.txt").write_text("# comment\n\n  Weapon  \nzombie   apocalypse\n")
    options = ('blocked_words_file: "lists/words.txt"',)
    with pytest.raises(BadRequest, match=r'^prompt contains the blocked word "zombie apocalypse"$'):
        run(tmp_path, json_payload({"prompt": "a ZOMBIE apocalypse"}), *options)
    with pytest.raises(BadRequest, match=r'^prompt contains the blocked word "Weapon"$'):
        run(tmp_path, json_payload({"prompt": "a weapon"}), *options)
    assert run(tmp_path, json_payload({"prompt": "# comment"}), *options).parsed_json["prompt"] == "# comment"


L = FIRST_OPTION_LINE


@pytest.mark.parametrize(("options", "problems"), [
    (('blocked_words: "gore"', 'blocked_words: "  "'),
     [f'{L + 1}: node "guard" (PromptGuardCalculator): node_options.blocked_words[1]: a blocked word must not be '
      "empty"]),
    (('blocked_words: "gore"', 'blocked_words: "GORE"'),
     [f'{L + 1}: node "guard" (PromptGuardCalculator): node_options.blocked_words[1]: "GORE" is listed twice '
      "(first in blocked_words[0])"]),
    (('blocked_words: "gore"', 'blocked_words: "GORE"', "case_sensitive: true"), []),
    (('blocked_words: "zombie"', 'blocked_words_file: "words.txt"'),
     [f'{L + 1}: node "guard" (PromptGuardCalculator): node_options.blocked_words_file: "Zombie" on line 2 is '
      "listed twice (first in blocked_words[0])"]),
    (('blocked_words_file: "missing.txt"',),
     [f'{L}: node "guard" (PromptGuardCalculator): node_options.blocked_words_file: cannot read "missing.txt" '
      "({tmp}/missing.txt): No such file or directory"]),
    (('blocked_words: "gore"', 'checked_fields: "prompt"', 'checked_fields: "size"', 'checked_fields: "prompt"'),
     [f'{L + 2}: node "guard" (PromptGuardCalculator): node_options.checked_fields[1]: unknown request field '
      '"size"; expected one of prompt, prompt_2, prompt_3, negative_prompt, negative_prompt_2, negative_prompt_3',
      f'{L + 3}: node "guard" (PromptGuardCalculator): node_options.checked_fields[2]: "prompt" is listed twice']),
    (('style_suffix: " "',),
     [f'{L}: node "guard" (PromptGuardCalculator): node_options.style_suffix: must not be blank; remove it to '
      "leave prompts unchanged"]),
    (("case_sensitive: true",),
     [f'{L - 2}: node "guard" (PromptGuardCalculator): node_options: the node neither blocks words nor rewrites '
      "prompts; set blocked_words, blocked_words_file or style_suffix"]),
])
def test_option_problems_name_file_line_node_and_field(tmp_path: Path, options: tuple[str, ...],
                                                       problems: list[str]) -> None:
    (tmp_path / "words.txt").write_text("# more\nZombie\n")
    runner = CalculatorRunner(node_text(*options), registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    assert [str(p) for p in runner.problems()] == [f"{tmp_path}/graph.pbtxt:{p.format(tmp=tmp_path)}"
                                                  for p in problems]


def test_a_node_without_options_is_refused(tmp_path: Path) -> None:
    text = node_text('blocked_words: "x"').split("  node_options")[0] + "}\n"
    runner = CalculatorRunner(text, registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    assert [str(p) for p in runner.problems()] == [
        f'{tmp_path}/graph.pbtxt:1: node "guard" (PromptGuardCalculator): node_options: PromptGuardCalculator needs '
        "node_options { [type.googleapis.com/prompt_guard.PromptGuardCalculatorOptions]: { blocked_words: \"...\" } }"]


def test_a_word_file_that_vanished_after_the_check_fails_the_load_naming_the_node(tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("gore\n")
    runner = CalculatorRunner(node_text('blocked_words_file: "words.txt"'), registry=registry(),
                              graph_file=tmp_path / "graph.pbtxt")
    assert runner.problems() == []
    (tmp_path / "words.txt").unlink()
    with pytest.raises(ConfigError) as failed:
        runner.graph  # noqa: B018 - loading is the point
    assert str(failed.value) == (f'{tmp_path}/graph.pbtxt:{L}: node "guard" (PromptGuardCalculator): '
                                 f'node_options.blocked_words_file: cannot read "words.txt" ({tmp_path}/words.txt): '
                                 "No such file or directory")


def test_rules_are_built_once_per_node_and_shared_by_requests(tmp_path: Path) -> None:
    with CalculatorRunner(node_text(*DEFAULT), registry=registry(), graph_file=tmp_path / "graph.pbtxt") as runner:
        (rules,) = runner.graph.resources.values()
        assert rules == GuardRules(("gore", "blood bath"), False, ("prompt", "prompt_2", "prompt_3"), "flat colors")
        runner.run({"HTTP_REQUEST_PAYLOAD": json_payload({"prompt": "a"})})
        runner.run({"HTTP_REQUEST_PAYLOAD": json_payload({"prompt": "b"})})
        assert list(runner.graph.resources.values()) == [rules]
        assert runner.graph.concurrency is None  # the guard never limits how many requests run at once


# ----- packaging -----
def test_the_installed_entry_point_provides_the_calculator_and_its_options_type() -> None:
    installed = Registry.from_entry_points()
    assert installed.get("PromptGuardCalculator") is PromptGuardCalculator
    assert "prompt_guard.PromptGuardCalculatorOptions" in {t.DESCRIPTOR.full_name for t in installed.option_types()}


def test_the_example_graph_validates_with_the_installed_calculators() -> None:
    result = subprocess.run([str(OVMS_GRAPH), "validate", "--config_path", str(GUARDED_SD / "config.json")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f'{GUARDED_SD}/graph.pbtxt: graph "guarded-sd" is valid: 2 node(s) '
                             "(ImageGenCalculator, PromptGuardCalculator)\n")


def test_the_docstring_example_config_is_a_valid_graph() -> None:
    doc = prompt_guard_calculator.__doc__ or ""
    _, _, example = doc.partition("Example config:\n")
    assert example and "Example config" not in example
    text = "\n".join(line.removeprefix("    ") for line in example.splitlines())
    installed = Registry.from_entry_points()
    spec = parse_graph_text(text, Path("example.pbtxt"), installed.option_types())
    assert validate_graph(spec, installed, check_options=False) == []
    assert [n.calculator for n in spec.nodes] == ["PromptGuardCalculator", "ImageGenCalculator"]


def test_the_committed_options_module_matches_the_proto() -> None:
    result = subprocess.run([sys.executable, str(PLUGIN / "gen_proto.py"), "--check"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
