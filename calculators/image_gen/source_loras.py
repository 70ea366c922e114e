"""The ``--source_loras`` grammar: which LoRA adapters to fetch and register, under which aliases.

``--source_loras`` is a comma-separated list of entries (the reference's "Registering LoRA Adapters")::

    alias=source[:alpha]               an adapter
    alias=@adapter[:alpha]+@adapter... a composite blending adapters listed earlier or later

Sources are told apart by their shape, in this order:

1. ``https://...`` or ``http://...``: a direct URL to a ``.safetensors`` file;
2. ``/...``, ``./...``, ``.\\...``, ``X:\\...`` or ``X:/...``: a local ``.safetensors`` file;
3. anything else: a Hugging Face repository ``org/name``, optionally ``org/name@file.safetensors``
   (file names may contain spaces).

An adapter's ``:alpha`` is the text after the last colon, unless that text holds a path separator
or is the file name itself, so ``https://host:8080/x.safetensors`` and ``C:\\x.safetensors`` keep their
colons. :func:`parse_source_loras` checks everything that can be checked without the network and
raises :class:`SourceLorasError` with a message naming the flag and the entry.
"""

from __future__ import annotations

import enum
import math
import os.path
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ovms_graph.aliases import is_dot_name, is_valid_alias

FLAG = "--source_loras"
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9_.-]{1,96}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
SAFETENSORS = ".safetensors"


class SourceLorasError(ValueError):
    """A ``--source_loras`` value that cannot be used; ``str()`` is the user-facing message."""


class LoraSourceKind(enum.Enum):
    """Where an adapter's weights come from."""

    HF_REPO = "Hugging Face repository"
    URL = "URL"
    LOCAL = "local file"


@dataclass(frozen=True)
class LoraAdapterSource:
    """One ``alias=source[:alpha]`` entry.

    ``source`` is the repository id, URL or path as written (without ``@file`` and ``:alpha``).
    ``filename`` is the file named after ``@`` (HF), the URL's last path segment, or the local
    file's name. ``path`` is the absolute local file (LOCAL only). ``alpha`` is None when not given.
    """

    alias: str
    kind: LoraSourceKind
    source: str
    filename: str | None
    alpha: float | None
    entry: str
    path: Path | None = None

    @property
    def spec(self) -> str:
        """The source as written, ``@file`` included and ``:alpha`` left out (identifies a download)."""
        if self.kind is LoraSourceKind.HF_REPO and self.filename is not None:
            return f"{self.source}@{self.filename}"
        return self.source


@dataclass(frozen=True)
class CompositeComponentSource:
    """``@adapter[:alpha]`` inside a composite; ``alpha`` None when not given."""

    adapter_alias: str
    alpha: float | None


@dataclass(frozen=True)
class CompositeLoraSource:
    """One ``alias=@a[:alpha]+@b[:alpha]...`` entry; components keep their order."""

    alias: str
    components: tuple[CompositeComponentSource, ...]
    entry: str


@dataclass(frozen=True)
class SourceLoras:
    """A parsed ``--source_loras`` value."""

    adapters: tuple[LoraAdapterSource, ...] = ()
    composites: tuple[CompositeLoraSource, ...] = ()

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every alias, adapters first, in the order given."""
        return tuple(a.alias for a in self.adapters) + tuple(c.alias for c in self.composites)

    def __bool__(self) -> bool:
        return bool(self.adapters or self.composites)


def parse_alpha(text: str) -> float | None:
    """``text`` as a finite float, or None when it is not a plain decimal number."""
    if not _NUMBER_RE.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def is_url(source: str) -> bool:
    """Rule 1: ``https://`` or ``http://``."""
    return source.startswith(("https://", "http://"))


def is_local_path(source: str) -> bool:
    """Rule 2: ``/``, ``./``, ``.\\`` or a Windows drive ``X:\\`` / ``X:/``."""
    return source.startswith(("/", "./", ".\\")) or bool(_DRIVE_RE.match(source))


def _split_alpha(source: str) -> tuple[str, str | None]:
    """``source`` without its ``:alpha`` suffix, and that suffix (None if there is none)."""
    colon = source.rfind(":")
    if colon <= 0:
        return source, None
    if colon == 1 and source[0].isalpha():  # a Windows drive letter, C:...
        return source, None
    suffix = source[colon + 1:]
    if "/" in suffix or "\\" in suffix or suffix.endswith(SAFETENSORS):
        return source, None  # a URL port, a path with a colon, or a file name containing one
    return source[:colon], suffix


