"""Shared fixtures of the server tests: graphs written to tmp_path, served in-process."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ovms_graph.calculator import Calculator
from ovms_graph.config import load_config
from ovms_graph.registry import Registry
from ovms_graph.server import SERVING, create_app
from ovms_graph.serving import Serving
from ovms_graph.settings import ServerOptions
from tests.server import fakes


def fake_registry(*extra: type[Calculator]) -> Registry:
    registry = Registry()
    for calc in (*fakes.ALL, *extra):
        registry.register(calc)
    return registry


def write_config(root: Path, graphs: dict[str, str]) -> Path:
    """A config.json serving ``graphs`` (name -> calculator name, or a whole graph.pbtxt text)."""
    items = []
    for i, (name, graph) in enumerate(graphs.items()):
        folder = root / f"graph{i}"
        folder.mkdir(parents=True, exist_ok=True)
        text = graph if "\n" in graph else fakes.graph_text(graph, side=fakes.SIDE_PACKETS.get(graph))
        (folder / "graph.pbtxt").write_text(text)
        items.append({"config": {"name": name, "base_path": folder.name}})
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": items}))
    return config


@dataclass
class Served:
    client: TestClient[web.Request, web.Application]
    app: web.Application

    @property
    def serving(self) -> Serving:
        return self.app[SERVING]

    def resources(self, graph: str) -> Any:
        """The resources value of the (only) resource-bearing node of ``graph``."""
        (value,) = self.serving.slots[graph].graph.resources.values()
        return value


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
def serve(tmp_path: Path, aiohttp_client: Any) -> ServeFactory:
    async def start(graphs: dict[str, str], *, options: ServerOptions | None = None,
                    registry: Registry | None = None, wait: bool = True,
                    registry_factory: Callable[[], Registry] | None = None,
                    runner_shutdown_timeout: float = 60.0) -> Served:
        entries = load_config(write_config(tmp_path, graphs))
        app = create_app(entries, options or ServerOptions(),
                         registry=registry_factory or registry or fake_registry())
        server = TestServer(app)
        await server.start_server(shutdown_timeout=runner_shutdown_timeout)
        client = await aiohttp_client(server)
        if wait:
            await app[SERVING].wait_loaded()
        return Served(client, app)
    return start
