"""SD3 and LCM served end to end (issue 15): every task equals openvino_genai's own output at f32, with
the same compile properties the server gives a pipeline set; each family rule answers a clear 400 and
the server keeps serving; LoRA applies to LCM (SD1.5 UNet layout) and is refused at load for SD3."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai
import pytest
import requests
from PIL import Image

from calculators.image_gen.pipelines import Family, Guidance, Task, compile_properties
from ovms_graph.errors import ConfigError
from ovms_graph.testing import CalculatorRunner, serving
from tests.calculators.image_gen.conftest import LiveServer, Servers
from tests.calculators.image_gen.helpers import TINY, node_text, pixels, png_bytes, registry

PROMPT = "a red cat"
GENAI_CLASSES = {Task.TEXT2IMAGE: openvino_genai.Text2ImagePipeline,
                 Task.IMAGE2IMAGE: openvino_genai.Image2ImagePipeline,
                 Task.INPAINTING: openvino_genai.InpaintingPipeline}


def images(response: requests.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [pixels(item["b64_json"]) for item in response.json()["data"]]


def edit(server: LiveServer, fields: dict[str, str], files: dict[str, bytes]) -> requests.Response:
    return server.post("images/edits", data=fields,
                       files={name: (f"{name}.png", data, "image/png") for name, data in files.items()})


def mask_png() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def direct_pipeline(server: LiveServer, graph: str, task: Task, **extra: Any) -> Any:
    """openvino_genai's own pipeline for ``task`` on the graph's model, compiled with exactly the
    properties the server gives one of its pipeline sets (plugin_config, INFERENCE_NUM_THREADS)."""
    res = server.resources(graph)
    props = compile_properties(res.settings, res.pool.size)
    assert props["INFERENCE_PRECISION_HINT"] == "f32"
    return GENAI_CLASSES[task](str(res.settings.models_path), "CPU", **props, **extra)


def direct_images(pipe: Any, task: Task, source: bytes, **kwargs: Any) -> np.ndarray:
    image = ov.Tensor(np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))[None].copy())
    if task is Task.TEXT2IMAGE:
        result = pipe.generate(PROMPT, **kwargs)
    elif task is Task.IMAGE2IMAGE:
        result = pipe.generate(PROMPT, image, **kwargs)
    else:
        mask = np.repeat(np.asarray(Image.open(io.BytesIO(mask_png())))[None, :, :, None], 3, axis=3).copy()
        result = pipe.generate(PROMPT, image, ov.Tensor(mask), **kwargs)
    return np.array(result.data, copy=True)


def served_images(server: LiveServer, task: Task, source: bytes, fields: dict[str, Any]) -> list[np.ndarray]:
    if task is Task.TEXT2IMAGE:
        return images(server.generate({"prompt": PROMPT, **fields}))
    files = {"image": source} if task is Task.IMAGE2IMAGE else {"image": source, "mask": mask_png()}
    return images(edit(server, {"prompt": PROMPT, **{k: str(v) for k, v in fields.items()}}, files))


@pytest.mark.parametrize("task", list(Task), ids=[t.value for t in Task])
@pytest.mark.parametrize("graph", ["sd3", "lcm", "sd3-x2", "lcm-x2"])
def test_every_task_equals_openvino_genai(servers: Servers, graph: str, task: Task) -> None:
    server = servers[graph]
    res = server.resources(graph)
    assert res.tasks == frozenset(Task)
    if res.pool.size > 1:  # each set runs on its share of the cores, and the direct pipeline on the same
        assert "INFERENCE_NUM_THREADS" in compile_properties(res.settings, res.pool.size)
    source = png_bytes(64, 64, (30, 160, 90))
    fields: dict[str, Any] = {"rng_seed": 9, "num_inference_steps": 3}
    kwargs: dict[str, Any] = {"rng_seed": 9, "num_inference_steps": 3, "width": 64, "height": 64}
    if task is not Task.TEXT2IMAGE:
        fields["strength"] = kwargs["strength"] = 0.75
    served = served_images(server, task, source, fields)
    direct = direct_images(direct_pipeline(server, graph, task), task, source, **kwargs)
    assert len(served) == direct.shape[0] == 1
    assert served[0].std() > 1
    assert np.array_equal(served[0], direct[0])


def test_lcm_takes_the_models_default_steps_and_guidance(servers: Servers) -> None:
    server = servers["lcm"]
    res = server.resources("lcm")
    assert (res.info.family, res.info.guidance) == (Family.LCM, Guidance.EMBEDDED)
    assert (res.settings.default_num_inference_steps, res.defaults.guidance_scale) == (4, 8.5)
    served = images(server.generate({"prompt": PROMPT, "rng_seed": 3}))
    direct = direct_pipeline(server, "lcm", Task.TEXT2IMAGE).generate(PROMPT, rng_seed=3)  # GenAI's LCM default: 4
    assert np.array_equal(served[0], np.array(direct.data)[0])


def test_lcm_guidance_scale_moves_the_image_as_an_embedding(servers: Servers) -> None:
    server = servers["lcm"]
    low, high = (images(server.generate({"prompt": PROMPT, "rng_seed": 3, "guidance_scale": g}))[0] for g in (1.0, 8.5))
    assert np.abs(low.astype(int) - high).mean() > 0.1
    direct = direct_pipeline(server, "lcm", Task.TEXT2IMAGE).generate(PROMPT, rng_seed=3, guidance_scale=1.0)
    assert np.array_equal(low, np.array(direct.data)[0])


def test_sd3_serves_its_three_prompts_and_t5_length(servers: Servers) -> None:
    server = servers["sd3"]
    body = {"prompt": PROMPT, "prompt_2": "a dog", "prompt_3": "a blue sky", "negative_prompt": "green",
            "negative_prompt_3": "dark", "max_sequence_length": 256, "rng_seed": 4}
    served = images(server.generate(body))
    pipe = direct_pipeline(server, "sd3", Task.TEXT2IMAGE)
    direct = pipe.generate(PROMPT, prompt_2="a dog", prompt_3="a blue sky", negative_prompt="green",
                           negative_prompt_3="dark", max_sequence_length=256, rng_seed=4, num_inference_steps=2,
                           width=64, height=64)
    assert np.array_equal(served[0], np.array(direct.data)[0])
    plain = images(server.generate({"prompt": PROMPT, "rng_seed": 4}))
    assert not np.array_equal(served[0], plain[0]), "prompt_2 / prompt_3 / negatives reach the model"


def refusal(response: requests.Response) -> tuple[str, str | None]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    return error["message"], error["param"]


@pytest.mark.parametrize(("graph", "route", "fields", "message", "param"), [
    ("sd3", "generations", {"guidance_scale": 1.0},
     "guidance_scale 1 would turn classifier-free guidance off, but this SD3 model runs with it on "
     "(guidance_scale > 1), as its default 7 does: OpenVINO GenAI fixes that at a pipeline's first generate",
     "guidance_scale"),
    ("sd3", "generations", {"max_sequence_length": 77},
     "max_sequence_length must be 256 for this model (its T5 text encoder runs at that length), got 77",
     "max_sequence_length"),
    ("sd3", "generations", {"size": "576x576"},
     "requested resolution 576x576 is larger than this SD3 model can generate: at most 512 pixels per side (its "
     "transformer's pos_embed_max_size)", "size"),
    ("sd3", "image", {"n": 2}, "image-to-image with SD3 models supports one image per request, got n=2", "n"),
    ("sd3", "mask", {"n": 2}, "inpainting with SD3 models supports one image per request, got n=2", "n"),
    ("lcm", "generations", {"negative_prompt": "blue"},
     "negative_prompt is not supported by LCM (LatentConsistencyModelPipeline) models; they take prompt",
     "negative_prompt"),
    ("lcm", "generations", {"max_sequence_length": 77},
     "max_sequence_length is not supported by LCM (LatentConsistencyModelPipeline) models (only models with a T5 "
     "text encoder, SD3 and FLUX, use it)", "max_sequence_length"),
    ("lcm", "generations", {"num_inference_steps": 51},
     "num_inference_steps is greater than the LCM scheduler's original_inference_steps: 50", "num_inference_steps"),
    ("lcm", "image", {"num_inference_steps": 30, "strength": 0.5},
     "num_inference_steps 30 is more than the LCM scheduler can take at strength 0.5: at most 25 "
     "(original_inference_steps 50 x strength)", "strength"),
    ("lcm", "mask", {"n": 2}, "inpainting with this LCM model (4-channel UNet) supports one image per request, got n=2",
     "n"),
])
def test_family_rules_are_400_and_the_server_keeps_serving(servers: Servers, graph: str, route: str,
                                                          fields: dict[str, Any], message: str, param: str) -> None:
    server = servers[graph]
    if route == "generations":
        response = server.generate({"prompt": PROMPT, **fields})
    else:
        files = {"image": png_bytes(64, 64)} if route == "image" else {"image": png_bytes(64, 64), "mask": mask_png()}
        response = edit(server, {"prompt": PROMPT, **{k: str(v) for k, v in fields.items()}}, files)
    assert refusal(response) == (message, param)
    assert len(images(server.generate({"prompt": PROMPT, "num_inference_steps": 1}))) == 1


def test_sd3_serves_its_largest_size(servers: Servers) -> None:
    assert [image.shape for image in images(servers["sd3"].generate({"prompt": PROMPT, "size": "512x512",
                                                                     "num_inference_steps": 1}))] == [(512, 512, 3)]


def test_sd3_default_resolution_beyond_its_positional_embedding_is_a_load_error(tmp_path: Path) -> None:
    node = CalculatorRunner(node_text(f'models_path: "{TINY / "sd3"}"', 'default_resolution: "1024x512"'),
                            registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    assert [(p.field, p.message) for p in node.problems()] == [(
        "node_options.default_resolution",
        "1024x512: this SD3 model generates at most 512 pixels per side (its transformer's pos_embed_max_size)")]


def test_sd3_text_to_image_serves_several_images(servers: Servers) -> None:
    result = images(servers["sd3"].generate({"prompt": PROMPT, "n": 2, "num_inference_steps": 1}))
    assert [image.shape for image in result] == [(64, 64, 3)] * 2


@pytest.mark.parametrize(("graph", "model"), [("sd3-default", "sd3-default"), ("lcm-default", "lcm-default"),
                                              ("lcm-default", "lcm-default-style")])
def test_default_precision_serves_every_task_repeatably(servers: Servers, graph: str, model: str) -> None:
    """At the CPU's default precision (bf16 where it has it) too: no blank image, a seed repeats."""
    server = servers[graph]
    source = png_bytes(64, 64, (30, 160, 90))
    for task in Task:
        fields = {"model": model, "rng_seed": 2, "num_inference_steps": 3}
        first, again = (served_images(server, task, source, fields)[0] for _ in range(2))
        assert first.std() > 1, task
        assert np.array_equal(first, again), task


