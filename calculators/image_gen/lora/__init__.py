"""LoRA adapters of an ImageGenCalculator node: load-time rules, routing, and per-request alphas.

One job per module:

* :mod:`.entries`: the option entries as values (modes, adapters, composites);
* :mod:`.plan`: :class:`LoraPlan`, facts, routing, alpha resolution and request order (pure), and
  the owner of every cache below;
* :mod:`.rules`: the load-time rules, one function per stage, each returning its problems;
* :mod:`.genai`: the OpenVINO GenAI ``Adapter`` objects, ``AdapterConfig`` and marker cache;
* :mod:`.safetensors_header`: reading an adapter file's header;
* :mod:`.layer_names`: how OpenVINO GenAI names LoRA layers and which layers of a model they reach;
* :mod:`.fuse`: FUSE adapters merged into a copy of the model's weights.

A node's ``lora_adapters`` and ``composite_lora_adapters`` become one :class:`LoraPlan`. The plan
is built once at load and is immutable; the calculator uses it in these places:

* ``LoraPlan.check(options, ctx)`` in ``check_options``: every problem with the LoRA options, each
  naming the alias and the rule (missing or unreadable ``.safetensors``, a file whose tensors match
  no layer of the model, bad, unknown or duplicate aliases, composite rules, mode rules);
* ``plan.model_dir(settings.models_path)`` before building pipelines: the folder to load every
  pipeline from (a merged copy when FUSE adapters sit under DYNAMIC / STATIC ones, else
  ``models_path`` itself); ``plan.close()`` at shutdown removes that copy (idempotent);
* ``plan.compile_kwargs()``: the keyword arguments to add to every pipeline set's construction or
  ``compile`` call (``adapters=AdapterConfig``; call it once per compile);
* ``plan.register_routes(ctx)`` in ``create_resources``: DYNAMIC adapter aliases and composites
  become routable ``model`` names; STATIC makes exactly one name routable and hides the base
  model; FUSE adapters are never routable;
* ``plan.generate_kwargs(model, lora_alphas)`` per request, before any pipeline set is taken, and
  passed to ``generate`` of every task, base requests included: the validated ``adapters=``
  keyword; raises ``BadRequest`` naming the offending ``lora_alphas`` key.

Modes (SPEC §6, the reference's "LoRA Adapters" section):

* DYNAMIC: every DYNAMIC adapter is registered at compile time; each request passes an
  ``AdapterConfig`` with exactly the adapters it activates, so each pipeline set carries its own,
  complete adapter state and layers of inactive adapters cost (almost) nothing.
* STATIC: the adapters are compiled in with fixed alphas (a composite component's alpha wins over
  the adapter's); ``lora_alphas`` is rejected.
* FUSE: merged into the base weights at load; invisible to routing; combinable with DYNAMIC.
  Alone, OpenVINO GenAI's MODE_FUSE merges them. Under DYNAMIC or STATIC adapters (one adapter
  controller per model, one mode: GenAI cannot do both) :meth:`LoraPlan.model_dir` merges them
  into a copy of a UNet model's weights, bit-identical to MODE_FUSE; for other architectures they
  ride along at their fixed alpha in the DYNAMIC / STATIC configuration.

Alpha precedence: request ``lora_alphas`` > composite component alpha > adapter alpha > 1.0.

Example config:

    node {
      name: "ImageGenExecutor"
      calculator: "ImageGenCalculator"
      input_stream: "HTTP_REQUEST_PAYLOAD:input"
      input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"
      output_stream: "HTTP_RESPONSE_PAYLOAD:output"
      node_options: {
        [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {
          models_path: "./"
          lora_adapters { alias: "style" path: "loras/style.safetensors" alpha: 0.8 }
          lora_adapters { alias: "detail" path: "loras/detail.safetensors" }
          composite_lora_adapters {
            alias: "mix"
            components { adapter_alias: "style" }
            components { adapter_alias: "detail" alpha: 0.5 }
          }
        }
      }
    }
"""

from calculators.image_gen.lora.entries import (
    FIELD_PREFIX,
    CompositeAdapter,
    CompositeComponent,
    LoraAdapter,
    LoraMode,
)
from calculators.image_gen.lora.fuse import MergedModel, merge_unsupported
from calculators.image_gen.lora.layer_names import LayerIndex, LayerIndexes, diffusers_layer_name, unet_submodels
from calculators.image_gen.lora.plan import LORA_ALPHAS, STATIC_ALPHAS_MESSAGE, ActiveLoras, LoraPlan
from calculators.image_gen.lora.safetensors_header import read_lora_file

__all__ = [
    "FIELD_PREFIX",
    "LORA_ALPHAS",
    "STATIC_ALPHAS_MESSAGE",
    "ActiveLoras",
    "CompositeAdapter",
    "CompositeComponent",
    "LayerIndex",
    "LayerIndexes",
    "LoraAdapter",
    "LoraMode",
    "LoraPlan",
    "MergedModel",
    "diffusers_layer_name",
    "merge_unsupported",
    "read_lora_file",
    "unet_submodels",
]
