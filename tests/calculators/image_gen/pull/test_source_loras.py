"""The --source_loras grammar: the reference's examples and every error, with the exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from calculators.image_gen.source_loras import (
    CompositeComponentSource,
    LoraSourceKind,
    SourceLorasError,
    parse_source_loras,
)

HF, URL, LOCAL = LoraSourceKind.HF_REPO, LoraSourceKind.URL, LoraSourceKind.LOCAL
NPU_STATIC = ("NPU device with multiple LoRA adapters requires composite definitions to specify blend ratios. "
              "All adapters are loaded with STATIC mode and runtime switching is unavailable. "
              "Add composite entries to --source_loras or use a single adapter.")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A working folder with LoRA files at the reference's example paths (./loras/..., /models/...)."""
    for rel in ("loras/my_style.safetensors", "models/loras/my_style.safetensors", "models/loras/pokemon.safetensors",
                "file name with spaces.safetensors", "weird:1.safetensors"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"{}")
    (tmp_path / "adir.safetensors").mkdir()
    return tmp_path


# (value, [(alias, kind, source, filename, alpha)], [(alias, [(ref, alpha)])]); {tmp} is the base folder.
VALID = [
    ("pokemon=juliensimon/sd-pokemon-lora", [("pokemon", HF, "juliensimon/sd-pokemon-lora", None, None)], []),
    ("xray=DoctorDiffusion/doctor-diffusion-s-xray-xl-lora@DD-xray-v1.safetensors",
     [("xray", HF, "DoctorDiffusion/doctor-diffusion-s-xray-xl-lora", "DD-xray-v1.safetensors", None)], []),
    ("style=https://huggingface.co/user/repo/resolve/main/model.safetensors",
     [("style", URL, "https://huggingface.co/user/repo/resolve/main/model.safetensors", "model.safetensors", None)],
     []),
    ("custom={tmp}/models/loras/my_style.safetensors",
     [("custom", LOCAL, "{tmp}/models/loras/my_style.safetensors", "my_style.safetensors", None)], []),
    ("custom=./loras/my_style.safetensors",
     [("custom", LOCAL, "./loras/my_style.safetensors", "my_style.safetensors", None)], []),
    ("pokemon={tmp}/models/loras/pokemon.safetensors:0.6",
     [("pokemon", LOCAL, "{tmp}/models/loras/pokemon.safetensors", "pokemon.safetensors", 0.6)], []),
    ("pokemon=juliensimon/sd-pokemon-lora:0.8", [("pokemon", HF, "juliensimon/sd-pokemon-lora", None, 0.8)], []),
    ("ukiyo=KappaNeuro/ukiyo-e-art@Ukiyo-e Art.safetensors",
     [("ukiyo", HF, "KappaNeuro/ukiyo-e-art", "Ukiyo-e Art.safetensors", None)], []),
    ("ukiyo=KappaNeuro/ukiyo-e-art@Ukiyo-e Art.safetensors:0.4",
     [("ukiyo", HF, "KappaNeuro/ukiyo-e-art", "Ukiyo-e Art.safetensors", 0.4)], []),
    ("xray=DoctorDiffusion/doctor-diffusion-s-xray-xl-lora@DD-xray-v1.safetensors,ukiyo=KappaNeuro/ukiyo-e-art@Ukiyo-e "
     "Art.safetensors,vector=DoctorDiffusion/doctor-diffusion-s-controllable-vector-art-xl-lora@DD-vector-v2.safetensors",
     [("xray", HF, "DoctorDiffusion/doctor-diffusion-s-xray-xl-lora", "DD-xray-v1.safetensors", None),
      ("ukiyo", HF, "KappaNeuro/ukiyo-e-art", "Ukiyo-e Art.safetensors", None),
      ("vector", HF, "DoctorDiffusion/doctor-diffusion-s-controllable-vector-art-xl-lora", "DD-vector-v2.safetensors",
       None)], []),
    ("pokemon=juliensimon/sd-pokemon-lora,anime=user/anime-lora,mix=@pokemon:0.7+@anime:0.5",
     [("pokemon", HF, "juliensimon/sd-pokemon-lora", None, None), ("anime", HF, "user/anime-lora", None, None)],
     [("mix", [("pokemon", 0.7), ("anime", 0.5)])]),
    ("blend=@xray:0.5+@ukiyo,xray=org/xray,ukiyo=org/ukiyo",  # composites may come first
     [("xray", HF, "org/xray", None, None), ("ukiyo", HF, "org/ukiyo", None, None)],
     [("blend", [("xray", 0.5), ("ukiyo", None)])]),
    ("s=http://127.0.0.1:8080/a/b.safetensors",  # a port is not an alpha
     [("s", URL, "http://127.0.0.1:8080/a/b.safetensors", "b.safetensors", None)], []),
    ("s=http://127.0.0.1:8080/a/b.safetensors:0.3",
     [("s", URL, "http://127.0.0.1:8080/a/b.safetensors", "b.safetensors", 0.3)], []),
    ("s=https://h.example/x.safetensors?download=true",
     [("s", URL, "https://h.example/x.safetensors?download=true", "x.safetensors", None)], []),
    ("s=https://h.example/Ukiyo-e%20Art.safetensors",
     [("s", URL, "https://h.example/Ukiyo-e%20Art.safetensors", "Ukiyo-e Art.safetensors", None)], []),
    ("s={tmp}/weird:1.safetensors",  # a colon inside a file name is not an alpha
     [("s", LOCAL, "{tmp}/weird:1.safetensors", "weird:1.safetensors", None)], []),
    ("s=./file name with spaces.safetensors:-0.5",  # negative weights are allowed
     [("s", LOCAL, "./file name with spaces.safetensors", "file name with spaces.safetensors", -0.5)], []),
    ("a=org/a:1.0,mix=@a:0.5", [("a", HF, "org/a", None, 1.0)], [("mix", [("a", 0.5)])]),
    ("my.lora_v2-1=org/a, b=org/b", [("my.lora_v2-1", HF, "org/a", None, None), ("b", HF, "org/b", None, None)], []),
    ("gpt2-style=gpt2", [("gpt2-style", HF, "gpt2", None, None)], []),
    ("", [], []),
]