# ----- LoRA per family -----
def test_lcm_dynamic_lora_equals_openvino_genai(servers: Servers) -> None:
    """The sd15 LoRA's kohya layers exist in the LCM UNet: DYNAMIC adapters switch per request."""
    server = servers["lcm-lora"]
    base = images(server.generate({"model": "lcm-lora", "prompt": PROMPT, "rng_seed": 5}))[0]
    styled = images(server.generate({"model": "lcm-style", "prompt": PROMPT, "rng_seed": 5}))[0]
    assert np.abs(styled.astype(int) - base).mean() > 1
    adapter = openvino_genai.Adapter(str(TINY / "loras" / "lora_a.safetensors"))
    config = openvino_genai.AdapterConfig()
    config.add(adapter, 1.0)
    pipe = direct_pipeline(server, "lcm-lora", Task.TEXT2IMAGE, adapters=config)
    assert np.array_equal(styled, np.array(pipe.generate(PROMPT, rng_seed=5).data)[0])


def test_sd3_dynamic_lora_in_diffusers_format_equals_openvino_genai(servers: Servers) -> None:
    """A transformer LoRA (diffusers/PEFT keys) is what SD3 takes: DYNAMIC, switched per request."""
    server = servers["sd3-lora"]
    base = images(server.generate({"model": "sd3-lora", "prompt": PROMPT, "rng_seed": 5}))[0]
    styled = images(server.generate({"model": "sd3-style", "prompt": PROMPT, "rng_seed": 5}))[0]
    half = images(server.generate({"model": "sd3-style", "prompt": PROMPT, "rng_seed": 5,
                                   "lora_alphas": {"sd3-style": 0.5}}))[0]
    assert np.abs(styled.astype(int) - base).mean() > 1
    assert not np.array_equal(half, styled)
    for alpha, served in ((1.0, styled), (0.5, half)):
        config = openvino_genai.AdapterConfig()
        config.add(openvino_genai.Adapter(str(TINY / "loras" / "lora_sd3.safetensors")), alpha)
        pipe = direct_pipeline(server, "sd3-lora", Task.TEXT2IMAGE, adapters=config)
        assert np.array_equal(served, np.array(pipe.generate(PROMPT, rng_seed=5, num_inference_steps=2, width=64,
                                                             height=64).data)[0])
    assert np.array_equal(base, images(server.generate({"model": "sd3-lora", "prompt": PROMPT, "rng_seed": 5}))[0])


