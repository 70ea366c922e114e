"""Load-time LoRA rules: every problem LoraPlan.check reports, with the exact message and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from calculators.image_gen.lora import LoraMode, LoraPlan, diffusers_layer_name, read_lora_file
from ovms_graph.calculator import NodeIssue

from .helpers import KOHYA_TE, KOHYA_UNET, fake_model, kohya_lora, load_context, options, write_safetensors

A = 'lora_adapters { alias: "a" path: "loras/a.safetensors" }'
B = 'lora_adapters { alias: "b" path: "loras/b.safetensors" }'


@pytest.fixture
def gdir(tmp_path: Path) -> Path:
    """A graph folder with a model skeleton and adapters: a (UNet), b (text encoder), c (both)."""
    fake_model(tmp_path / "model")
    kohya_lora(tmp_path / "loras" / "a.safetensors", KOHYA_UNET)
    kohya_lora(tmp_path / "loras" / "b.safetensors", KOHYA_TE)
    kohya_lora(tmp_path / "loras" / "c.safetensors", KOHYA_UNET, KOHYA_TE)
    return tmp_path


def check(gdir: Path, body: str, graph_name: str = "sd") -> list[tuple[str | None, str]]:
    opts = options('models_path: "model" ' + body)
    return [(i.field, i.message) for i in LoraPlan.check(opts, load_context(gdir, graph_name))]


VALID = [
    pytest.param("", id="no-lora"),
    pytest.param(A + B, id="dynamic"),
    pytest.param(A + B + 'composite_lora_adapters { alias: "mix" components { adapter_alias: "a" alpha: 0.5 } '
                 'components { adapter_alias: "b" } }', id="composite"),
    pytest.param('lora_adapters { alias: "a" path: "loras/a.safetensors" alpha: 0.7 mode: STATIC }', id="static-one"),
    pytest.param('lora_adapters { alias: "a" path: "loras/a.safetensors" mode: STATIC }'
                 'lora_adapters { alias: "b" path: "loras/b.safetensors" mode: STATIC }'
                 'composite_lora_adapters { alias: "both" components { adapter_alias: "a" alpha: 0.3 } '
                 'components { adapter_alias: "b" } }', id="static-composite"),
    pytest.param('lora_adapters { alias: "f" path: "loras/c.safetensors" mode: FUSE }' + A, id="fuse-dynamic"),
    pytest.param('lora_adapters { alias: "x.Y_z-9" path: "loras/a.safetensors" alpha: -0.5 }', id="charset-negative"),
]


@pytest.mark.parametrize("body", VALID)
def test_valid_configurations_have_no_problems(gdir: Path, body: str) -> None:
    assert check(gdir, body) == []


INVALID = [
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/missing.safetensors" }',
        [("node_options.lora_adapters[0].path", 'LoRA adapter "a": file not found: {gdir}/loras/missing.safetensors')],
        id="missing-file"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras" }',
        [("node_options.lora_adapters[0].path", 'LoRA adapter "a": {gdir}/loras is not a file')],
        id="directory"),
    pytest.param(
        'lora_adapters { alias: "a" path: "model/model_index.json" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "a": {gdir}/model/model_index.json is not a .safetensors file')],
        id="not-safetensors"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/garbage.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "a": {gdir}/bad/garbage.safetensors is not a valid .safetensors file '
          "(its header is not JSON)")],
        id="garbage"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/short.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "a": {gdir}/bad/short.safetensors is not a valid .safetensors file (it is 3 bytes long)')],
        id="too-short"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/truncated.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "a": {gdir}/bad/truncated.safetensors is not a valid .safetensors file (truncated header)')],
        id="truncated"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/plain.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "a": {gdir}/bad/plain.safetensors contains no LoRA tensors (expected names like '
          "lora_unet_..._to_q.lora_down.weight)")],
        id="no-lora-tensors"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/int8.safetensors" }',
        [("node_options.lora_adapters[0].path",
          f'LoRA adapter "a": tensor {KOHYA_UNET}.alpha has dtype I8; OpenVINO GenAI reads only F32, F16 and '
          "BF16 LoRA tensors")],
        id="dtype"),
    pytest.param(
        'lora_adapters { alias: "a" path: "bad/no_up.safetensors" }',
        [("node_options.lora_adapters[0].path", f'LoRA adapter "a": LoRA layer {KOHYA_UNET} has no up weight')],
        id="missing-up"),
    pytest.param(
        'lora_adapters { alias: "p" path: "bad/peft.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "p": none of the 1 LoRA layers in {gdir}/bad/peft.safetensors matches a layer of the '
          "model in {gdir}/model (e.g. unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q); "
          "OpenVINO GenAI would silently ignore it. Is it for another architecture, or not in kohya format "
          "(lora_unet_..., lora_te_...)?")],
        id="matches-nothing-peft-keys"),
    pytest.param(
        'lora_adapters { alias: "x" path: "bad/other_arch.safetensors" }',
        [("node_options.lora_adapters[0].path",
          'LoRA adapter "x": none of the 2 LoRA layers in {gdir}/bad/other_arch.safetensors matches a layer of '
          "the model in {gdir}/model (e.g. lora_unet_double_blocks_0_img_attn_qkv, "
          "lora_unet_single_blocks_0_linear1); OpenVINO GenAI would silently ignore "
          "it. Is it for another architecture, or not in kohya format (lora_unet_..., lora_te_...)?")],
        id="matches-nothing-other-arch"),
    pytest.param(
        'lora_adapters { alias: "a b" path: "loras/a.safetensors" }',
        [("node_options.lora_adapters[0].alias",
          'LoRA adapter alias "a b" may only contain letters, digits, ".", "_" and "-" ([A-Za-z0-9._-]+)')],
        id="alias-charset"),
    pytest.param(
        'lora_adapters { alias: "a/b" path: "loras/a.safetensors" }',
        [("node_options.lora_adapters[0].alias",
          'LoRA adapter alias "a/b" may only contain letters, digits, ".", "_" and "-" ([A-Za-z0-9._-]+)')],
        id="alias-slash"),
    pytest.param(
        'lora_adapters { alias: "" path: "loras/a.safetensors" }',
        [("node_options.lora_adapters[0].alias", "LoRA adapter alias is missing or empty")],
        id="alias-empty"),
    pytest.param(
        A + 'lora_adapters { alias: "a" path: "loras/b.safetensors" }',
        [("node_options.lora_adapters[1].alias",
          'LoRA alias "a" is used twice (first by lora_adapters[0]); aliases must be unique')],
        id="duplicate-adapter"),
    pytest.param(
        A + 'composite_lora_adapters { alias: "a" components { adapter_alias: "a" } }',
        [("node_options.composite_lora_adapters[0].alias",
          'LoRA alias "a" is used twice (first by lora_adapters[0]); aliases must be unique')],
        id="duplicate-composite"),
    pytest.param(
        'lora_adapters { alias: "sd" path: "loras/a.safetensors" }',
        [("node_options.lora_adapters[0].alias",
          'LoRA adapter alias "sd" equals the graph name; aliases must differ from graph names')],
        id="alias-is-graph-name"),
    pytest.param(
        A + 'composite_lora_adapters { alias: "sd" components { adapter_alias: "a" } }',
        [("node_options.composite_lora_adapters[0].alias",
          'composite LoRA adapter alias "sd" equals the graph name; aliases must differ from graph names')],
        id="composite-is-graph-name"),
    pytest.param(
        A + 'composite_lora_adapters { alias: "mix" }',
        [("node_options.composite_lora_adapters[0].components",
          'composite LoRA adapter "mix" has no components; list at least one components { adapter_alias: "..." }')],
        id="composite-empty"),
    pytest.param(
        A + B + 'composite_lora_adapters { alias: "mix" components { adapter_alias: "a" } '
        'components { adapter_alias: "zz" } }',
        [("node_options.composite_lora_adapters[0].components[1].adapter_alias",
          'composite LoRA adapter "mix" refers to unknown LoRA adapter "zz" (lora_adapters aliases: "a", "b")')],
        id="composite-unknown"),
    pytest.param(
        A + 'composite_lora_adapters { alias: "mix" components { adapter_alias: "a" } '
        'components { adapter_alias: "a" alpha: 0.5 } }',
        [("node_options.composite_lora_adapters[0].components[1].adapter_alias",
          'composite LoRA adapter "mix" lists "a" twice')],
        id="composite-repeats"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/a.safetensors" alpha: 0.6 }'
        'composite_lora_adapters { alias: "mix" components { adapter_alias: "a" alpha: 0.7 } }',
        [("node_options.composite_lora_adapters[0].components[0].alpha",
          'LoRA adapter "a" has a non-default alpha both on the adapter (0.6) and in composite "mix" (0.7); '
          "set alpha at only one level")],
        id="alpha-both-levels"),
    pytest.param(
        'lora_adapters { alias: "f" path: "loras/c.safetensors" mode: FUSE }' + A +
        'composite_lora_adapters { alias: "mix" components { adapter_alias: "f" } components { adapter_alias: "a" } }',
        [("node_options.composite_lora_adapters[0].components[0].adapter_alias",
          'composite LoRA adapter "mix" refers to FUSE adapter "f"; FUSE adapters are always applied and cannot '
          "be part of a composite")],
        id="composite-with-fuse"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/a.safetensors" mode: STATIC }' + B,
        [("node_options.lora_adapters[0].mode",
          'STATIC and DYNAMIC LoRA adapters cannot be mixed in one node (STATIC: "a"; DYNAMIC: "b")')],
        id="static-with-dynamic"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/a.safetensors" mode: STATIC }'
        'lora_adapters { alias: "b" path: "loras/b.safetensors" mode: STATIC }',
        [("node_options.composite_lora_adapters",
          'STATIC mode with several adapters ("a", "b") needs exactly one composite (composite_lora_adapters) '
          "to name the routable combination, found 0")],
        id="static-several-no-composite"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/a.safetensors" mode: STATIC }'
        'lora_adapters { alias: "b" path: "loras/b.safetensors" mode: STATIC }'
        'composite_lora_adapters { alias: "m1" components { adapter_alias: "a" } components { adapter_alias: "b" } }'
        'composite_lora_adapters { alias: "m2" components { adapter_alias: "b" } components { adapter_alias: "a" } }',
        [("node_options.composite_lora_adapters",
          'STATIC mode with several adapters ("a", "b") needs exactly one composite (composite_lora_adapters) '
          "to name the routable combination, found 2")],
        id="static-several-two-composites"),
    pytest.param(
        'lora_adapters { alias: "a" path: "loras/a.safetensors" mode: STATIC }'
        'lora_adapters { alias: "b" path: "loras/b.safetensors" mode: STATIC }'
        'composite_lora_adapters { alias: "m1" components { adapter_alias: "a" } }',
        [("node_options.composite_lora_adapters[0].components",
          'STATIC composite "m1" must list every STATIC adapter; missing "b"')],
        id="static-composite-incomplete"),
    pytest.param(
        'device: "NPU" ' + A,
        [("node_options.lora_adapters[0].mode",
          'NPU supports only STATIC and FUSE LoRA adapters; set mode: STATIC on "a"')],
        id="npu-dynamic"),
]


@pytest.mark.parametrize(("body", "expected"), INVALID)
def test_each_rule_is_reported_with_alias_and_field(gdir: Path, body: str,
                                                    expected: list[tuple[str, str]]) -> None:
    bad = gdir / "bad"
    bad.mkdir()
    (bad / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    (bad / "short.safetensors").write_bytes(b"abc")
    (bad / "truncated.safetensors").write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{}")
    write_safetensors(bad / "plain.safetensors", {"weight": (2, 2)})
    write_safetensors(bad / "int8.safetensors", {f"{KOHYA_UNET}.alpha": ()}, dtype="I8")
    write_safetensors(bad / "no_up.safetensors", {f"{KOHYA_UNET}.lora_down.weight": (2, 8)})
    write_safetensors(bad / "peft.safetensors", {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (2, 8),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": (8, 2)})
    kohya_lora(bad / "other_arch.safetensors", "lora_unet_double_blocks_0_img_attn_qkv",
               "lora_unet_single_blocks_0_linear1")
    want = [(f, m.replace("{gdir}", str(gdir))) for f, m in expected]
    assert check(gdir, body) == want


def test_every_problem_is_reported_at_once(gdir: Path) -> None:
    body = ('lora_adapters { alias: "a b" path: "loras/missing.safetensors" }'
            'lora_adapters { alias: "sd" path: "loras/a.safetensors" mode: STATIC }'
            'composite_lora_adapters { alias: "m" }')
    fields = [f for f, _ in check(gdir, body)]
    assert fields == ["node_options.lora_adapters[0].alias", "node_options.lora_adapters[1].alias",
                      "node_options.lora_adapters[1].mode", "node_options.composite_lora_adapters[0].components",
                      "node_options.lora_adapters[0].path"]


def test_partially_matching_adapter_is_accepted_with_a_warning(gdir: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    kohya_lora(gdir / "loras" / "half.safetensors", KOHYA_UNET, "lora_unet_no_such_block_to_q")
    assert check(gdir, 'lora_adapters { alias: "half" path: "loras/half.safetensors" }') == []
    assert ('LoRA adapter "half" (' + str(gdir / "loras" / "half.safetensors") + "): 1 of 2 LoRA layers match "
            "no layer of the model and will be ignored, e.g. lora_unet_no_such_block_to_q") in caplog.text


def test_sgm_block_names_are_not_refused(gdir: Path) -> None:
    # OpenVINO GenAI renames input_blocks/middle_block/output_blocks to diffusers blocks itself.
    kohya_lora(gdir / "loras" / "sgm.safetensors", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k")
    assert check(gdir, 'lora_adapters { alias: "sgm" path: "loras/sgm.safetensors" }') == []


def test_no_layer_check_for_non_unet_models(gdir: Path) -> None:
    flux = gdir / "flux"
    (flux / "transformer").mkdir(parents=True)
    (flux / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    kohya_lora(gdir / "loras" / "flux.safetensors", "lora_unet_double_blocks_0_img_attn_qkv")
    opts = options('models_path: "flux" lora_adapters { alias: "f" path: "loras/flux.safetensors" }')
    assert LoraPlan.check(opts, load_context(gdir)) == []


@pytest.mark.parametrize(("key", "expected"), [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
     "lora_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0",
     "lora_unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out"),
    ("lora_unet_mid_block_attentions_0_proj_in", "lora_unet.mid_block.attentions.0.proj_in"),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", "lora_te_text_model_encoder_layers_0_mlp_fc1"),
    ("unet.down_blocks.0.attentions.0.proj_in", "lora_unet.unet.down_blocks.0.attentions.0.proj_in"),
])
def test_layer_names_are_normalized_like_openvino_genai(key: str, expected: str) -> None:
    assert diffusers_layer_name(key) == expected


def test_absolute_adapter_path_is_used_as_is(gdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = kohya_lora(tmp_path_factory.mktemp("elsewhere") / "x.safetensors", KOHYA_UNET)
    assert check(gdir, f'lora_adapters {{ alias: "x" path: "{elsewhere}" }}') == []
    plan = LoraPlan.from_options(options(f'models_path: "model" lora_adapters {{ alias: "x" path: "{elsewhere}" }}'),
                                 load_context(gdir))
    assert plan.adapters[0].path == elsewhere
    assert plan.adapters[0].mode is LoraMode.DYNAMIC


@pytest.mark.parametrize(("tensors", "expected"), [
    ({f"{KOHYA_UNET}.lora_down.weight": (2, 8), f"{KOHYA_UNET}.lora_up.weight": (8, 2)}, {KOHYA_UNET}),
    ({"x.lora_A.weight": (2, 8), "x.lora_B.weight": (8, 2), "x.alpha": ()}, {"x"}),
    ({"m.lora.down.weight": (2, 8), "m.lora.up.weight": (8, 2)}, {"m"}),
])
def test_lora_layer_keys_follow_openvino_genai_patterns(tmp_path: Path, tensors: dict[str, tuple[int, ...]],
                                                        expected: set[str]) -> None:
    assert read_lora_file(write_safetensors(tmp_path / "l.safetensors", tensors)) == (None, expected)


def test_issue_type_is_node_issue(gdir: Path) -> None:
    issues = LoraPlan.check(options('models_path: "model" lora_adapters { alias: "" path: "" }'), load_context(gdir))
    assert all(isinstance(i, NodeIssue) for i in issues)
    assert [i.message for i in issues] == ["LoRA adapter alias is missing or empty",
                                          'LoRA adapter "": path is missing or empty']


def test_problems_render_with_file_line_node_and_field(gdir: Path) -> None:
    from ovms_graph.testing import CalculatorRunner
    from tests.calculators.lora.conftest import registry

    text = """node {
  name: "gen"
  calculator: "ImageGenCalculator"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {
    [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
      models_path: "model"
      lora_adapters { alias: "a" path: "loras/a.safetensors" }
      lora_adapters {
        alias: "b b"
        path: "missing.safetensors"
      }
      composite_lora_adapters { alias: "m" }
    }
  }
}
"""
    graph = gdir / "graph.pbtxt"
    runner = CalculatorRunner(text, registry=registry(), graph_file=graph, graph_name="sd")
    assert [str(p) for p in runner.problems()] == [
        f'{graph}:12: node "gen" (ImageGenCalculator): node_options.lora_adapters[1].alias: LoRA adapter alias "b b" '
        'may only contain letters, digits, ".", "_" and "-" ([A-Za-z0-9._-]+)',
        f'{graph}:13: node "gen" (ImageGenCalculator): node_options.lora_adapters[1].path: LoRA adapter "b b": file '
        f"not found: {gdir}/missing.safetensors",
        f'{graph}:15: node "gen" (ImageGenCalculator): node_options.composite_lora_adapters[0].components: composite '
        'LoRA adapter "m" has no components; list at least one components { adapter_alias: "..." }',
    ]
