"""Per-request LoRA selection: routing, alpha precedence and every lora_alphas error, exact messages."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from calculators.image_gen.lora import STATIC_ALPHAS_MESSAGE, LoraPlan
from ovms_graph.calculator import Alias
from ovms_graph.errors import BadRequest

from .helpers import load_context, options

DYNAMIC = """
  lora_adapters { alias: "fused" path: "f.safetensors" alpha: 0.9 mode: FUSE }
  lora_adapters { alias: "a" path: "a.safetensors" }
  lora_adapters { alias: "b" path: "b.safetensors" alpha: 0.25 }
  lora_adapters { alias: "c" path: "c.safetensors" alpha: 0.5 }
  composite_lora_adapters { alias: "mix" components { adapter_alias: "b" }
                            components { adapter_alias: "a" alpha: 0.75 } }
  composite_lora_adapters { alias: "neg" components { adapter_alias: "c" } }
"""
STATIC_ONE = 'lora_adapters { alias: "s" path: "s.safetensors" alpha: 0.5 mode: STATIC }'
STATIC_MANY = """
  lora_adapters { alias: "s1" path: "s1.safetensors" alpha: 0.5 mode: STATIC }
  lora_adapters { alias: "s2" path: "s2.safetensors" mode: STATIC }
  composite_lora_adapters { alias: "both" components { adapter_alias: "s2" alpha: 0.25 }
                            components { adapter_alias: "s1" } }