def test_a_unet_lora_on_sd3_is_refused_at_load_naming_the_alias(tmp_path: Path) -> None:
    lora = TINY / "loras" / "lora_a.safetensors"
    node = CalculatorRunner(node_text(f'models_path: "{TINY / "sd3"}"',
                                      f'lora_adapters {{ alias: "style" path: "{lora}" }}'),
                            registry=registry(), graph_file=tmp_path / "graph.pbtxt")
    problems = node.problems()
    assert [p.field for p in problems] == ["node_options.lora_adapters[0].path"]
    assert problems[0].message == (
        f'LoRA adapter "style": {lora} is for UNet models (kohya lora_unet_/lora_te_ layers); SD3 models have a '
        "transformer denoiser, so none of its layers can apply")
    with pytest.raises(ConfigError):
        node.graph  # noqa: B018 - loading is the point


def test_ovms_graph_serve_runs_the_sd3_and_lcm_gallery_graphs_together(tmp_path: Path) -> None:
    """A real `ovms-graph serve` process serving graphs/tiny-sd3 and graphs/tiny-lcm side by side."""
    gallery = TINY.parents[1] / "graphs"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": name, "base_path": str(gallery / name)}} for name in ("tiny-sd3", "tiny-lcm")]}))
    with serving(["--config_path", str(config), "--rest_port", "0", "--rest_bind_address", "127.0.0.1"],
                 cwd=tmp_path) as server:
        listed = requests.get(f"{server.url}/v3/models", timeout=60).json()["data"]
        assert sorted(m["id"] for m in listed) == ["tiny-lcm", "tiny-lcm-style", "tiny-sd3"]
        url = f"{server.url}/v3/images/generations"
        sd3 = requests.post(url, json={"model": "tiny-sd3", "prompt": PROMPT, "prompt_3": "a dog"}, timeout=300)
        lcm = requests.post(url, json={"model": "tiny-lcm-style", "prompt": PROMPT}, timeout=300)
        refused = requests.post(url, json={"model": "tiny-sd3", "prompt": PROMPT, "guidance_scale": 1}, timeout=60)
        assert [len(images(r)) for r in (sd3, lcm)] == [1, 1]
        assert refusal(refused)[1] == "guidance_scale"
    assert server.process.returncode == 0, server.output()
