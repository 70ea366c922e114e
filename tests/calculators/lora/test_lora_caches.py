"""Every LoRA cache belongs to one plan (issue 13): nothing is kept on a class or in a module global."""

from __future__ import annotations

import inspect

import calculators.image_gen.lora as lora_package
from calculators.image_gen.lora import LoraPlan, fuse, genai, layer_names, plan, rules, safetensors_header

from .conftest import LORAS, SD15, require_tiny_loras
from .helpers import load_context, options

DYNAMIC = (f'models_path: "{SD15}" lora_adapters {{ alias: "a" path: "{LORAS}/lora_a.safetensors" }} '
           f'lora_adapters {{ alias: "b" path: "{LORAS}/lora_b.safetensors" }}')


def _plan() -> LoraPlan:
    require_tiny_loras()
    return LoraPlan.from_options(options(DYNAMIC), load_context(LORAS))


def test_the_layer_names_of_a_model_are_read_once_per_plan() -> None:
    one, other = _plan(), _plan()
    index = one.layer_indexes.for_model(SD15)
    assert index is not None and index.layers["unet"], "the tiny SD1.5 UNet has weighted layers"
    assert one.layer_indexes.for_model(SD15) is index
    assert other.layer_indexes.for_model(SD15) is not index


def test_adapters_and_markers_are_loaded_per_plan() -> None:
    one, other = _plan(), _plan()
    assert one._adapters() is one._adapters()
    assert one._adapters()["a"] is not other._adapters()["a"]
    order = one.request_order({"a": 0.5})
    assert one.marker(order) is one.marker(order)
    assert other.marker(order) is not one.marker(order)


def test_no_module_of_the_package_keeps_a_cache_on_a_class() -> None:
    mutable = (dict, list, set)
    for module in (lora_package, fuse, genai, layer_names, plan, rules, safetensors_header):
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                shared = [attr for attr, held in vars(value).items()
                          if isinstance(held, mutable) and not attr.startswith("__")]
                assert shared == [], f"{module.__name__}.{name} keeps {shared} on the class"