"""


def plan(body: str, tmp_path: Path) -> LoraPlan:
    return LoraPlan.from_options(options('models_path: "m" ' + body), load_context(tmp_path))


PRECEDENCE = [
    pytest.param(DYNAMIC, "sd", None, {}, id="base-no-adapter"),
    pytest.param(DYNAMIC, "unknown-name", None, {}, id="other-name-is-base"),
    pytest.param(DYNAMIC, "fused", None, {}, id="fuse-alias-is-not-routable"),
    pytest.param(DYNAMIC, "a", None, {"a": 1.0}, id="adapter-default-1"),
    pytest.param(DYNAMIC, "b", None, {"b": 0.25}, id="adapter-alpha"),
    pytest.param(DYNAMIC, "b", {"b": 0.5}, {"b": 0.5}, id="request-beats-adapter"),
    pytest.param(DYNAMIC, "b", {"b": -1.5}, {"b": -1.5}, id="negative-allowed"),
    pytest.param(DYNAMIC, "b", {"b": 2}, {"b": 2.0}, id="integer-allowed"),
    pytest.param(DYNAMIC, "b", {}, {"b": 0.25}, id="empty-object"),
    pytest.param(DYNAMIC, "mix", None, {"b": 0.25, "a": 0.75}, id="composite-component-beats-adapter"),
    pytest.param(DYNAMIC, "mix", {"a": 0.1}, {"b": 0.25, "a": 0.1}, id="request-beats-component"),
    pytest.param(DYNAMIC, "mix", {"a": 0, "b": 3}, {"b": 3.0, "a": 0.0}, id="request-overrides-both"),
    pytest.param(DYNAMIC, "neg", None, {"c": 0.5}, id="composite-default-component-uses-adapter"),
    pytest.param(STATIC_ONE, "s", None, {"s": 0.5}, id="static-one"),
    pytest.param(STATIC_MANY, "both", None, {"s2": 0.25, "s1": 0.5}, id="static-composite"),
]


@pytest.mark.parametrize(("body", "model", "lora_alphas", "expected"), PRECEDENCE)
def test_alpha_precedence_request_composite_adapter_default(tmp_path: Path, body: str, model: str,
                                                           lora_alphas: object, expected: dict[str, float]) -> None:
    resolved = plan(body, tmp_path).resolve_alphas(model, lora_alphas)
    assert resolved == expected
    assert list(resolved) == list(expected), "components apply in the order they are listed"


REQUEST_ERRORS = [
    pytest.param(DYNAMIC, "a", [1], "lora_alphas must be an object mapping adapter aliases to numbers, got an array",
                 id="array"),
    pytest.param(DYNAMIC, "a", "a=1", "lora_alphas must be an object mapping adapter aliases to numbers, got a string",
                 id="string"),
    pytest.param(DYNAMIC, "a", 0.5, "lora_alphas must be an object mapping adapter aliases to numbers, got a number",
                 id="number"),
    pytest.param(DYNAMIC, "a", True, "lora_alphas must be an object mapping adapter aliases to numbers, got a boolean",
                 id="boolean"),
    pytest.param(DYNAMIC, "a", {"b": 0.5},
                 'lora_alphas key "b" is not active for model "a" (active adapters: "a")', id="other-adapter"),
    pytest.param(DYNAMIC, "mix", {"a": 0.5, "c": 1},
                 'lora_alphas key "c" is not active for model "mix" (active adapters: "b", "a")',
                 id="not-in-composite"),
    pytest.param(DYNAMIC, "mix", {"mix": 0.5},
                 'lora_alphas key "mix" is not active for model "mix" (active adapters: "b", "a")',
                 id="composite-alias-as-key"),
    pytest.param(DYNAMIC, "sd", {"a": 0.5},
                 'lora_alphas key "a" is not active for model "sd": it applies no LoRA adapter (select an adapter '
                 "or composite with the model field)", id="base"),
    pytest.param(DYNAMIC, "a", {"fused": 0.5},
                 'lora_alphas key "fused" is not active for model "a" (active adapters: "a")',
                 id="fuse-not-overridable"),
    pytest.param(DYNAMIC, "a", {"a": "0.5"}, 'lora_alphas["a"] must be a finite number, got "0.5"', id="string-alpha"),
    pytest.param(DYNAMIC, "a", {"a": True}, 'lora_alphas["a"] must be a finite number, got true', id="bool-alpha"),
    pytest.param(DYNAMIC, "a", {"a": None}, 'lora_alphas["a"] must be a finite number, got null', id="null-alpha"),
    pytest.param(DYNAMIC, "a", {"a": [1]}, 'lora_alphas["a"] must be a finite number, got [1]', id="array-alpha"),
    pytest.param(DYNAMIC, "a", {"a": math.nan}, 'lora_alphas["a"] must be a finite number, got nan', id="nan"),
    pytest.param(DYNAMIC, "a", {"a": math.inf}, 'lora_alphas["a"] must be a finite number, got inf', id="inf"),
    pytest.param(DYNAMIC, "a", {"a": -math.inf}, 'lora_alphas["a"] must be a finite number, got -inf', id="-inf"),
    pytest.param(STATIC_ONE, "s", {"s": 0.5}, STATIC_ALPHAS_MESSAGE, id="static"),
    pytest.param(STATIC_ONE, "s", {}, STATIC_ALPHAS_MESSAGE, id="static-empty-object"),
    pytest.param(STATIC_MANY, "both", {"s1": 1}, STATIC_ALPHAS_MESSAGE, id="static-composite"),
]


@pytest.mark.parametrize(("body", "model", "lora_alphas", "message"), REQUEST_ERRORS)
def test_bad_lora_alphas_is_400_naming_the_key(tmp_path: Path, body: str, model: str, lora_alphas: object,
                                               message: str) -> None:
    with pytest.raises(BadRequest) as info:
        plan(body, tmp_path).generate_kwargs(model, lora_alphas)
    assert info.value.message == message
    assert info.value.param == "lora_alphas"


def test_static_message_keeps_the_reference_wording() -> None:
    assert STATIC_ALPHAS_MESSAGE.endswith(
        "alphas are baked in at compile time and cannot be overridden per request")


def static_hint(composite: str) -> str:
    return f'it is compiled into STATIC composite "{composite}"; use "{composite}"'


ROUTES = [
    pytest.param("", [], True, id="no-lora"),
    pytest.param(DYNAMIC, [Alias("fused", "fuse", listed=False), Alias("a", "lora"), Alias("b", "lora"),
                           Alias("c", "lora"), Alias("mix", "composite"), Alias("neg", "composite")],
                 True, id="dynamic-fuse-unlisted"),
    pytest.param('lora_adapters { alias: "fused" path: "f.safetensors" mode: FUSE }',
                 [Alias("fused", "fuse", listed=False)], True, id="fuse-only"),
    pytest.param(STATIC_ONE, [Alias("s", "lora")], False, id="static-one"),
    pytest.param(STATIC_MANY, [Alias("s1", "lora", listed=False, not_routable_hint=static_hint("both")),
                               Alias("s2", "lora", listed=False, not_routable_hint=static_hint("both")),
                               Alias("both", "composite")], False, id="static-composite-only"),
    pytest.param('lora_adapters { alias: "s" path: "s.safetensors" mode: STATIC }'
                 'composite_lora_adapters { alias: "c" components { adapter_alias: "s" alpha: 0.5 } }',
                 [Alias("s", "lora", listed=False, not_routable_hint=static_hint("c")), Alias("c", "composite")],
                 False, id="static-one-with-composite"),
]


@pytest.mark.parametrize(("body", "aliases", "base_routable"), ROUTES)
def test_routes_registered_with_the_front_end(tmp_path: Path, body: str, aliases: list[Alias],
                                              base_routable: bool) -> None:
    ctx = load_context(tmp_path)
    p = plan(body, tmp_path)
    p.register_routes(ctx)
    assert ctx.aliases == aliases
    assert ctx.base_routable is base_routable
    assert p.routable_names() == [a.name for a in aliases if a.listed]


def test_no_lora_means_no_pipeline_arguments(tmp_path: Path) -> None:
    p = plan("", tmp_path)
    assert p.empty
    assert p.compile_kwargs() == {}
    assert p.generate_kwargs("sd", None) == {}
    with pytest.raises(BadRequest) as info:
        p.generate_kwargs("sd", {"x": 1})
    assert info.value.message == ('lora_alphas key "x" is not active for model "sd": it applies no LoRA adapter '
                                  "(select an adapter or composite with the model field)")


# ----- what reaches openvino_genai (real adapter files, nothing compiled) -----
def tiny_plan(body: str) -> LoraPlan:
    from .conftest import LORAS, SD15, require_tiny_loras

    require_tiny_loras()
    text = body.replace("@", str(LORAS) + "/")
    return LoraPlan.from_options(options(f'models_path: "{SD15}" ' + text), load_context(LORAS))


TINY_DYNAMIC = """
  lora_adapters { alias: "f" path: "@lora_c.safetensors" alpha: 0.8 mode: FUSE }
  lora_adapters { alias: "a" path: "@lora_a.safetensors" }
  lora_adapters { alias: "b" path: "@lora_b.safetensors" alpha: 0.25 }
  composite_lora_adapters { alias: "mix" components { adapter_alias: "b" }
                            components { adapter_alias: "a" alpha: 0.5 } }
