"""models/tiny matches its MANIFEST.json, and the exported files have the layout GenAI reads."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import openvino as ov
import pytest

from tests.models.conftest import TINY

MANIFEST = TINY / "MANIFEST.json"


def load_manifest() -> dict:
    assert MANIFEST.is_file(), f"{MANIFEST} is missing: run `make fixtures`"
    return json.loads(MANIFEST.read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_committed_file_matches_the_manifest() -> None:
    listed = load_manifest()["files"]
    present = {p.relative_to(TINY).as_posix() for p in TINY.rglob("*")
               if p.is_file() and p.name != "MANIFEST.json"}
    assert sorted(present - set(listed)) == [], "files not in MANIFEST.json (rebuild with `make fixtures`)"
    assert sorted(set(listed) - present) == [], "files in MANIFEST.json but missing"
    wrong = [name for name, entry in listed.items()
             if sha256(TINY / name) != entry["sha256"] or (TINY / name).stat().st_size != entry["bytes"]]
    assert wrong == [], "files differ from MANIFEST.json (rebuild with `make fixtures`)"


def test_manifest_records_how_the_files_were_built() -> None:
    manifest = load_manifest()
    assert manifest["generator"] == "tools/build_tiny_models.py"
    assert isinstance(manifest["seed"], int)
    for pkg in ("torch", "diffusers", "transformers", "openvino", "openvino-tokenizers"):
        assert manifest["packages"].get(pkg), f"package version of {pkg} not recorded"
    assert sorted(manifest["loras"]) == ["lora_a", "lora_b", "lora_c", "lora_sd3"]
    assert {name: entry["base"] for name, entry in manifest["loras"].items()} == {
        "lora_a": "sd15", "lora_b": "sd15", "lora_c": "sd15", "lora_sd3": "sd3"}


def test_total_size_stays_small() -> None:
    total = sum(e["bytes"] for e in load_manifest()["files"].values())
    assert total < 12_000_000, f"models/tiny is {total / 1e6:.1f} MB; keep it a few MB"


@pytest.mark.parametrize(("model", "limit"), [("sd3", 2_000_000), ("lcm", 2_200_000)])
def test_each_new_family_stays_under_a_few_mb(model: str, limit: int) -> None:
    size = sum(e["bytes"] for name, e in load_manifest()["files"].items() if name.startswith(f"{model}/"))
    assert 0 < size < limit, f"models/tiny/{model} is {size / 1e6:.2f} MB"


COMMON = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/openvino_tokenizer.xml",
          "tokenizer/openvino_detokenizer.xml", "tokenizer/tokenizer.json", "text_encoder/config.json",
          "text_encoder/openvino_model.xml", "vae_decoder/config.json", "vae_decoder/openvino_model.xml",
          "vae_encoder/config.json", "vae_encoder/openvino_model.xml"]
LAYOUT = {
    "sd15": [*COMMON, "unet/config.json", "unet/openvino_model.xml"],
    "sd15-inpaint": [*COMMON, "unet/config.json", "unet/openvino_model.xml"],
    "sdxl": [*COMMON, "unet/openvino_model.xml", "tokenizer_2/openvino_tokenizer.xml",
             "text_encoder_2/openvino_model.xml"],
    "flux": [*COMMON, "transformer/config.json", "transformer/openvino_model.xml",
             "tokenizer_2/openvino_tokenizer.xml", "text_encoder_2/openvino_model.xml"],
    "sd3": [*COMMON, "transformer/config.json", "transformer/openvino_model.xml",
            "tokenizer_2/openvino_tokenizer.xml", "text_encoder_2/openvino_model.xml",
            "tokenizer_3/openvino_tokenizer.xml", "text_encoder_3/openvino_model.xml"],
    "lcm": [*COMMON, "unet/config.json", "unet/openvino_model.xml"],
}


@pytest.mark.parametrize("model", sorted(LAYOUT))
def test_layout(model: str) -> None:
    missing = [f for f in LAYOUT[model] if not (TINY / model / f).is_file()]
    for xml in (TINY / model).rglob("*.xml"):
        if not xml.with_suffix(".bin").is_file():
            missing.append(xml.with_suffix(".bin").relative_to(TINY / model).as_posix())
    assert missing == []


# (model, component) -> (input names, output names) as optimum-intel writes them and GenAI reads them
NAMES = {
    ("sd15", "text_encoder"): (["input_ids"], ["last_hidden_state", "pooler_output"]),
    ("sd15", "unet"): (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    ("sd15", "vae_decoder"): (["latent_sample"], ["sample"]),
    ("sd15", "vae_encoder"): (["sample"], ["latent_parameters"]),
    ("sd15-inpaint", "unet"): (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    ("sdxl", "text_encoder"): (["input_ids"], ["last_hidden_state", "pooler_output",
                                               "hidden_states.0", "hidden_states.1", "hidden_states.2"]),
    ("sdxl", "text_encoder_2"): (["input_ids"], ["text_embeds", "last_hidden_state",
                                                 "hidden_states.0", "hidden_states.1", "hidden_states.2"]),
    ("sdxl", "unet"): (["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"],
                       ["out_sample"]),
    ("flux", "text_encoder"): (["input_ids"], ["last_hidden_state", "pooler_output"]),
    ("flux", "text_encoder_2"): (["input_ids"], ["last_hidden_state"]),
    ("flux", "transformer"): (["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep",
                               "img_ids", "txt_ids", "guidance"], ["out_hidden_states"]),
    ("sd3", "text_encoder"): (["input_ids"], ["text_embeds", "last_hidden_state",
                                              "hidden_states.0", "hidden_states.1", "hidden_states.2"]),
    ("sd3", "text_encoder_2"): (["input_ids"], ["text_embeds", "last_hidden_state",
                                                "hidden_states.0", "hidden_states.1", "hidden_states.2"]),
    ("sd3", "text_encoder_3"): (["input_ids"], ["last_hidden_state"]),
    ("sd3", "transformer"): (["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"],
                             ["out_hidden_states"]),
    ("lcm", "unet"): (["sample", "timestep", "encoder_hidden_states", "timestep_cond"], ["out_sample"]),
}


@pytest.mark.parametrize(("model", "component"), sorted(NAMES))
def test_tensor_names(model: str, component: str) -> None:
    m = ov.Core().read_model(TINY / model / component / "openvino_model.xml")
    inputs = [p.get_any_name() for p in m.inputs]
    outputs = [p.get_any_name() for p in m.outputs]
    assert (inputs, outputs) == NAMES[(model, component)]


def test_unet_timestep_is_int64() -> None:
    m = ov.Core().read_model(TINY / "sd15" / "unet" / "openvino_model.xml")
    assert m.input("timestep").get_element_type() == ov.Type.i64


def test_default_size_configs() -> None:
    """64x64 by default: UNet sample_size 8 times the VAE scale factor 2**(4 blocks - 1)."""
    for model in ("sd15", "sd15-inpaint", "sdxl"):
        unet = json.loads((TINY / model / "unet" / "config.json").read_text())
        vae = json.loads((TINY / model / "vae_decoder" / "config.json").read_text())
        assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == 64, model
    assert json.loads((TINY / "sd15-inpaint" / "unet" / "config.json").read_text())["in_channels"] == 9


def test_new_family_configs() -> None:
    """SD3: a patch-2 transformer over 16 latent channels, 64x64 by default, and a T5 third encoder;
    LCM: the guidance scale enters the UNet as an embedding (time_cond_proj_dim), LCM scheduler."""
    sd3 = json.loads((TINY / "sd3" / "transformer" / "config.json").read_text())
    assert (sd3["patch_size"], sd3["in_channels"], sd3["sample_size"]) == (2, 16, 8)
    index = json.loads((TINY / "sd3" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    assert index["scheduler"][1] == "FlowMatchEulerDiscreteScheduler"
    lcm = json.loads((TINY / "lcm" / "model_index.json").read_text())
    assert (lcm["_class_name"], lcm["scheduler"][1]) == ("LatentConsistencyModelPipeline", "LCMScheduler")
    assert json.loads((TINY / "lcm" / "unet" / "config.json").read_text())["time_cond_proj_dim"] == 32
    scheduler = json.loads((TINY / "lcm" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["original_inference_steps"] == 50


def safetensors_keys(path: Path) -> list[str]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return sorted(k for k in json.loads(raw[8:8 + n]) if k != "__metadata__")


def test_sd3_lora_uses_diffusers_keys_for_the_transformer() -> None:
    keys = safetensors_keys(TINY / "loras" / "lora_sd3.safetensors")
    pattern = re.compile(r"transformer\.transformer_blocks\.0\.attn\.(to_q|to_k|to_v|to_out\.0)\.lora_[AB]\.weight")
    assert len(keys) == 8 and [k for k in keys if not pattern.fullmatch(k)] == []


KOHYA = re.compile(r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")


@pytest.mark.parametrize("name", ["lora_a", "lora_b", "lora_c"])
def test_loras_use_kohya_keys(name: str) -> None:
    keys = safetensors_keys(TINY / "loras" / f"{name}.safetensors")
    assert keys, "empty LoRA"
    assert [k for k in keys if not KOHYA.fullmatch(k)] == []
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    for stem in stems:
        assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= set(keys), stem
