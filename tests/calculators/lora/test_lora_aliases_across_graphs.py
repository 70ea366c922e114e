"""SPEC §9: LoRA aliases are unique across every graph of one config.json and differ from graph names.

``ovms-graph validate --config_path`` and ``ovms-graph serve --config_path`` both refuse such a config
(exit 2), naming both graphs; serve refuses before building any pipeline. FUSE aliases count too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.calculators.image_gen.helpers import graph_text

REPO = Path(__file__).resolve().parents[3]
SD15 = REPO / "models" / "tiny" / "sd15"
LORA_A = REPO / "models" / "tiny" / "loras" / "lora_a.safetensors"


def lora_graph(folder: Path, *adapters: str) -> Path:
    """``folder/graph.pbtxt``: the tiny SD1.5 with ``alias[:MODE]`` adapters of lora_a."""
    lines = [f'models_path: "{SD15}"']
    for spec in adapters:
        alias, _, mode = spec.partition(":")
        lines.append(f'lora_adapters {{ alias: "{alias}" path: "{LORA_A}" mode: {mode or "DYNAMIC"} }}')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.pbtxt").write_text(graph_text(*lines), encoding="utf-8")
    return folder / "graph.pbtxt"


def config(tmp_path: Path, graphs: dict[str, tuple[str, ...]]) -> Path:
    for name, adapters in graphs.items():
        lora_graph(tmp_path / name, *adapters)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_config_list": [{"config": {"name": n, "base_path": n}} for n in graphs]}))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovms_graph.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300, cwd=REPO)


# (graphs, the one problem line; {dir} is the config's folder)
CLASHES = [
    ({"a": ("style",), "b": ("style",)},
     '{dir}/b/graph.pbtxt: alias "style" of graph "b" is registered also by graph "a"; aliases must be unique '
     "across every graph served together"),
    ({"a": ("ink",), "b": ("ink:FUSE",)},  # FUSE aliases are never routable, yet count toward uniqueness
     '{dir}/b/graph.pbtxt: alias "ink" of graph "b" is registered also by graph "a"; aliases must be unique '
     "across every graph served together"),
    ({"a": ("b",), "b": ()},
     '{dir}/a/graph.pbtxt: alias "b" of graph "a" is also the name of graph "b"; aliases must differ from graph '
     "names"),
]


@pytest.mark.parametrize(("graphs", "message"), CLASHES, ids=["two-graphs", "fuse-counts", "graph-name"])
def test_validate_refuses_aliases_shared_across_graphs(graphs: dict[str, tuple[str, ...]], message: str,
                                                       tmp_path: Path) -> None:
    result = cli("validate", "--config_path", str(config(tmp_path, graphs)))
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [message.format(dir=tmp_path), "validation failed"]


def test_validate_accepts_distinct_aliases(tmp_path: Path) -> None:
    result = cli("validate", "--config_path", str(config(tmp_path, {"a": ("style",), "b": ("ink:FUSE",)})))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is valid") == 2


def test_serve_refuses_aliases_shared_across_graphs_before_loading(tmp_path: Path) -> None:
    path = config(tmp_path, {"a": ("style",), "b": ("style",)})
    result = cli("serve", "--config_path", str(path), "--rest_port", "0", "--drain_delay", "0")
    assert result.returncode == 2, result.stderr
    assert (f'{tmp_path}/b/graph.pbtxt: alias "style" of graph "b" is registered also by graph "a"; aliases must '
            "be unique across every graph served together") in result.stderr.splitlines()
    assert "listening on" in result.stderr and "loading graph" not in result.stderr  # refused before building


def test_an_alias_may_not_be_a_dot_name(tmp_path: Path) -> None:
    result = cli("validate", str(lora_graph(tmp_path / "a", "..")))
    assert result.returncode == 2
    assert 'LoRA adapter alias ".." may not be "." or ".." (it would name a folder outside loras/)' in result.stderr
