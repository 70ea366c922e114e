"""Exports in-memory diffusers pipelines to the OpenVINO GenAI folder layout, without optimum-intel.

The layout and tensor names are the ones optimum-intel writes and `openvino_genai` reads
(`src/cpp/src/image_generation/models/*.cpp` in openvino.genai):

    model_index.json                     the diffusers pipeline config ([library, class] per component)
    scheduler/scheduler_config.json
    tokenizer/      openvino_tokenizer.xml/.bin, openvino_detokenizer.xml/.bin + the HF tokenizer files
    text_encoder/   config.json + openvino_model.xml/.bin
        CLIPTextModel                input_ids -> last_hidden_state, pooler_output
                                     (SDXL: + hidden_states.0 .. hidden_states.N, read by index N+1)
        CLIPTextModelWithProjection  input_ids -> text_embeds, last_hidden_state, hidden_states.0 .. N
        T5EncoderModel               input_ids -> last_hidden_state
    unet/           sample, timestep (i64, shape [1]), encoder_hidden_states [, text_embeds, time_ids]
                    [, timestep_cond (LCM)] -> out_sample
    transformer/    (FLUX) hidden_states, encoder_hidden_states, pooled_projections, timestep (f32 [1]),
                    img_ids, txt_ids [, guidance] -> out_hidden_states
                    (SD3) hidden_states, encoder_hidden_states, pooled_projections, timestep (f32 [batch])
                    -> out_hidden_states
    vae_decoder/    latent_sample -> sample          (GenAI appends the [0, 255] u8 post-processing)
    vae_encoder/    sample -> latent_parameters      (mean and log-variance, GenAI samples from them)

Weights are stored in f32 (`compress_to_fp16=False`) so that inference with
`INFERENCE_PRECISION_HINT=f32` is exact and LoRA adapters apply to plain Constants. Module attribute
paths are kept as in diffusers/transformers 4.x (`text_model.encoder.layers.0.self_attn.q_proj`,
`down_blocks.0.attentions.0...`), because GenAI matches kohya LoRA keys (`lora_te_...`, `lora_unet_...`)
by substring against the weight names the PyTorch frontend derives from those paths.

Public API (stable; tools/train_demo_model.py depends on it):
    export_sd15(pipe, out_dir)             StableDiffusionPipeline
    export_sd15_inpaint(pipe, out_dir)     StableDiffusionInpaintPipeline (9-channel UNet)
    export_sdxl(pipe, out_dir)             StableDiffusionXLPipeline
    export_flux(pipe, out_dir)             FluxPipeline
    export_sd3(pipe, out_dir)              StableDiffusion3Pipeline (two CLIPs with projection + T5)
    export_lcm(pipe, out_dir)              LatentConsistencyModelPipeline (UNet with timestep_cond)
    export_pipeline(pipe, out_dir, kind=)  dispatch by kind: "sd15", "sd15-inpaint", "sdxl", "flux",
                                           "sd3", "lcm"
    make_clip_tokenizer(words, out_dir)    CLIP byte-level BPE in which every listed word is one token
    make_t5_tokenizer(words, out_dir)      T5-style unigram tokenizer over the listed words

Needs the fixtures venv (torch, diffusers, transformers, openvino, openvino-tokenizers).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from torch import nn

__all__ = [
    "export_flux",
    "export_lcm",
    "export_pipeline",
    "export_sd3",
    "export_sd15",
    "export_sd15_inpaint",
    "export_sdxl",
    "export_tokenizer",
    "make_clip_tokenizer",
    "make_t5_tokenizer",
]

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


# --------------------------------------------------------------------------------------------------
# Tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def make_clip_tokenizer(
    words: Iterable[str], out_dir: Path | None = None, *, model_max_length: int = 77
) -> Any:
    """Builds a CLIP byte-level BPE tokenizer in which every word of `words` is a single token.

    Any other text still tokenizes (byte by byte). Words are lower-cased, as CLIP's normalizer
    does; only letters and digits are meaningful inside a word. Ids: 256 byte symbols, 256 byte
    symbols with `</w>`, merged tokens, then `<|startoftext|>` and `<|endoftext|>` (also pad).
    The result is deterministic for a given word list. Saved to `out_dir` when given.
    """
    from transformers import CLIPTokenizer

    table = _bytes_to_unicode()
    alphabet = [table[b] for b in range(256)]
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    for sym in alphabet:
        vocab[sym + "</w>"] = len(vocab)

    def symbols(word: str) -> list[str]:
        chars = [table[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        return chars

    merges: list[tuple[str, str]] = []
    merge_set: set[tuple[str, str]] = set()

    def add_merge(a: str, b: str) -> None:
        if (a, b) not in merge_set:
            merge_set.add((a, b))
            merges.append((a, b))
            if a + b not in vocab:
                vocab[a + b] = len(vocab)

    unique = sorted({w.strip().lower() for w in words if w.strip()})
    for word in unique:
        syms = symbols(word)
        acc = syms[0]
        for s in syms[1:]:
            add_merge(acc, s)
            acc += s

    def build() -> Any:
        full = dict(vocab)
        full[CLIP_BOS] = len(full)
        full[CLIP_EOS] = len(full)
        return CLIPTokenizer(vocab=full, merges=list(merges),
                             model_max_length=model_max_length)

    # Left-to-right chains can be pre-empted by an earlier merge from another word's chain
    # (e.g. "ab" before "cab"); append the missing merges at the lowest priority until stable.
    for _ in range(64):
        tok = build()
        changed = False
        for word in unique:
            pieces = tok.tokenize(word)
            if len(pieces) > 1:
                add_merge(pieces[0], pieces[1])
                changed = True
        if not changed:
            break
    else:
        raise RuntimeError("make_clip_tokenizer: merges did not converge")
    tok = build()
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def make_t5_tokenizer(
    words: Iterable[str], out_dir: Path | None = None, *, model_max_length: int = 512
) -> Any:
    """Builds a T5-style unigram tokenizer (`▁`-prefixed pieces) over `words` plus single letters.

    Ids: 0 `<pad>`, 1 `</s>`, 2 `<unk>`, then `▁`, lower-case letters and digits with and without
    `▁`, then one `▁word` piece per word. Unknown characters map to `<unk>`. Deterministic for a
    given word list. Saved to `out_dir` when given.
    """
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces += [(c, -8.0) for c in chars] + [("▁" + c, -8.0) for c in chars]
    seen = {p for p, _ in pieces}
    for word in sorted({w.strip().lower() for w in words if w.strip()}):
        piece = "▁" + word
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -1.0))
    tok = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def export_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    """Writes the HF tokenizer files and its OpenVINO tokenizer/detokenizer pair into `out_dir`."""
    from openvino_tokenizers import convert_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    ov_tok, ov_detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    _save(ov_tok, out_dir / "openvino_tokenizer.xml")
    _save(ov_detok, out_dir / "openvino_detokenizer.xml")


# --------------------------------------------------------------------------------------------------
# Conversion helpers


def _save(model: ov.Model, xml: Path) -> None:
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=False)


def _convert(
    module: nn.Module,
    inputs: Sequence[tuple[str, torch.Tensor, Sequence[int]]],
    output_names: Sequence[str],
) -> ov.Model:
    """Traces `module` with the example inputs and names its inputs and outputs.

    `inputs` holds (name, example tensor, partial shape with -1 for dynamic dims) in forward order.
    """
    module.eval()
    example = tuple(t for _, t, _ in inputs)
    shapes = [(ov.PartialShape(list(s)), _ov_type(t.dtype)) for _, t, s in inputs]
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=shapes)
    if len(model.inputs) != len(inputs):
        raise RuntimeError(f"expected {len(inputs)} inputs, converted model has {len(model.inputs)}")
    if len(model.outputs) != len(output_names):
        raise RuntimeError(
            f"expected outputs {list(output_names)}, converted model has {len(model.outputs)}"
        )
    for port, (name, _, _) in zip(model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})
    model.validate_nodes_and_infer_types()
    return model


def _ov_type(dtype: torch.dtype) -> ov.Type:
    return {
        torch.float32: ov.Type.f32,
        torch.int64: ov.Type.i64,
        torch.int32: ov.Type.i32,
    }[dtype]


def _write_config(config: Any, out_dir: Path) -> None:
    """Writes a diffusers or transformers config as `out_dir/config.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(config, "to_json_string"):  # transformers PretrainedConfig
        (out_dir / "config.json").write_text(config.to_json_string(use_diff=False))
    else:  # diffusers FrozenDict
        data = dict(config)
        (out_dir / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _diffusers_config(model: Any, class_name: str) -> dict[str, Any]:
    import diffusers

    data = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    data = json.loads(json.dumps(data))  # tuples -> lists
    return {"_class_name": class_name, "_diffusers_version": diffusers.__version__, **data}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Component wrappers (fixed signatures so tracing sees plain tensors in and a tuple out)


class _ClipText(nn.Module):
    """CLIPTextModel with optimum's outputs. The attribute is named `text_model` so that weight names
    read `text_model.encoder.layers.N...` as in transformers 4.x, which kohya `lora_te_*` keys match."""

    def __init__(self, text_encoder: nn.Module, hidden_states: bool) -> None:
        super().__init__()
        self.text_model = _inner_text_model(text_encoder)
        self.hidden_states = hidden_states

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        last, pooled, hidden = _clip_forward(self.text_model, input_ids, self.hidden_states)
        return (last, pooled, *hidden)


class _ClipTextWithProjection(nn.Module):
    """CLIPTextModelWithProjection: text_embeds, last_hidden_state, hidden_states.0..N (SDXL's second
    text encoder; GenAI reads text_embeds at index 0 and hidden_states[-2] at index N+1)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_model = _inner_text_model(text_encoder)
        self.text_projection = text_encoder.text_projection

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        last, pooled, hidden = _clip_forward(self.text_model, input_ids, True)
        return (self.text_projection(pooled), last, *hidden)


def _inner_text_model(text_encoder: nn.Module) -> nn.Module:
    """The module holding embeddings/encoder/final_layer_norm (transformers 4.x and 5.x)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return getattr(inner, "text_model", inner)


def _clip_forward(
    text_model: nn.Module, input_ids: torch.Tensor, with_hidden: bool
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """CLIP text transformer forward with an explicit causal mask.

    transformers 5.x builds the mask through `create_causal_mask`, whose data-dependent shortcuts do
    not trace; an additive [seq, seq] mask gives the same result and traces to plain ops.
    """
    hidden = text_model.embeddings(input_ids=input_ids)
    seq = input_ids.shape[-1]
    mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)
    mask = mask[None, None, :, :]
    states = [hidden]
    for layer in text_model.encoder.layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    last = text_model.final_layer_norm(hidden)
    eos = text_model.config.eos_token_id
    ids = input_ids.to(torch.int)
    # legacy configs (eos_token_id 2): EOS is the largest id in the sequence; else its first position
    pos = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)
    pooled = last[torch.arange(last.shape[0]), pos]
    return last, pooled, states if with_hidden else []


class _T5Encoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, return_dict=False)[0]


class _UNet(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _UNetXL(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        cond = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=cond, return_dict=False
        )[0]


class _UNetLCM(nn.Module):
    """A UNet with ``time_cond_proj_dim``: the guidance scale enters as an embedding (timestep_cond)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                         return_dict=False)[0]


class _SD3Transformer(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            return_dict=False,
        )[0]


class _FluxTransformer(nn.Module):
    def __init__(self, transformer: nn.Module, guidance: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor, img_ids: torch.Tensor,
                txt_ids: torch.Tensor, *guidance: torch.Tensor) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance[0] if self.guidance else None,
            return_dict=False,
        )[0]


class _VaeDecoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class _VaeEncoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample, return_dict=False)[0].parameters


# --------------------------------------------------------------------------------------------------
# Component exporters


def _ids(batch: int, seq: int) -> torch.Tensor:
    return torch.zeros((batch, seq), dtype=torch.int64)


def _export_clip(text_encoder: Any, out_dir: Path, *, hidden_states: bool = False) -> None:
    seq = text_encoder.config.max_position_embeddings
    layers = text_encoder.config.num_hidden_layers
    wrapper = _ClipText(text_encoder, hidden_states)
    names = ["last_hidden_state", "pooler_output"]
    if hidden_states:
        names += [f"hidden_states.{i}" for i in range(layers + 1)]
    model = _convert(wrapper, [("input_ids", _ids(1, seq), (-1, -1))], names)
    _write_config(text_encoder.config, out_dir)
    _save(model, out_dir / "openvino_model.xml")


def _export_clip_with_projection(text_encoder: Any, out_dir: Path) -> None:
    seq = text_encoder.config.max_position_embeddings
    layers = text_encoder.config.num_hidden_layers
    names = ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(layers + 1)]
    model = _convert(
        _ClipTextWithProjection(text_encoder), [("input_ids", _ids(1, seq), (-1, -1))], names
    )
    _write_config(text_encoder.config, out_dir)
    _save(model, out_dir / "openvino_model.xml")


def _export_t5(text_encoder: Any, out_dir: Path, seq: int) -> None:
    model = _convert(
        _T5Encoder(text_encoder), [("input_ids", _ids(1, seq), (-1, -1))], ["last_hidden_state"]
    )
    _write_config(text_encoder.config, out_dir)
    _save(model, out_dir / "openvino_model.xml")


def _export_unet(unet: Any, out_dir: Path, seq: int, *, xl: bool = False, lcm: bool = False) -> None:
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    inputs: list[tuple[str, torch.Tensor, Sequence[int]]] = [
        ("sample", torch.randn(2, cfg.in_channels, size, size), (-1, cfg.in_channels, -1, -1)),
        ("timestep", torch.tensor([1], dtype=torch.int64), (1,)),
        ("encoder_hidden_states", torch.randn(2, seq, cfg.cross_attention_dim),
         (-1, -1, cfg.cross_attention_dim)),
    ]
    wrapper: nn.Module = _UNet(unet)
    if xl:
        embeds = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs += [
            ("text_embeds", torch.randn(2, embeds), (-1, embeds)),
            ("time_ids", torch.randn(2, 6), (-1, 6)),
        ]
        wrapper = _UNetXL(unet)
    if lcm:
        dim = cfg.time_cond_proj_dim
        inputs.append(("timestep_cond", torch.randn(1, dim), (-1, dim)))
        wrapper = _UNetLCM(unet)
    model = _convert(wrapper, inputs, ["out_sample"])
    _write_json(out_dir / "config.json", _diffusers_config(unet, "UNet2DConditionModel"))
    _save(model, out_dir / "openvino_model.xml")


def _export_flux_transformer(transformer: Any, out_dir: Path, seq: int, latent_hw: int) -> None:
    cfg = transformer.config
    tokens = (latent_hw // 2) ** 2
    inputs: list[tuple[str, torch.Tensor, Sequence[int]]] = [
        ("hidden_states", torch.randn(1, tokens, cfg.in_channels), (-1, -1, cfg.in_channels)),
        ("encoder_hidden_states", torch.randn(1, seq, cfg.joint_attention_dim),
         (-1, -1, cfg.joint_attention_dim)),
        ("pooled_projections", torch.randn(1, cfg.pooled_projection_dim),
         (-1, cfg.pooled_projection_dim)),
        ("timestep", torch.tensor([1.0]), (-1,)),
        ("img_ids", torch.zeros(tokens, 3), (-1, 3)),
        ("txt_ids", torch.zeros(seq, 3), (-1, 3)),
    ]
    if cfg.guidance_embeds:
        inputs.append(("guidance", torch.tensor([3.5]), (-1,)))
    model = _convert(_FluxTransformer(transformer, cfg.guidance_embeds), inputs,
                     ["out_hidden_states"])
    _write_json(out_dir / "config.json", _diffusers_config(transformer, "FluxTransformer2DModel"))
    _save(model, out_dir / "openvino_model.xml")


def _export_sd3_transformer(transformer: Any, out_dir: Path, seq: int, latent_hw: int) -> None:
    cfg = transformer.config
    inputs: list[tuple[str, torch.Tensor, Sequence[int]]] = [
        ("hidden_states", torch.randn(2, cfg.in_channels, latent_hw, latent_hw), (-1, cfg.in_channels, -1, -1)),
        ("encoder_hidden_states", torch.randn(2, seq, cfg.joint_attention_dim),
         (-1, -1, cfg.joint_attention_dim)),
        ("pooled_projections", torch.randn(2, cfg.pooled_projection_dim), (-1, cfg.pooled_projection_dim)),
        ("timestep", torch.tensor([1.0, 1.0]), (-1,)),
    ]
    model = _convert(_SD3Transformer(transformer), inputs, ["out_hidden_states"])
    _write_json(out_dir / "config.json", _diffusers_config(transformer, "SD3Transformer2DModel"))
    _save(model, out_dir / "openvino_model.xml")


def _export_vae(vae: Any, out: Path, *, encoder: bool = True) -> None:
    cfg = vae.config
    scale = 2 ** (len(cfg.block_out_channels) - 1)
    config = _diffusers_config(vae, "AutoencoderKL")
    latent = torch.randn(1, cfg.latent_channels, 8, 8)
    model = _convert(_VaeDecoder(vae), [("latent_sample", latent, (-1, cfg.latent_channels, -1, -1))],
                     ["sample"])
    _write_json(out / "vae_decoder" / "config.json", config)
    _save(model, out / "vae_decoder" / "openvino_model.xml")
    if encoder:
        image = torch.randn(1, cfg.in_channels, 8 * scale, 8 * scale)
        model = _convert(_VaeEncoder(vae), [("sample", image, (-1, cfg.in_channels, -1, -1))],
                         ["latent_parameters"])
        _write_json(out / "vae_encoder" / "config.json", config)
        _save(model, out / "vae_encoder" / "openvino_model.xml")


def _write_pipeline_configs(pipe: Any, out: Path) -> None:
    """model_index.json (components as [library, class]) and scheduler/scheduler_config.json."""
    index = json.loads(json.dumps(dict(pipe.config)))
    index["_class_name"] = type(pipe).__name__
    import diffusers

    index["_diffusers_version"] = diffusers.__version__
    _write_json(out / "model_index.json", index)
    sched = _diffusers_config(pipe.scheduler, type(pipe.scheduler).__name__)
    _write_json(out / "scheduler" / "scheduler_config.json", sched)


def _prepare(out_dir: Path) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


# --------------------------------------------------------------------------------------------------
# Pipelines


def export_sd15(pipe: Any, out_dir: Path) -> None:
    """Exports a StableDiffusionPipeline to `out_dir` (replaced if it exists).

    Readable by openvino_genai Text2ImagePipeline, Image2ImagePipeline and InpaintingPipeline.
    """
    out = _prepare(out_dir)
    with torch.no_grad():
        _write_pipeline_configs(pipe, out)
        export_tokenizer(pipe.tokenizer, out / "tokenizer")
        _export_clip(pipe.text_encoder, out / "text_encoder")
        seq = pipe.text_encoder.config.max_position_embeddings
        _export_unet(pipe.unet, out / "unet", seq)
        _export_vae(pipe.vae, out)


def export_sd15_inpaint(pipe: Any, out_dir: Path) -> None:
    """Exports a StableDiffusionInpaintPipeline (9-channel UNet) to `out_dir` (replaced if it exists)."""
    export_sd15(pipe, out_dir)


def export_sdxl(pipe: Any, out_dir: Path) -> None:
    """Exports a StableDiffusionXLPipeline to `out_dir` (replaced if it exists)."""
    out = _prepare(out_dir)
    with torch.no_grad():
        _write_pipeline_configs(pipe, out)
        export_tokenizer(pipe.tokenizer, out / "tokenizer")
        export_tokenizer(pipe.tokenizer_2, out / "tokenizer_2")
        _export_clip(pipe.text_encoder, out / "text_encoder", hidden_states=True)
        _export_clip_with_projection(pipe.text_encoder_2, out / "text_encoder_2")
        seq = pipe.text_encoder.config.max_position_embeddings
        _export_unet(pipe.unet, out / "unet", seq, xl=True)
        _export_vae(pipe.vae, out)


def export_flux(pipe: Any, out_dir: Path) -> None:
    """Exports a FluxPipeline to `out_dir` (replaced if it exists)."""
    out = _prepare(out_dir)
    with torch.no_grad():
        _write_pipeline_configs(pipe, out)
        export_tokenizer(pipe.tokenizer, out / "tokenizer")
        export_tokenizer(pipe.tokenizer_2, out / "tokenizer_2")
        _export_clip(pipe.text_encoder, out / "text_encoder")
        t5_seq = min(64, pipe.tokenizer_2.model_max_length)
        _export_t5(pipe.text_encoder_2, out / "text_encoder_2", t5_seq)
        _export_flux_transformer(pipe.transformer, out / "transformer", t5_seq, latent_hw=8)
        _export_vae(pipe.vae, out)


def export_sd3(pipe: Any, out_dir: Path) -> None:
    """Exports a StableDiffusion3Pipeline (CLIP-L/G-like encoders with projection, T5) to `out_dir`."""
    out = _prepare(out_dir)
    with torch.no_grad():
        _write_pipeline_configs(pipe, out)
        export_tokenizer(pipe.tokenizer, out / "tokenizer")
        export_tokenizer(pipe.tokenizer_2, out / "tokenizer_2")
        export_tokenizer(pipe.tokenizer_3, out / "tokenizer_3")
        _export_clip_with_projection(pipe.text_encoder, out / "text_encoder")
        _export_clip_with_projection(pipe.text_encoder_2, out / "text_encoder_2")
        t5_seq = min(64, pipe.tokenizer_3.model_max_length)
        _export_t5(pipe.text_encoder_3, out / "text_encoder_3", t5_seq)
        clip_seq = pipe.text_encoder.config.max_position_embeddings
        _export_sd3_transformer(pipe.transformer, out / "transformer", clip_seq + t5_seq, latent_hw=8)
        _export_vae(pipe.vae, out)


def export_lcm(pipe: Any, out_dir: Path) -> None:
    """Exports a LatentConsistencyModelPipeline (UNet with time_cond_proj_dim) to `out_dir`."""
    out = _prepare(out_dir)
    with torch.no_grad():
        _write_pipeline_configs(pipe, out)
        export_tokenizer(pipe.tokenizer, out / "tokenizer")
        _export_clip(pipe.text_encoder, out / "text_encoder")
        seq = pipe.text_encoder.config.max_position_embeddings
        _export_unet(pipe.unet, out / "unet", seq, lcm=True)
        _export_vae(pipe.vae, out)


EXPORTERS: dict[str, Callable[[Any, Path], None]] = {
    "sd15": export_sd15,
    "sd15-inpaint": export_sd15_inpaint,
    "sdxl": export_sdxl,
    "flux": export_flux,
    "sd3": export_sd3,
    "lcm": export_lcm,
}


def export_pipeline(pipe: Any, out_dir: Path, *, kind: str) -> None:
    """Exports `pipe` with the exporter for `kind` (one of EXPORTERS)."""
    try:
        exporter = EXPORTERS[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(EXPORTERS)}") from None
    exporter(pipe, out_dir)
