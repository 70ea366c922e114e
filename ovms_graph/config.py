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
_MODEL_KEYS = {"name", "base_path", "graph_path"}
_MEDIAPIPE_KEYS = {"name", "base_path", "graph_path"}


@dataclass(frozen=True)
class GraphEntry:
    """One graph to serve: its served name and the graph.pbtxt it comes from."""

    name: str
    graph_path: Path
    where: str  # e.g. 'config.json: model_config_list[0] "sd"', for messages


def _entry(raw: object, where: str, keys: set[str], base: Path, problems: list[Problem], file: str
           ) -> GraphEntry | None:
    if not isinstance(raw, dict):
        problems.append(Problem(f"{where}: expected an object, got {type(raw).__name__}", file=file))
        return None
    name = raw.get("name")
    label = f'{where} "{name}"' if isinstance(name, str) else where
    ok = True
    for key in raw:
        if key not in keys:
            problems.append(Problem(f"{label}: unknown key \"{key}\" (allowed: {', '.join(sorted(keys))})",
                                    file=file))
            ok = False
    if not isinstance(name, str) or not name:
        problems.append(Problem(f'{label}: "name" must be a non-empty string', file=file))
        return None
    base_path = raw.get("base_path")
    graph_path = raw.get("graph_path")
    for key, value in (("base_path", base_path), ("graph_path", graph_path)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(Problem(f'{label}: "{key}" must be a non-empty string', file=file))
            ok = False
    if base_path is None and graph_path is None:
        problems.append(Problem(f'{label}: "base_path" is required', file=file))
        return None
    if not ok:
        return None
    folder = base / base_path if isinstance(base_path, str) else base
    path = folder / graph_path if isinstance(graph_path, str) else folder / "graph.pbtxt"
    if isinstance(base_path, str) and not folder.is_dir():
        problems.append(Problem(f'{label}: base_path "{base_path}" is not a directory ({folder})', file=file))
        return None
    if not path.is_file():
        problems.append(Problem(f"{label}: graph file {path} does not exist", file=file))
        return None
    return GraphEntry(name, path, label)


def load_config(path: Path) -> list[GraphEntry]:
    """Every graph ``path`` lists; raises ConfigError naming each bad entry."""
    file = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(Problem(f"cannot read config: {exc.strerror or exc}", file=file)) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(f"not valid JSON: {exc}", file=file)) from exc
    if not isinstance(data, dict):
        raise ConfigError(Problem("expected a JSON object at the top level", file=file))
    problems: list[Problem] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(Problem(f'unknown key "{key}" (allowed: model_config_list, mediapipe_config_list)',
                                    file=file))
    base = path.parent
    entries: list[GraphEntry] = []
    for list_key, keys in (("model_config_list", _MODEL_KEYS), ("mediapipe_config_list", _MEDIAPIPE_KEYS)):
        items = data.get(list_key, [])
        if not isinstance(items, list):
            problems.append(Problem(f'"{list_key}" must be a list', file=file))
            continue
        for i, item in enumerate(items):
            where = f"{list_key}[{i}]"
            if list_key == "model_config_list":
                if not isinstance(item, dict) or set(item) != {"config"}:
                    problems.append(Problem(f'{where}: expected {{"config": {{...}}}}', file=file))
                    continue
                item = item["config"]
            entry = _entry(item, where, keys, base, problems, file)
            if entry is not None:
                entries.append(entry)
    seen: dict[str, GraphEntry] = {}
    for e in entries:
        if e.name in seen:
            problems.append(Problem(f'{e.where}: name "{e.name}" is already used by {seen[e.name].where}', file=file))
        seen.setdefault(e.name, e)
    if not entries and not problems:
        problems.append(Problem("no graphs configured (model_config_list is empty)", file=file))
    if problems:
        raise ConfigError(problems)
    return entries


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
