"""LoRA through the real server on the graphs/lora-* examples: every served image equals, pixel for
pixel, what openvino_genai produces itself for the same request and AdapterConfig, with the same
properties (precision and thread split) the server compiles. Tests of adapter switching, derived
pipelines and pipeline-set reuse run at f32 and at the CPU's default precision (bf16 where the CPU
plugin reports BF16)."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from calculators.image_gen.lora import STATIC_ALPHAS_MESSAGE, MergedModel
from calculators.image_gen.pipelines import compile_properties

from .conftest import EXAMPLES, PRECISIONS, SD15, Servers, adapter, direct_text2image, images

BODY: dict[str, Any] = {"prompt": "a red circle on a white background", "rng_seed": 11, "num_inference_steps": 2,
                        "size": "64x64"}
ALIASES = ("attn", "textenc", "proj")
FILES = {"attn": "a", "textenc": "b", "proj": "c"}


def error(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()["error"]
    return body


# ----- DYNAMIC: graphs/lora-dynamic (attn 1.0, textenc 0.5, proj 1.0; two pipeline sets) -----
DYNAMIC_CASES = [
    pytest.param("sd15-lora", None, {}, id="base"),
    pytest.param("attn", None, {"attn": 1.0}, id="attn"),
    pytest.param("textenc", None, {"textenc": 0.5}, id="textenc-adapter-alpha"),
    pytest.param("proj", None, {"proj": 1.0}, id="proj"),
    pytest.param("textenc", {"textenc": 0.9}, {"textenc": 0.9}, id="textenc-override"),
    pytest.param("attn", {"attn": -0.75}, {"attn": -0.75}, id="attn-negative-override"),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("model", "lora_alphas", "alphas"), DYNAMIC_CASES)
def test_dynamic_adapter_equals_openvino_genai(servers: Servers, model: str, lora_alphas: dict[str, float] | None,
                                               alphas: dict[str, float], precision: str) -> None:
    server = servers.example("lora-dynamic", precision)
    body = {**BODY, "model": model, **({"lora_alphas": lora_alphas} if lora_alphas is not None else {})}
    served = images(server.generate(body))
    res = server.resources("sd15-lora")
    props = compile_properties(res.settings, res.pool.size)  # the server's thread split, for bit-exactness
    registered = [(adapter(FILES[a]), 0.0) for a in ALIASES]
    by_alias = dict(zip(ALIASES, (pair[0] for pair in registered), strict=True))
    # the server lists every registered adapter, the active ones first and the inactive ones at 0
    every = [(by_alias[a], alpha) for a, alpha in alphas.items()] + [
        (by_alias[a], 0.0) for a in ALIASES if a not in alphas]
    expected = direct_text2image(BODY, registered, "MODE_DYNAMIC", every, properties=props)
    assert np.array_equal(served[0], expected[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_adapter_changes_the_image(servers: Servers, precision: str) -> None:
    server = servers.example("lora-dynamic", precision)
    outputs = {m: images(server.generate({**BODY, "model": m}))[0] for m in ("sd15-lora", *ALIASES)}
    names = list(outputs)
    for i, one in enumerate(names):
        for other in names[i + 1:]:
            assert not np.array_equal(outputs[one], outputs[other]), (one, other)
    # and switching back restores the base exactly (no adapter state left behind)
    assert np.array_equal(images(server.generate({**BODY, "model": "sd15-lora"}))[0], outputs["sd15-lora"])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_image_to_image_with_an_adapter_equals_openvino_genai(servers: Servers, precision: str) -> None:
    import openvino as ov
    import openvino_genai

    server = servers.example("lora-dynamic", precision)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 160, 200)).save(buffer, "PNG")
    fields = {"model": "textenc", "prompt": "a blue square", "rng_seed": "5", "num_inference_steps": "3",
              "strength": "0.6", "lora_alphas": json.dumps({"textenc": 0.8})}
    served = images(server.edit(fields, {"image": buffer.getvalue()}))
    res = server.resources("sd15-lora")
    props = compile_properties(res.settings, res.pool.size)
    registered = [(adapter(FILES[a]), 0.0) for a in ALIASES]
    pipe = openvino_genai.Image2ImagePipeline(str(SD15))
    mode = openvino_genai.AdapterConfig.Mode.MODE_DYNAMIC
    pipe.compile("CPU", adapters=openvino_genai.AdapterConfig(registered, mode), **props)
    source = ov.Tensor(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))[None].copy())
    active = openvino_genai.AdapterConfig([(registered[1][0], 0.8), (registered[0][0], 0.0), (registered[2][0], 0.0)])
    expected = np.array(pipe.generate("a blue square", source, rng_seed=5, num_inference_steps=3, strength=0.6,
                                      adapters=active).data, copy=True)
    assert np.array_equal(served[0], expected[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_concurrent_requests_for_different_adapters_equal_their_serial_results(servers: Servers,
                                                                              precision: str) -> None:
    server = servers.example("lora-dynamic", precision)
    res = server.resources("sd15-lora")
    assert res.pool.size == 2
    bodies = [{**BODY, "model": m, "rng_seed": seed} for seed, m in enumerate(
        ("attn", "textenc", "sd15-lora", "proj", "attn", "textenc", "proj", "sd15-lora"))]
    bodies[4]["lora_alphas"] = {"attn": 0.3}
    serial = [images(server.generate(b))[0] for b in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        parallel = list(pool.map(lambda b: images(server.generate(b))[0], bodies))
    for body, one, other in zip(bodies, serial, parallel, strict=True):
        assert np.array_equal(one, other), body
    assert res.pool.available == 2


REQUEST_ERRORS = [
    pytest.param({"model": "attn", "lora_alphas": {"textenc": 0.5}},
                 'lora_alphas key "textenc" is not active for model "attn" (active adapters: "attn")', id="inactive"),
    pytest.param({"model": "sd15-lora", "lora_alphas": {"attn": 0.5}},
                 'lora_alphas key "attn" is not active for model "sd15-lora": it applies no LoRA adapter (select an '
                 "adapter or composite with the model field)", id="base"),
    pytest.param({"model": "attn", "lora_alphas": [0.5]},
                 "lora_alphas must be an object mapping adapter aliases to numbers, got an array", id="array"),
    pytest.param({"model": "attn", "lora_alphas": {"attn": "high"}},
                 'lora_alphas["attn"] must be a finite number, got "high"', id="string"),
    pytest.param({"model": "attn", "lora_alphas": {"attn": False}},
                 'lora_alphas["attn"] must be a finite number, got false', id="bool"),
    pytest.param({"model": "attn", "lora_alphas": {"attn": 1e39}},
                 'lora_alphas["attn"] is out of range: 1e+39 does not fit a 32-bit float', id="float32-range"),
]


@pytest.mark.parametrize(("fields", "message"), REQUEST_ERRORS)
def test_bad_lora_alphas_is_400_naming_the_field(servers: Servers, fields: dict[str, Any], message: str) -> None:
    body = error(servers["lora-dynamic"].generate({**BODY, **fields}))
    assert body == {"message": message, "type": "invalid_request_error", "param": "lora_alphas", "code": None}


# ----- composites: graphs/lora-composite -----
COMPOSITE_CASES = [
    pytest.param("attn", None, [("attn", 0.8)], id="adapter-alpha"),
    pytest.param("mix", None, [("attn", 0.8), ("textenc", 0.5)], id="mix"),
    pytest.param("mix", {"attn": 0.3, "textenc": 1.2}, [("attn", 0.3), ("textenc", 1.2)], id="mix-overrides"),
    pytest.param("mix", {"textenc": 0.0}, [("attn", 0.8), ("textenc", 0.0)], id="mix-one-override"),
    pytest.param("contrast", None, [("textenc", 1.0), ("proj", -0.5)], id="contrast-negative-component"),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("model", "lora_alphas", "alphas"), COMPOSITE_CASES)
def test_composite_equals_openvino_genai(servers: Servers, model: str, lora_alphas: dict[str, float] | None,
                                         alphas: list[tuple[str, float]], precision: str) -> None:
    server = servers.example("lora-composite", precision)
    body = {**BODY, "model": model, **({"lora_alphas": lora_alphas} if lora_alphas is not None else {})}
    served = images(server.generate(body))
    res = server.resources("sd15-composite")
    props = compile_properties(res.settings, res.pool.size)
    registered = [(adapter(FILES[a]), 0.0) for a in ALIASES]
    by_alias = dict(zip(ALIASES, (pair[0] for pair in registered), strict=True))
    listed = [a for a, _ in alphas]  # components in their listed order, then the other adapters at 0
    every = [(by_alias[a], alpha) for a, alpha in alphas] + [(by_alias[a], 0.0) for a in ALIASES if a not in listed]
    expected = direct_text2image(BODY, registered, "MODE_DYNAMIC", every, properties=props)
    assert np.array_equal(served[0], expected[0])


def test_composite_rejects_keys_outside_it(servers: Servers) -> None:
    body = error(servers["lora-composite"].generate({**BODY, "model": "mix", "lora_alphas": {"proj": 1}}))
    assert body["message"] == ('lora_alphas key "proj" is not active for model "mix" '
                               '(active adapters: "attn", "textenc")')
    assert body["param"] == "lora_alphas"


# ----- STATIC: graphs/lora-static -----
def test_static_composite_equals_openvino_genai_mode_static(servers: Servers) -> None:
    served = images(servers["lora-static"].generate({**BODY, "model": "styled"}))
    expected = direct_text2image(BODY, [(adapter("a"), 0.7), (adapter("b"), 0.25)], "MODE_STATIC")
    assert np.array_equal(served[0], expected[0])
    base = direct_text2image(BODY, [], "MODE_DYNAMIC")
    assert not np.array_equal(served[0], base[0])


def test_static_hides_the_base_and_rejects_lora_alphas(servers: Servers) -> None:
    server = servers["lora-static"]
    assert error(server.generate({**BODY, "model": "sd15-static-lora"})) == {
        "message": 'model "sd15-static-lora" cannot be used directly: its adapters are compiled in; use "styled"',
        "type": "invalid_request_error", "param": "model", "code": "model_not_routable"}
    assert error(server.generate({**BODY, "model": "styled", "lora_alphas": {"attn": 0.5}})) == {
        "message": STATIC_ALPHAS_MESSAGE, "type": "invalid_request_error", "param": "lora_alphas", "code": None}
    assert STATIC_ALPHAS_MESSAGE == ("lora_alphas is not supported for STATIC LoRA adapters: alphas are baked in at "
                                     "compile time and cannot be overridden per request")
    for component in ("attn", "textenc"):  # SPEC §9: a STATIC component alias is not routable
        assert error(server.generate({**BODY, "model": component})) == {
            "message": f'model "{component}" cannot be used directly: it is compiled into STATIC composite '
                       '"styled"; use "styled"', "type": "invalid_request_error", "param": "model",
            "code": "model_not_routable"}


def test_static_model_field_may_be_omitted(servers: Servers) -> None:
    server = servers["lora-static"]
    assert np.array_equal(images(server.generate(BODY))[0], images(server.generate({**BODY, "model": "styled"}))[0])


# ----- FUSE + DYNAMIC: graphs/lora-fuse-dynamic -----
def test_fused_base_equals_openvino_genai_mode_fuse(servers: Servers) -> None:
    served = images(servers["lora-fuse-dynamic"].generate({**BODY, "model": "sd15-fused"}))
    expected = direct_text2image(BODY, [(adapter("c"), 0.8)], "MODE_FUSE")
    assert np.array_equal(served[0], expected[0])
    plain = direct_text2image(BODY, [], "MODE_DYNAMIC")
    assert not np.array_equal(served[0], plain[0]), "the fused adapter changed nothing"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(("model", "lora_alphas", "alphas"), [
    pytest.param("attn", None, [("attn", 1.0)], id="attn"),
    pytest.param("textenc", None, [("textenc", 0.6)], id="textenc"),
    pytest.param("textenc", {"textenc": 1.5}, [("textenc", 1.5)], id="textenc-override"),
])
def test_dynamic_on_top_of_fuse_equals_openvino_genai_with_both(servers: Servers, tmp_path: Path, model: str,
                                                                lora_alphas: dict[str, float] | None,
                                                                alphas: list[tuple[str, float]],
                                                                precision: str) -> None:
    server = servers.example("lora-fuse-dynamic", precision)
    body = {**BODY, "model": model, **({"lora_alphas": lora_alphas} if lora_alphas is not None else {})}
    served = images(server.generate(body))
    res = server.resources("sd15-fused")
    props = compile_properties(res.settings, res.pool.size)
    merged = MergedModel.build(SD15, [(SD15.parent / "loras" / "lora_c.safetensors", 0.8)])
    try:
        # the merged weights are MODE_FUSE's, bit for bit ...
        fused_only = direct_text2image(BODY, [], "MODE_DYNAMIC", models=merged.path)
        assert np.array_equal(fused_only, direct_text2image(BODY, [(adapter("c"), 0.8)], "MODE_FUSE"))
        # ... and the DYNAMIC adapter switches on top of them
        registered = [(adapter("a"), 0.0), (adapter("b"), 0.0)]
        by_alias = {"attn": registered[0][0], "textenc": registered[1][0]}
        listed = [a for a, _ in alphas]
        every = [(by_alias[a], alpha) for a, alpha in alphas] + [
            (by_alias[a], 0.0) for a in ("attn", "textenc") if a not in listed]
        expected = direct_text2image(BODY, registered, "MODE_DYNAMIC", every, models=merged.path, properties=props)
    finally:
        merged.remove()
    assert np.array_equal(served[0], expected[0])
    without_fuse = direct_text2image(BODY, registered, "MODE_DYNAMIC", every, properties=props)
    assert not np.array_equal(served[0], without_fuse[0]), "the fused adapter is not under the dynamic one"


def test_fuse_alias_is_neither_routable_nor_overridable(servers: Servers) -> None:
    server = servers["lora-fuse-dynamic"]
    response = server.generate({**BODY, "model": "base_style"})
    assert response.status_code == 404, response.text
    assert requests.get(f"{server.url}/v3/models/base_style", timeout=60).status_code == 404
    body = error(server.generate({**BODY, "model": "attn", "lora_alphas": {"base_style": 0.1}}))
    assert body["message"] == 'lora_alphas key "base_style" is not active for model "attn" (active adapters: "attn")'


# ----- listing (SPEC §9) -----
@pytest.mark.parametrize(("example", "listed"), [
    ("lora-dynamic", ["sd15-lora", "attn", "textenc", "proj"]),
    ("lora-composite", ["sd15-composite", "attn", "textenc", "proj", "mix", "contrast"]),
    ("lora-static", ["styled"]),
    ("lora-fuse-dynamic", ["sd15-fused", "attn", "textenc"]),
])
def test_v3_models_lists_exactly_the_routable_names(servers: Servers, example: str, listed: list[str]) -> None:
    server = servers[example]
    assert sorted(server.models()) == sorted(listed)
    for name in listed:
        response = requests.get(f"{server.url}/v3/models/{name}", timeout=60)
        assert response.status_code == 200 and response.json()["id"] == name


def test_every_example_config_names_models_relative_to_its_graph() -> None:
    for example in ("lora-dynamic", "lora-composite", "lora-static", "lora-fuse-dynamic"):
        text = (EXAMPLES / example / "graph.pbtxt").read_text()
        assert 'models_path: "../../models/tiny/sd15"' in text
        assert "/work/" not in text and '"/' not in text
        json.loads((EXAMPLES / example / "config.json").read_text())


# ----- derived pipelines and one pipeline set reused across configurations -----
@pytest.mark.parametrize("precision", PRECISIONS)
def test_lora_then_plain_edit_then_lora_is_not_blank(servers: Servers, precision: str) -> None:
    """A LoRA request, a plain edit on the derived image-to-image pipeline, the LoRA again: the
    active-adapters-only scheme drew all-black images here at bf16."""
    server = servers.example("lora-dynamic", precision)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 60)).save(buffer, "PNG")
    lora_body = {**BODY, "model": "attn"}
    first = images(server.generate(lora_body))[0]
    edited = images(server.edit({"model": "sd15-lora", "prompt": "a square", "rng_seed": "1",
                                 "num_inference_steps": "2", "strength": "0.7"}, {"image": buffer.getvalue()}))[0]
    again = images(server.generate(lora_body))[0]
    for image in (first, edited, again):
        assert image.std() > 2.0, "blank image"
    assert np.array_equal(first, again)
    assert not np.array_equal(first, images(server.generate({**BODY, "model": "sd15-lora"}))[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_any_sequence_of_configurations_reproduces_each_one(servers: Servers, precision: str) -> None:
    # One pipeline set, so every request changes the same set's adapter state: same adapters with other
    # weights, fewer adapters, back again. OpenVINO GenAI's weights-only update path got both wrong.
    server = servers.example("lora-composite", precision)
    assert server.resources("sd15-composite").pool.size == 1
    sequence = [("mix", None), ("mix", {"attn": 0.3}), ("mix", None), ("contrast", None), ("mix", {"textenc": 0.2}),
                ("attn", None), ("mix", {"attn": 0.3}), ("sd15-composite", None), ("mix", None)]
    first: dict[str, np.ndarray] = {}
    for model, alphas in sequence:
        body = {**BODY, "model": model, **({"lora_alphas": alphas} if alphas else {})}
        image = images(server.generate(body))[0]
        key = json.dumps([model, alphas])
        if key in first:
            assert np.array_equal(image, first[key]), key
        first[key] = image
    assert len({v.tobytes() for v in first.values()}) == len(first), "two configurations drew the same image"