def valid_repo_id(repo: str) -> bool:
    """Whether ``repo`` is a Hugging Face repository id (``name`` or ``org/name``)."""
    parts = repo.split("/")
    if len(parts) > 2 or any(not _REPO_PART_RE.match(p) for p in parts):
        return False
    return not ("--" in repo or ".." in repo or repo.startswith(("-", ".")) or repo.endswith((".git", "-", ".")))


def _adapter(alias: str, source: str, entry: str, base_dir: Path) -> LoraAdapterSource:
    """An ``alias=source[:alpha]`` entry: the alpha, then the source by its shape (URL, local file, repo)."""
    source, alpha_text = _split_alpha(source)
    alpha = _adapter_alpha(alias, alpha_text, entry)
    if not source:
        raise SourceLorasError(f"Empty source in {FLAG} entry: '{entry}'. Expected format: alias=source[:alpha]")
    if is_url(source):
        return _url_adapter(alias, source, alpha, entry)
    if is_local_path(source):
        return _local_adapter(alias, source, alpha, entry, base_dir)
    return _repo_adapter(alias, source, alpha, entry)


def _adapter_alpha(alias: str, alpha_text: str | None, entry: str) -> float | None:
    """The adapter's ``:alpha`` as a number (None when not given)."""
    if alpha_text is None:
        return None
    alpha = parse_alpha(alpha_text)
    if alpha is None:
        raise SourceLorasError(
            f"Invalid alpha value '{alpha_text}' in {FLAG} entry: '{entry}'. "
            f"Expected a number, e.g. {alias}=org/repo:0.8")
    return alpha


def _url_adapter(alias: str, source: str, alpha: float | None, entry: str) -> LoraAdapterSource:
    """Rule 1: the URL's last path segment names a ``.safetensors`` file."""
    url_path = urlsplit(source).path
    name = unquote(url_path.rsplit("/", 1)[-1]) if "/" in url_path else ""
    if not name:
        raise SourceLorasError(f"Cannot extract filename from URL in {FLAG} entry: '{entry}'")
    if not name.endswith(SAFETENSORS):
        raise SourceLorasError(f"URL must point to a .safetensors file in {FLAG} entry: '{entry}'")
    return LoraAdapterSource(alias, LoraSourceKind.URL, source, name, alpha, entry)


def _local_adapter(alias: str, source: str, alpha: float | None, entry: str, base_dir: Path
                   ) -> LoraAdapterSource:
    """Rule 2: an existing ``.safetensors`` file, relative paths taken from ``base_dir``."""
    if not source.endswith(SAFETENSORS):
        raise SourceLorasError(f"Local path must point to a .safetensors file in {FLAG} entry: '{entry}'")
    path = Path(source)
    if not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        raise SourceLorasError(f"Local LoRA file does not exist: '{source}' in {FLAG} entry: '{entry}'")
    if not path.is_file():
        raise SourceLorasError(f"Local LoRA path is not a file: '{source}' in {FLAG} entry: '{entry}'")
    return LoraAdapterSource(alias, LoraSourceKind.LOCAL, source, path.name, alpha, entry,
                             path=Path(os.path.normpath(path.absolute())))


def _repo_adapter(alias: str, source: str, alpha: float | None, entry: str) -> LoraAdapterSource:
    """Rule 3: ``org/name[@file.safetensors]``."""
    repo, at, filename = source.partition("@")
    if at:
        _check_repo_filename(filename, entry)
    if repo.endswith(SAFETENSORS):
        raise SourceLorasError(
            f"'{repo}' in {FLAG} entry: '{entry}' is neither a Hugging Face repository nor a local path: "
            "start a relative path with ./ (or give an absolute path)")
    if not valid_repo_id(repo):
        raise SourceLorasError(
            f"Invalid Hugging Face repository '{repo}' in {FLAG} entry: '{entry}'. "
            "Expected org/name[@file.safetensors], an http(s) URL, "
            "or a local path starting with /, ./ or a drive letter")
    return LoraAdapterSource(alias, LoraSourceKind.HF_REPO, repo, filename or None, alpha, entry)


