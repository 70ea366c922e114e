"""Fixtures of the plugin's tests."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from prompt_guard_helpers import GUARDED_SD, Server, serve, unguarded_graph


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server: "guarded-sd" (the example graph as shipped) and "plain-sd" (the same without the guard)."""
    root = tmp_path_factory.mktemp("guarded")
    unguarded_graph(root / "plain-sd")
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": "guarded-sd", "base_path": str(GUARDED_SD)}},
        {"config": {"name": "plain-sd", "base_path": "plain-sd"}},
    ]}))
    with serve(config, root) as server:
        yield server
    assert server.process.returncode == 0, server.output()
    assert "Traceback" not in server.output()
