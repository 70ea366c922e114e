"""config.json in OVMS's form: which graphs to serve, under which names.

Accepted shapes (paths relative to the config file)::

    {"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}]}
    {"model_config_list": [{"config": {"name": "sd", "base_path": "sd", "graph_path": "g.pbtxt"}}]}
    {"mediapipe_config_list": [{"name": "sd", "base_path": "sd", "graph_path": "graph.pbtxt"}]}

The graph is ``base_path/graph.pbtxt`` unless ``graph_path`` says otherwise (relative to
``base_path``). Unknown keys and bad paths are errors that name the entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ovms_graph.errors import ConfigError, Problem

_TOP_KEYS = {"model_config_list", "mediapipe_config_list", "monitoring"}
#: The graph lists, in the order their entries are read; both take the same entry keys.
_LISTS = ("model_config_list", "mediapipe_config_list")
_ENTRY_KEYS = {"name", "base_path", "graph_path"}


@dataclass(frozen=True)
class GraphEntry:
    """One graph to serve: its served name and the graph.pbtxt it comes from."""

    name: str
    graph_path: Path
    where: str  # e.g. 'config.json: model_config_list[0] "sd"', for messages


def load_config(path: Path) -> list[GraphEntry]:
    """Every graph ``path`` lists; raises ConfigError naming each bad entry."""
    file = str(path)
    data = _read_object(path)
    messages = [f'unknown key "{key}" (allowed: model_config_list, mediapipe_config_list)'
                for key in data if key not in _TOP_KEYS]
    entries: list[GraphEntry] = []
    for list_key in _LISTS:
        listed, found = _listed(data, list_key, path.parent)
        entries += listed
        messages += found
    messages += _duplicate_names(entries)
    if not entries and not messages:
        messages.append("no graphs configured (model_config_list is empty)")
    if messages:
        raise ConfigError([Problem(message, file=file) for message in messages])
    return entries


def _read_object(path: Path) -> dict[str, object]:
    """The JSON object in ``path``; raises ConfigError when it cannot be read or is not an object."""
    file = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(Problem(f"cannot read config: {exc.strerror or exc}", file=file)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(f"not valid JSON: {exc}", file=file)) from exc
    if not isinstance(data, dict):
        raise ConfigError(Problem("expected a JSON object at the top level", file=file))
    return data


def _listed(data: dict[str, object], list_key: str, base: Path) -> tuple[list[GraphEntry], list[str]]:
    """The entries of ``data[list_key]`` and the messages for the ones that are not entries."""
    items = data.get(list_key, [])
    if not isinstance(items, list):
        return [], [f'"{list_key}" must be a list']
    entries: list[GraphEntry] = []
    messages: list[str] = []
    for i, item in enumerate(items):
        found = _list_item(list_key, item, f"{list_key}[{i}]", base)
        if isinstance(found, GraphEntry):
            entries.append(found)
        else:
            messages += found
    return entries, messages


def _list_item(list_key: str, item: object, where: str, base: Path) -> GraphEntry | list[str]:
    """One list item: model_config_list wraps its entry in ``{"config": ...}``, mediapipe_config_list does not."""
    if list_key == "model_config_list":
        if not isinstance(item, dict) or set(item) != {"config"}:
            return [f'{where}: expected {{"config": {{...}}}}']
        item = item["config"]
    return _entry(item, where, base)


def _entry(raw: object, where: str, base: Path) -> GraphEntry | list[str]:
    """The graph ``raw`` names, or why it names none: its keys first, then the files they point at."""
    if not isinstance(raw, dict):
        return [f"{where}: expected an object, got {type(raw).__name__}"]
    name = raw.get("name")
    label = f'{where} "{name}"' if isinstance(name, str) else where
    found = _key_problems(raw, label) or _file_problems(raw, base, label)
    if found:
        return found
    assert isinstance(name, str)  # _key_problems refused any other name
    return GraphEntry(name, _graph_file(raw, base)[1], label)


def _key_problems(raw: dict[str, object], label: str) -> list[str]:
    """Unknown keys and ill-typed values; a bad name or a missing base_path ends the check."""
    found = [f'{label}: unknown key "{key}" (allowed: {", ".join(sorted(_ENTRY_KEYS))})'
             for key in raw if key not in _ENTRY_KEYS]
    if not _is_text(raw.get("name")):
        return [*found, f'{label}: "name" must be a non-empty string']
    found += [f'{label}: "{key}" must be a non-empty string' for key in ("base_path", "graph_path")
              if raw.get(key) is not None and not _is_text(raw.get(key))]
    if raw.get("base_path") is None and raw.get("graph_path") is None:
        found.append(f'{label}: "base_path" is required')
    return found


def _file_problems(raw: dict[str, object], base: Path, label: str) -> list[str]:
    """The base_path folder and the graph file must exist."""
    folder, path = _graph_file(raw, base)
    base_path = raw.get("base_path")
    if isinstance(base_path, str) and not folder.is_dir():
        return [f'{label}: base_path "{base_path}" is not a directory ({folder})']
    if not path.is_file():
        return [f"{label}: graph file {path} does not exist"]
    return []


def _graph_file(raw: dict[str, object], base: Path) -> tuple[Path, Path]:
    """The entry's folder (``base_path`` under ``base``) and its graph file in it."""
    base_path = raw.get("base_path")
    graph_path = raw.get("graph_path")
    folder = base / base_path if isinstance(base_path, str) else base
    return folder, folder / graph_path if isinstance(graph_path, str) else folder / "graph.pbtxt"


def _duplicate_names(entries: list[GraphEntry]) -> list[str]:
    """One message for each entry whose name an earlier entry already uses."""
    seen: dict[str, GraphEntry] = {}
    found: list[str] = []
    for e in entries:
        if e.name in seen:
            found.append(f'{e.where}: name "{e.name}" is already used by {seen[e.name].where}')
        seen.setdefault(e.name, e)
    return found


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def write_model_entry(config_path: Path, name: str, base_path: str) -> None:
    """Create ``config_path`` or add/replace the model_config_list entry called ``name``."""
    data: dict[str, object] = {"model_config_list": []}
    if config_path.exists():
        data = json.loads(config_path.read_text(encoding="utf-8"))
    items = data.setdefault("model_config_list", [])
    assert isinstance(items, list)
    items[:] = [i for i in items if not (isinstance(i, dict) and i.get("config", {}).get("name") == name)]
    items.append({"config": {"name": name, "base_path": base_path}})
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
