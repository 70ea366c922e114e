"""A LoRA file OpenVINO GenAI would silently ignore is refused at load; one it applies is accepted.

Checked against the real thing: on the tiny SD1.5 model, each file is also applied by
openvino_genai directly, and whether the image changes must agree with what LoraPlan.check says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from calculators.image_gen.lora import LoraPlan

from .conftest import F32, LORAS, SD15, require_tiny_loras
from .helpers import load_context, options, rename_lora


def _peft(name: str) -> str | None:
    """lora_unet_down_blocks_1_..._attn1_to_k.lora_down.weight -> unet.down_blocks.1....attn1.to_k.lora_A.weight"""
    if name.endswith(".alpha"):
        return None
    layer, part = name.split(".", 1)
    dotted = re.sub(r"_(\d+)_", r".\1.", layer.removeprefix("lora_unet_"))
    dotted = re.sub(r"_(attn\d|to_k|to_q|to_v|to_out)", r".\1", dotted).replace("to_out_0", "to_out.0")
    return f"unet.{dotted}." + ("lora_A.weight" if "down" in part else "lora_B.weight")


CASES = [
    pytest.param(lambda n: n, None, id="kohya-as-built"),
    pytest.param(_peft, None, id="peft-keys-this-ir-also-matches"),
    pytest.param(lambda n: n.replace("lora_unet_", "lora_unet_bogus_"),
                 'LoRA adapter "x": none of the 32 LoRA layers in {file} matches a layer of the model in '
                 "{model} (e.g. lora_unet_bogus_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k, "
                 "lora_unet_bogus_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0); OpenVINO GenAI "
                 "would silently ignore it. Is it for another architecture, or not in kohya format "
                 "(lora_unet_..., lora_te_...)?", id="no-layer-matches"),
]


@pytest.mark.parametrize(("rename", "refusal"), CASES)
def test_check_agrees_with_what_openvino_genai_applies(tmp_path: Path, rename: Callable[[str], str | None],
                                                       refusal: str | None) -> None:
    import openvino_genai

    require_tiny_loras()
    lora = rename_lora(LORAS / "lora_a.safetensors", tmp_path / "x.safetensors", rename)
    opts = options(f'models_path: "{SD15}" lora_adapters {{ alias: "x" path: "{lora}" }}')
    messages = [i.message for i in LoraPlan.check(opts, load_context(tmp_path))]
    assert messages == ([] if refusal is None else [refusal.format(file=lora, model=SD15)])

    def image(adapter: object | None) -> np.ndarray:
        pipe = openvino_genai.Text2ImagePipeline(str(SD15))
        if adapter is None:
            pipe.compile("CPU", **F32)
        else:
            config = openvino_genai.AdapterConfig([(adapter, 1.0)], openvino_genai.AdapterConfig.Mode.MODE_DYNAMIC)
            pipe.compile("CPU", adapters=config, **F32)
        return np.array(pipe.generate("a cat", width=64, height=64, num_inference_steps=2, rng_seed=1).data)

    applied = not np.array_equal(image(openvino_genai.Adapter(str(lora))), image(None))
    assert applied is (refusal is None)