@pytest.mark.parametrize(("value", "adapters", "composites"), VALID, ids=range(len(VALID)))
def test_valid_values(value: str, adapters: list[tuple[object, ...]], composites: list[tuple[object, ...]],
                      base: Path) -> None:
    parsed = parse_source_loras(value.replace("{tmp}", str(base)), base_dir=base)
    got = [(a.alias, a.kind, a.source, a.filename, a.alpha) for a in parsed.adapters]
    assert got == [tuple(str(x).replace("{tmp}", str(base)) if isinstance(x, str) else x for x in a)
                   for a in adapters]
    assert [(c.alias, [(p.adapter_alias, p.alpha) for p in c.components]) for c in parsed.composites] == composites


def test_local_paths_become_absolute(base: Path) -> None:
    parsed = parse_source_loras("a=./loras/my_style.safetensors,b=./loras/../loras/my_style.safetensors:0.5",
                                base_dir=base)
    assert [a.path for a in parsed.adapters] == [base / "loras/my_style.safetensors"] * 2


def test_composite_components_keep_their_order(base: Path) -> None:
    parsed = parse_source_loras("b=org/b,a=org/a,c=org/c,mix=@c+@a:0.2+@b", base_dir=base)
    assert parsed.composites[0].components == (CompositeComponentSource("c", None), CompositeComponentSource("a", 0.2),
                                               CompositeComponentSource("b", None))


@pytest.mark.parametrize("value", ["a=org/a", "a=org/a,mix=@a:0.5", "a=org/a,b=org/b,mix=@a:0.3+@b:0.7"])
def test_npu_accepts_one_adapter_or_one_full_composite(value: str, base: Path) -> None:
    assert parse_source_loras(value, device="NPU", base_dir=base)