def _check_repo_filename(filename: str, entry: str) -> None:
    """The file named after ``@`` is a ``.safetensors`` file."""
    if not filename:
        raise SourceLorasError(f"Empty filename after @ in {FLAG} entry: '{entry}'")
    if not filename.endswith(SAFETENSORS):
        raise SourceLorasError(f"File after @ must be a .safetensors file in {FLAG} entry: '{entry}'")


def _composite(alias: str, source: str, entry: str) -> tuple[CompositeLoraSource, list[str]]:
    """The composite and its references (checked against the adapters by the caller)."""
    if source == "@":
        raise SourceLorasError(f"Composite LoRA has no components in {FLAG} entry: '{entry}'. "
                               "Expected format: alias=@adapter[:alpha]+@adapter[:alpha]")
    components: list[CompositeComponentSource] = []
    for token in source.split("+"):
        component = _component(token, entry)
        if any(c.adapter_alias == component.adapter_alias for c in components):
            raise SourceLorasError(f"Composite LoRA '{alias}' lists adapter '{component.adapter_alias}' twice "
                                   f"in {FLAG} entry: '{entry}'")
        components.append(component)
    return CompositeLoraSource(alias, tuple(components), entry), [c.adapter_alias for c in components]


def _component(token: str, entry: str) -> CompositeComponentSource:
    """One ``@adapter[:alpha]`` component of a composite."""
    if not token:
        raise SourceLorasError(f"Empty composite LoRA component in {FLAG} entry: '{entry}'. "
                               "Components are separated by a single +")
    if not token.startswith("@"):
        raise SourceLorasError(
            f"Invalid composite LoRA component '{token}' in {FLAG} entry: '{entry}'. "
            "Each component must start with @")
    ref, colon, alpha_text = token[1:].partition(":")
    alpha: float | None = None
    if colon:
        alpha = parse_alpha(alpha_text)
        if alpha is None:
            raise SourceLorasError(f"Invalid alpha '{alpha_text}' in composite LoRA component '{token}' "
                                   f"in {FLAG} entry: '{entry}'")
    if not ref:
        raise SourceLorasError(f"Empty adapter reference in composite LoRA component '{token}' "
                               f"in {FLAG} entry: '{entry}'")
    return CompositeComponentSource(ref, alpha)


def _non_default(alpha: float | None) -> bool:
    return alpha is not None and alpha != 1.0


def parse_source_loras(text: str | None, *, device: str | None = None, base_dir: Path | None = None
                       ) -> SourceLoras:
    """Parse and check a ``--source_loras`` value; raises SourceLorasError on the first problem.

    ``device`` is the ``--target_device`` value (NPU loads adapters STATIC, which needs composites
    for several adapters); ``base_dir`` resolves relative local paths (default: the working folder).
    Local files must exist; nothing is fetched. Stages: each entry, then composite references and
    alphas, then the NPU rules.
    """
    if text is None or not text.strip():
        return SourceLoras()
    adapters, composites = _parse_entries(text, base_dir if base_dir is not None else Path.cwd())
    _check_composites(adapters, composites)
    if _is_npu(device) and adapters:
        _check_npu(adapters, [c for c, _ in composites])
    return SourceLoras(tuple(adapters), tuple(c for c, _ in composites))


def _parse_entries(text: str, base: Path
                   ) -> tuple[list[LoraAdapterSource], list[tuple[CompositeLoraSource, list[str]]]]:
    """Each entry on its own: the adapters, and the composites with their (unchecked) references."""
    adapters: list[LoraAdapterSource] = []
    composites: list[tuple[CompositeLoraSource, list[str]]] = []
    seen: set[str] = set()
    for raw in text.split(","):
        alias, source, entry = _entry(raw, text, seen)
        if source.startswith("@"):
            composites.append(_composite(alias, source, entry))
        else:
            adapters.append(_adapter(alias, source, entry, base))
    return adapters, composites


def _is_npu(device: str | None) -> bool:
    """Whether the ``--target_device`` value names NPU."""
    return device is not None and "NPU" in device.split()