"""


def alphas_of(kwargs: dict[str, Any]) -> list[float]:
    return [round(alpha, 6) for _, alpha in kwargs["adapters"].get_adapters_and_alphas()]


def named(plan: LoraPlan, config: Any) -> list[tuple[str, float]]:
    """An AdapterConfig as (alias, alpha) pairs, in order: the marker registered at compile time is
    "sentinel", any other adapter that is not a configured one "marker"."""
    import openvino_genai

    known = dict(plan._adapters())
    out = []
    for adapter, alpha in config.get_adapters_and_alphas():
        probe = openvino_genai.AdapterConfig([(adapter, 0.0)])
        name = "marker"
        for alias, candidate in known.items():
            try:
                probe.get_alpha(candidate)
            except RuntimeError:
                continue
            name = "sentinel" if alias.startswith("\x00") else alias
            break
        out.append((name, round(alpha, 6)))
    return out


@pytest.mark.parametrize(("model", "lora_alphas", "expected"), [
    pytest.param("sd", None, [("f", 0.8), ("a", 0.0), ("b", 0.0), ("sentinel", 0.0)], id="base: all at zero"),
    pytest.param("a", None, [("f", 0.8), ("a", 1.0), ("b", 0.0), ("marker", 0.0)], id="adapter"),
    pytest.param("b", None, [("f", 0.8), ("b", 0.25), ("a", 0.0), ("marker", 0.0)], id="active first"),
    pytest.param("mix", None, [("f", 0.8), ("b", 0.25), ("a", 0.5), ("marker", 0.0)], id="composite in listed order"),
    pytest.param("mix", {"a": -2}, [("f", 0.8), ("b", 0.25), ("a", -2.0), ("marker", 0.0)], id="override"),
    pytest.param("a", {"a": 0}, [("f", 0.8), ("a", 0.0), ("b", 0.0), ("sentinel", 0.0)], id="alpha 0 is the base"),
])
def test_requests_pass_every_dynamic_adapter_then_a_marker(model: str, lora_alphas: object,
                                                           expected: list[tuple[str, float]]) -> None:
    """Every registered DYNAMIC adapter on every request (inactive ones at alpha 0): listing only the
    active ones gives all-black images at bf16 on derived pipelines (docs/lora.md)."""
    plan = tiny_plan(TINY_DYNAMIC)
    assert named(plan, plan.generate_kwargs(model, lora_alphas)["adapters"]) == expected


def test_a_request_sequence_passes_the_same_marker_for_the_same_configuration_only() -> None:
    """What generate receives for a sequence of requests: which adapters, which alphas, which marker."""
    plan = tiny_plan(TINY_DYNAMIC)
    sequence = [("a", None), ("sd", None), ("a", None), ("a", {"a": 0.5}), ("mix", None), ("sd", None),
                ("mix", {"a": 0.5}), ("b", None), ("a", {"a": 0.5})]
    configs = [plan.generate_kwargs(model, alphas)["adapters"] for model, alphas in sequence]
    markers = [config.get_adapters()[-1] for config in configs]

    def same_marker(i: int, j: int) -> bool:
        try:
            configs[j].get_alpha(markers[i])
        except RuntimeError:
            return False
        return True

    groups = [[j for j in range(len(sequence)) if same_marker(i, j)] for i in range(len(sequence))]
    assert groups == [[0, 2], [1, 5], [0, 2], [3, 8], [4, 6], [1, 5], [4, 6], [7], [3, 8]]
    assert [len(config.get_adapters()) for config in configs] == [4] * len(sequence)


def test_compile_registers_every_dynamic_adapter_at_zero() -> None:
    plan = tiny_plan(TINY_DYNAMIC)
    assert alphas_of(plan.compile_kwargs()) == [0.8, 0.0, 0.0, 0.0]


def test_one_marker_per_configuration() -> None:
    plan = tiny_plan(TINY_DYNAMIC)

    def marker(model: str, lora_alphas: object = None) -> Any:
        return plan.generate_kwargs(model, lora_alphas)["adapters"].get_adapters()[-1]

    def same(one: Any, other_model: str, other_alphas: object = None) -> bool:
        try:
            plan.generate_kwargs(other_model, other_alphas)["adapters"].get_alpha(one)
        except RuntimeError:
            return False
        return True

    assert same(marker("mix"), "mix")
    assert same(marker("mix", {"a": 0.5}), "mix"), "the same weights are the same configuration"
    assert not same(marker("mix"), "mix", {"a": 0.4})
    assert not same(marker("a"), "b")
    assert same(marker("sd"), "sd") and not same(marker("sd"), "a")


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param('lora_adapters { alias: "f" path: "@lora_c.safetensors" alpha: 0.8 mode: FUSE }', [0.8],
                 id="fuse-only"),
    pytest.param('lora_adapters { alias: "s1" path: "@lora_a.safetensors" alpha: 0.7 mode: STATIC }'
                 'lora_adapters { alias: "s2" path: "@lora_b.safetensors" mode: STATIC }'
                 'composite_lora_adapters { alias: "c" components { adapter_alias: "s1" } '
                 'components { adapter_alias: "s2" alpha: 0.25 } }', [0.7, 0.25], id="static-composite"),
])
def test_fixed_modes_compile_their_alphas_and_pass_nothing_per_request(body: str, expected: list[float]) -> None:
    plan = tiny_plan(body)
    assert alphas_of(plan.compile_kwargs()) == expected
    assert plan.generate_kwargs(plan.routable_names()[0] if plan.is_static else "sd", None) == {}


def test_fuse_under_dynamic_is_merged_once_model_dir_is_asked() -> None:
    from .conftest import SD15

    plan = tiny_plan(TINY_DYNAMIC)
    merged = plan.model_dir(SD15)
    try:
        assert merged != SD15 and (merged / "unet" / "openvino_model.xml").is_file()
        assert not (merged / "unet" / "openvino_model.xml").is_symlink()
        assert (merged / "text_encoder").is_symlink(), "lora_c touches the UNet only"
        assert plan.model_dir(SD15) == merged
        assert alphas_of(plan.compile_kwargs()) == [0.0, 0.0, 0.0]
        assert alphas_of(plan.generate_kwargs("a", None)) == [1.0, 0.0, 0.0]
    finally:
        plan.close()
    assert not merged.exists()