# (value, device, exact message); {tmp} is the base folder.
ERRORS = [
    ("juliensimon/sd-pokemon-lora", None,
     "Missing alias in --source_loras entry: 'juliensimon/sd-pokemon-lora'. Expected format: alias=source"),
    ("=org/repo", None, "Missing alias in --source_loras entry: '=org/repo'. Expected format: alias=source"),
    ("pokemon=", None, "Empty source in --source_loras entry: 'pokemon='. Expected format: alias=source[:alpha]"),
    ("my lora=org/repo", None,
     "Invalid LoRA alias 'my lora' in --source_loras entry: 'my lora=org/repo'. Alias must contain only alphanumeric "
     "characters, hyphens, underscores, or dots."),
    ("pokémon=org/repo", None,
     "Invalid LoRA alias 'pokémon' in --source_loras entry: 'pokémon=org/repo'. Alias must contain only alphanumeric "
     "characters, hyphens, underscores, or dots."),
    ("..=org/repo", None,  # an alias names the folder loras/<alias>/: no way out of it
     "Invalid LoRA alias '..' in --source_loras entry: '..=org/repo'. Alias may not be '.' or '..': adapters are "
     "fetched into loras/<alias>/"),
    (".=org/repo", None,
     "Invalid LoRA alias '.' in --source_loras entry: '.=org/repo'. Alias may not be '.' or '..': adapters are "
     "fetched into loras/<alias>/"),
    ("../x=org/repo", None,
     "Invalid LoRA alias '../x' in --source_loras entry: '../x=org/repo'. Alias must contain only alphanumeric "
     "characters, hyphens, underscores, or dots."),
    ("a\\b=org/repo", None,
     "Invalid LoRA alias 'a\\b' in --source_loras entry: 'a\\b=org/repo'. Alias must contain only alphanumeric "
     "characters, hyphens, underscores, or dots."),
    ("p=org/repo:abc", None,
     "Invalid alpha value 'abc' in --source_loras entry: 'p=org/repo:abc'. Expected a number, e.g. p=org/repo:0.8"),
    ("p=org/repo:", None,
     "Invalid alpha value '' in --source_loras entry: 'p=org/repo:'. Expected a number, e.g. p=org/repo:0.8"),
    ("p=org/repo:nan", None,
     "Invalid alpha value 'nan' in --source_loras entry: 'p=org/repo:nan'. Expected a number, e.g. p=org/repo:0.8"),
    ("p=https://h.example/x.safetensors:abc", None,
     "Invalid alpha value 'abc' in --source_loras entry: 'p=https://h.example/x.safetensors:abc'. Expected a number, "
     "e.g. p=org/repo:0.8"),
    ("p=https://h.example/x.bin", None,
     "URL must point to a .safetensors file in --source_loras entry: 'p=https://h.example/x.bin'"),
    ("p=https://h.example/", None, "Cannot extract filename from URL in --source_loras entry: 'p=https://h.example/'"),
    ("p=/models/x.bin", None,
     "Local path must point to a .safetensors file in --source_loras entry: 'p=/models/x.bin'"),
    ("p=/nonexistent/x.safetensors", None,
     "Local LoRA file does not exist: '/nonexistent/x.safetensors' in --source_loras entry: "
     "'p=/nonexistent/x.safetensors'"),
    ("p=./adir.safetensors", None,
     "Local LoRA path is not a file: './adir.safetensors' in --source_loras entry: 'p=./adir.safetensors'"),
    ("custom=C:\\models\\loras\\my_style.safetensors", None,
     "Local LoRA file does not exist: 'C:\\models\\loras\\my_style.safetensors' in --source_loras entry: "
     "'custom=C:\\models\\loras\\my_style.safetensors'"),
    ("pokemon=C:\\models\\loras\\pokemon.safetensors:0.75", None,  # the alpha is split off, the drive is not
     "Local LoRA file does not exist: 'C:\\models\\loras\\pokemon.safetensors' in --source_loras entry: "
     "'pokemon=C:\\models\\loras\\pokemon.safetensors:0.75'"),
    ("c=D:/models/x.safetensors", None,
     "Local LoRA file does not exist: 'D:/models/x.safetensors' in --source_loras entry: 'c=D:/models/x.safetensors'"),
    ("c=.\\loras\\x.safetensors", None,
     "Local LoRA file does not exist: '.\\loras\\x.safetensors' in --source_loras entry: 'c=.\\loras\\x.safetensors'"),
    ("p=org/repo@", None, "Empty filename after @ in --source_loras entry: 'p=org/repo@'"),
    ("p=org/repo@weights.bin", None,
     "File after @ must be a .safetensors file in --source_loras entry: 'p=org/repo@weights.bin'"),
    ("p=not a repo", None,
     "Invalid Hugging Face repository 'not a repo' in --source_loras entry: 'p=not a repo'. Expected "
     "org/name[@file.safetensors], an http(s) URL, or a local path starting with /, ./ or a drive letter"),
    ("p=loras/x.safetensors", None,  # a relative path without ./ is a repository id, and not a valid one
     "'loras/x.safetensors' in --source_loras entry: 'p=loras/x.safetensors' is neither a Hugging Face repository "
     "nor a local path: start a relative path with ./ (or give an absolute path)"),
    ("a=org/a,,b=org/b", None,
     "Empty entry in --source_loras: 'a=org/a,,b=org/b'. Entries are alias=source, separated by single commas"),
    ("a=org/a,a=org/b", None,
     "Duplicate LoRA alias 'a' in --source_loras entry: 'a=org/b'. Each alias must be unique."),
    ("a=org/a,a=@a", None, "Duplicate LoRA alias 'a' in --source_loras entry: 'a=@a'. Each alias must be unique."),
    ("a=org/a,mix=@a+@b", None,
     "Composite LoRA references unknown adapter 'b' in --source_loras entry: 'mix=@a+@b' (known adapters: a)"),
    ("a=org/a,m1=@a,m2=@m1", None,
     "Composite LoRA references 'm1', which is a composite, in --source_loras entry: 'm2=@m1'. Components must be "
     "adapters"),
    ("mix=@", None,
     "Composite LoRA has no components in --source_loras entry: 'mix=@'. Expected format: "
     "alias=@adapter[:alpha]+@adapter[:alpha]"),
    ("a=org/a,mix=@a+", None,
     "Empty composite LoRA component in --source_loras entry: 'mix=@a+'. Components are separated by a single +"),
    ("a=org/a,mix=@a+b", None,
     "Invalid composite LoRA component 'b' in --source_loras entry: 'mix=@a+b'. Each component must start with @"),
    ("a=org/a,mix=@a:x", None,
     "Invalid alpha 'x' in composite LoRA component '@a:x' in --source_loras entry: 'mix=@a:x'"),
    ("a=org/a,mix=@:0.5", None,
     "Empty adapter reference in composite LoRA component '@:0.5' in --source_loras entry: 'mix=@:0.5'"),
    ("a=org/a,mix=@a+@a:0.2", None,
     "Composite LoRA 'mix' lists adapter 'a' twice in --source_loras entry: 'mix=@a+@a:0.2'"),
    ("a=org/a:0.8,b=org/b,mix=@a:0.5+@b", None,
     "LoRA adapter 'a' has alpha 0.8 in --source_loras entry 'a=org/a:0.8' and composite 'mix' gives it alpha 0.5. "
     "Alpha must be specified at only one level: either on the individual adapter or on the composite components, "
     "not both."),
    ("a=org/a,b=org/b", "NPU", NPU_STATIC),
    ("a=org/a,b=org/b", "CPU GPU NPU", NPU_STATIC),
    ("a=org/a,b=org/b,m1=@a+@b,m2=@a:0.5+@b", "NPU",
     "NPU device allows at most one composite in --source_loras: adapters are compiled in with STATIC mode and the "
     "composite's alias is the only model name, got 2: m1, m2"),
    ("a=org/a,b=org/b,mix=@a", "NPU",
     "NPU device compiles every LoRA adapter in (STATIC mode), so composite 'mix' must list all of them; missing: b "
     "in --source_loras entry: 'mix=@a'"),
]


@pytest.mark.parametrize(("value", "device", "message"), ERRORS, ids=range(len(ERRORS)))
def test_errors(value: str, device: str | None, message: str, base: Path) -> None:
    with pytest.raises(SourceLorasError) as info:
        parse_source_loras(value, device=device, base_dir=base)
    assert str(info.value) == message


def test_every_grammar_error_names_the_flag() -> None:
    """SPEC §9: CLI grammar errors name the flag (the pull turns them into exit status 2)."""
    assert all("--source_loras" in message for _, _, message in ERRORS)


def test_several_adapters_are_fine_without_npu(base: Path) -> None:
    parsed = parse_source_loras("a=org/a,b=org/b", device="CPU GPU GPU", base_dir=base)
    assert [a.alias for a in parsed.adapters] == ["a", "b"]