def _entry(raw: str, text: str, seen: set[str]) -> tuple[str, str, str]:
    """One ``alias=source`` entry as (alias, source, entry); the alias is valid and new (added to ``seen``)."""
    entry = raw.strip()
    if not entry:
        raise SourceLorasError(
            f"Empty entry in {FLAG}: '{text}'. Entries are alias=source, separated by single commas")
    alias, eq, source = entry.partition("=")
    alias = alias.strip()
    source = source.strip()
    if not eq or not alias:
        raise SourceLorasError(f"Missing alias in {FLAG} entry: '{entry}'. Expected format: alias=source")
    if is_dot_name(alias):
        raise SourceLorasError(
            f"Invalid LoRA alias '{alias}' in {FLAG} entry: '{entry}'. "
            "Alias may not be '.' or '..': adapters are fetched into loras/<alias>/")
    if not is_valid_alias(alias):
        raise SourceLorasError(
            f"Invalid LoRA alias '{alias}' in {FLAG} entry: '{entry}'. "
            "Alias must contain only alphanumeric characters, hyphens, underscores, or dots.")
    if alias in seen:
        raise SourceLorasError(
            f"Duplicate LoRA alias '{alias}' in {FLAG} entry: '{entry}'. Each alias must be unique.")
    seen.add(alias)
    if not source:
        raise SourceLorasError(f"Empty source in {FLAG} entry: '{entry}'. Expected format: alias=source[:alpha]")
    return alias, source, entry


def _check_composites(adapters: list[LoraAdapterSource],
                      composites: list[tuple[CompositeLoraSource, list[str]]]) -> None:
    """Every composite component is a known adapter, and its alpha is given at one level only."""
    by_alias = {a.alias: a for a in adapters}
    composite_aliases = {c.alias for c, _ in composites}
    for composite, refs in composites:
        for ref in refs:
            _check_reference(ref, composite, by_alias, composite_aliases)
        for component in composite.components:
            _check_alpha_level(by_alias[component.adapter_alias], component, composite)


def _check_reference(ref: str, composite: CompositeLoraSource, by_alias: dict[str, LoraAdapterSource],
                     composite_aliases: set[str]) -> None:
    """``ref`` names an adapter, not a composite or an unknown alias."""
    if ref in by_alias:
        return
    if ref in composite_aliases:
        raise SourceLorasError(
            f"Composite LoRA references '{ref}', which is a composite, in {FLAG} entry: '{composite.entry}'. "
            "Components must be adapters")
    known = ", ".join(by_alias) or "none"
    raise SourceLorasError(
        f"Composite LoRA references unknown adapter '{ref}' in {FLAG} entry: '{composite.entry}' "
        f"(known adapters: {known})")


def _check_alpha_level(adapter: LoraAdapterSource, component: CompositeComponentSource,
                       composite: CompositeLoraSource) -> None:
    """An alpha other than 1 is given on the adapter or on the composite component, not on both."""
    if _non_default(adapter.alpha) and _non_default(component.alpha):
        raise SourceLorasError(
            f"LoRA adapter '{adapter.alias}' has alpha {adapter.alpha:g} in {FLAG} entry '{adapter.entry}' "
            f"and composite '{composite.alias}' gives it alpha {component.alpha:g}. "
            "Alpha must be specified at only one level: "
            "either on the individual adapter or on the composite components, not both.")


def _check_npu(adapters: list[LoraAdapterSource], composites: list[CompositeLoraSource]) -> None:
    """NPU compiles adapters in (STATIC): several adapters need exactly one composite listing them all."""
    if len(adapters) > 1 and not composites:
        raise SourceLorasError(
            "NPU device with multiple LoRA adapters requires composite definitions to specify blend ratios. "
            "All adapters are loaded with STATIC mode and runtime switching is unavailable. "
            f"Add composite entries to {FLAG} or use a single adapter.")
    if len(composites) > 1:
        names = ", ".join(c.alias for c in composites)
        raise SourceLorasError(
            f"NPU device allows at most one composite in {FLAG}: adapters are compiled in with STATIC mode "
            f"and the composite's alias is the only model name, got {len(composites)}: {names}")
    if len(adapters) > 1:
        composite = composites[0]
        listed = {c.adapter_alias for c in composite.components}
        missing = [a.alias for a in adapters if a.alias not in listed]
        if missing:
            raise SourceLorasError(
                f"NPU device compiles every LoRA adapter in (STATIC mode), so composite '{composite.alias}' "
                f"must list all of them; missing: {', '.join(missing)} in {FLAG} entry: '{composite.entry}'")
