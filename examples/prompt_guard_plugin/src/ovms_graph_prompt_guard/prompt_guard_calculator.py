"""PromptGuardCalculator: refuse prompts with blocked words, and optionally add a style to every prompt.

It sits on the request stream in front of ImageGenCalculator. Each request's ``HttpPayload`` comes in
on ``HTTP_REQUEST_PAYLOAD`` and goes out on ``HTTP_REQUEST_PAYLOAD``, either unchanged or with its
prompt rewritten. If a checked field contains a blocked word, the request ends with a 400 that names
the field: ``{"error": {"message": "prompt contains the blocked word \\"gore\\"", "param": "prompt",
"code": "blocked_word", ...}}``. Both routes are covered: JSON (``images/generations``) and multipart
(``images/edits``).

Blocked words match whole words, ignoring case unless ``case_sensitive`` is set. Whitespace inside a
phrase matches any run of whitespace. When ``style_suffix`` is set, it is appended to ``prompt``
after ", ". A field that is missing or not a string is passed on untouched, so the calculator
downstream reports it with its usual message.

At load, the options are checked and turned into a ``GuardRules`` value once (the word list file is
read and the matcher compiled). That value reaches every request as the ``GUARD_RULES`` side packet.

Options (``prompt_guard.PromptGuardCalculatorOptions``): blocked_words, blocked_words_file
(relative to the graph's folder), case_sensitive, checked_fields (default prompt, prompt_2,
prompt_3), style_suffix.

Example config:

    input_stream: "HTTP_REQUEST_PAYLOAD:input"
    output_stream: "HTTP_RESPONSE_PAYLOAD:output"

    node: {
      name: "PromptGuard"
      calculator: "PromptGuardCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:input"
      input_side_packet: "GUARD_RULES:guard_rules"
      output_stream: "HTTP_REQUEST_PAYLOAD:guarded"
      node_options: {
        [type.googleapis.com / prompt_guard.PromptGuardCalculatorOptions]: {
          blocked_words: "gore"
          blocked_words: "blood bath"
          blocked_words_file: "blocked_words.txt"
          style_suffix: "watercolor, soft light"
        }
      }
    }

    node: {
      name: "ImageGenExecutor"
      calculator: "ImageGenCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:guarded"
      input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
      output_stream: "HTTP_RESPONSE_PAYLOAD:output"
      node_options: {
        [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
          models_path: "./"
        }
      }
    }
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from ovms_graph.calculator import Calculator, CalculatorContext, LoadContext, NodeIssue, Port
from ovms_graph.errors import BadRequest, ConfigError, Problem
from ovms_graph.graph_config import NodeSpec
from ovms_graph.json_body import loads_strict
from ovms_graph.packets import HttpPayload, MultipartView

from ovms_graph_prompt_guard.prompt_guard_calculator_pb2 import PromptGuardCalculatorOptions

REQUEST = "HTTP_REQUEST_PAYLOAD"
RULES = "GUARD_RULES"
#: Request fields that hold text a model reads: the ones a guard may check.
TEXT_FIELDS = ("prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")
DEFAULT_CHECKED_FIELDS = ("prompt", "prompt_2", "prompt_3")
SUFFIX_SEPARATOR = ", "
OPTIONS_TYPE_URL = f"type.googleapis.com/{PromptGuardCalculatorOptions.DESCRIPTOR.full_name}"


@dataclass(frozen=True)
class GuardRules:
    """What one node enforces: blocked words, the fields searched for them, and the style suffix.

    Built once per node at load (``PromptGuardCalculator.create_resources``). Immutable and
    thread-safe, so concurrent requests share one instance.
    """

    words: tuple[str, ...] = ()
    case_sensitive: bool = False
    checked_fields: tuple[str, ...] = DEFAULT_CHECKED_FIELDS
    style_suffix: str = ""
    _pattern: re.Pattern[str] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.words:
            # Longest first, so "blood bath" is reported rather than a shorter word inside it.
            phrases = sorted(self.words, key=len, reverse=True)
            body = "|".join(r"\s+".join(re.escape(part) for part in phrase.split()) for phrase in phrases)
            flags = 0 if self.case_sensitive else re.IGNORECASE
            object.__setattr__(self, "_pattern", re.compile(rf"(?<!\w)(?:{body})(?!\w)", flags))

    def blocked_word(self, text: str) -> str | None:
        """The configured blocked word that ``text`` contains (the first one found), or None."""
        if self._pattern is None:
            return None
        found = self._pattern.search(text)
        if found is None:
            return None
        spoken = " ".join(found.group(0).split())
        for word in self.words:
            if spoken == word or (not self.case_sensitive and spoken.lower() == word.lower()):
                return word
        return spoken

    def check(self, name: str, value: str) -> None:
        """Raise BadRequest naming field ``name`` when ``value`` contains a blocked word."""
        word = self.blocked_word(value)
        if word is not None:
            raise BadRequest(f'{name} contains the blocked word "{word}"', param=name, code="blocked_word")

    def styled(self, prompt: str) -> str:
        """``prompt`` with the style suffix appended (just the suffix for a blank prompt)."""
        if not self.style_suffix:
            return prompt
        return f"{prompt}{SUFFIX_SEPARATOR}{self.style_suffix}" if prompt.strip() else self.style_suffix

    def apply(self, payload: HttpPayload) -> HttpPayload:
        """The payload to pass on: the same one, or a copy whose prompt is styled.

        Raises BadRequest naming the field when a checked field contains a blocked word. A JSON
        request gets both ``parsed_json`` and ``body`` rewritten. A multipart request gets its
        ``multipart`` view rewritten, while ``body`` keeps the bytes as received, because readers of
        an edit use the parsed parts.
        """
        if payload.multipart is not None:
            return self._apply_multipart(payload, payload.multipart)
        body = payload.parsed_json
        if body is None and payload.body:
            try:
                body = loads_strict(payload.body)  # the runtime's one JSON parser, same rules as the front end
            except (ValueError, RecursionError):
                return payload  # malformed JSON is the next calculator's to report
        if not isinstance(body, dict):
            return payload
        for name in self.checked_fields:
            value = body.get(name)
            if isinstance(value, str):
                self.check(name, value)
        prompt = body.get("prompt")
        if not self.style_suffix or not isinstance(prompt, str):
            return payload
        rewritten = {**body, "prompt": self.styled(prompt)}
        return dataclasses.replace(payload, parsed_json=rewritten,
                                   body=json.dumps(rewritten, ensure_ascii=False).encode())

    def _apply_multipart(self, payload: HttpPayload, form: MultipartView) -> HttpPayload:
        for name in self.checked_fields:
            for value in form.fields.get(name, ()):
                self.check(name, value)
        prompts = form.fields.get("prompt", ())
        if not self.style_suffix or len(prompts) != 1:
            return payload  # no prompt, or several: the next calculator reports it
        fields = {**form.fields, "prompt": (self.styled(prompts[0]),)}
        return dataclasses.replace(payload, multipart=MultipartView(fields=fields, files=form.files))


def read_rules(options: Message | None, ctx: LoadContext) -> tuple[GuardRules | None, list[NodeIssue]]:
    """The node's rules, or None and every problem with its options. Never raises on bad options."""
    if not isinstance(options, PromptGuardCalculatorOptions):
        return None, [NodeIssue(f"PromptGuardCalculator needs node_options {{ [{OPTIONS_TYPE_URL}]: "
                                '{ blocked_words: "..." } }', field="node_options")]
    issues: list[NodeIssue] = []

    def issue(fld: str, message: str) -> None:
        issues.append(NodeIssue(message, field=f"node_options.{fld}"))

    words: list[str] = []
    first_seen: dict[str, str] = {}

    def add(word: str, fld: str, where: str) -> None:
        normal = " ".join(word.split())
        key = normal if options.case_sensitive else normal.lower()
        if not normal:
            issue(fld, "a blocked word must not be empty")
        elif key in first_seen:
            issue(fld, f'"{normal}"{where} is listed twice (first in {first_seen[key]})')
        else:
            first_seen[key] = fld + where
            words.append(normal)

    for index, word in enumerate(options.blocked_words):
        add(word, f"blocked_words[{index}]", "")
    if options.HasField("blocked_words_file"):
        path = ctx.resolve_path(options.blocked_words_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            issue("blocked_words_file", f'cannot read "{options.blocked_words_file}" ({path}): {reason}')
        else:
            for number, line in enumerate(lines, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    add(line, "blocked_words_file", f" on line {number}")

    checked: list[str] = []
    for index, name in enumerate(options.checked_fields):
        if name not in TEXT_FIELDS:
            issue(f"checked_fields[{index}]", f'unknown request field "{name}"; expected one of '
                                              + ", ".join(TEXT_FIELDS))
        elif name in checked:
            issue(f"checked_fields[{index}]", f'"{name}" is listed twice')
        else:
            checked.append(name)

    suffix = options.style_suffix.strip()
    if options.HasField("style_suffix") and not suffix:
        issue("style_suffix", "must not be blank; remove it to leave prompts unchanged")
    if not issues and not words and not suffix:
        issues.append(NodeIssue("the node neither blocks words nor rewrites prompts; set blocked_words, "
                                "blocked_words_file or style_suffix", field="node_options"))
    if issues:
        return None, issues
    return GuardRules(tuple(words), options.case_sensitive, tuple(checked) or DEFAULT_CHECKED_FIELDS, suffix), []


class PromptGuardCalculator(Calculator):
    """Refuses requests whose prompts contain blocked words and appends a style to the prompt."""

    inputs = (Port(REQUEST, HttpPayload, "the request, as the front end decoded it"),)
    outputs = (Port(REQUEST, HttpPayload, "the same request, its prompt styled, unless it was refused"),)
    input_side_packets = (Port(RULES, GuardRules, "the node's rules, built once when the graph loads"),)
    options_types = (PromptGuardCalculatorOptions,)
    resources_port = RULES

    # ----- load time -----
    @classmethod
    def check_options(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Iterable[NodeIssue]:
        """Every problem with the options, the word list file included."""
        return read_rules(options, ctx)[1]

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> GuardRules:
        """The node's rules (read_rules again: the word file may have changed since the check)."""
        rules, issues = read_rules(options, ctx)
        if rules is None:
            raise ConfigError([Problem(i.message, field=i.field) for i in issues])
        return rules

    # ----- request time -----
    def __init__(self, node: NodeSpec, side_packets: Mapping[str, Any]) -> None:
        super().__init__(node, side_packets)
        self._rules: GuardRules = side_packets[RULES]

    def process(self, cc: CalculatorContext) -> None:
        cc.emit(REQUEST, self._rules.apply(cc.inputs[REQUEST]))
