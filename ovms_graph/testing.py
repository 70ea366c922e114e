"""Test helpers: run one calculator node in isolation (MediaPipe ``framework/calculator_runner.h``).

:class:`CalculatorRunner` builds a one-node graph from a pbtxt ``node { ... }`` snippet: every input
stream of the node becomes a graph input and every output stream a graph output. The graph is
validated and loaded exactly as the server would (``check_options``, ``create_resources``), then
packets are fed by tag and every output packet is returned in order::

    runner = CalculatorRunner('''
        node {
          name: "up"
          calculator: "UpperCalculator"
          input_stream: "TEXT:in"
          output_stream: "TEXT:out"
        }''', registry=registry)
    assert runner.run({"TEXT": "hi"}) == [("TEXT", "HI")]

The snippet is parsed as if it lived at ``graph_file`` (default ``graph.pbtxt`` in the current
folder; nothing is written there), so relative paths in node options resolve against that folder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import RequestContext
from ovms_graph.errors import Problem
from ovms_graph.graph import Graph
from ovms_graph.graph_config import GraphSpec, StreamRef, parse_graph_text
from ovms_graph.json_body import parse_json_object
from ovms_graph.packets import HttpPayload
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph


def wrap_node(node_text: str, option_types: Sequence[type[Message]] = ()) -> str:
    """A whole graph around ``node { ... }`` snippets: their unconnected streams become graph streams.

    The declarations are appended, so line numbers in messages still match the snippet.
    """
    spec = parse_graph_text(node_text, Path("graph.pbtxt"), option_types)
    inputs = [ref for node in spec.nodes for ref in node.input_streams]
    outputs = [ref for node in spec.nodes for ref in node.output_streams]
    lines = [*_declarations("input_stream", inputs, outputs), *_declarations("output_stream", outputs, inputs)]
    return node_text.rstrip("\n") + "\n" + "\n".join(dict.fromkeys(lines)) + "\n"


def _declarations(field: str, refs: list[StreamRef], others: list[StreamRef]) -> list[str]:
    """``field: "TAG:name"`` for each of ``refs`` that no stream of ``others`` connects to."""
    connected = {ref.name for ref in others}
    return [f'{field}: "{ref.raw}"' for ref in refs if ref.name not in connected]


class CalculatorRunner:
    """One node, loaded like the server loads it, fed and drained by tag."""

    def __init__(self, node_text: str, *, registry: Registry, graph_file: Path | None = None,
                 graph_name: str = "graph") -> None:
        self.registry = registry
        self.graph_name = graph_name
        self.graph_file = graph_file or Path.cwd() / "graph.pbtxt"
        self.text = wrap_node(node_text, registry.option_types())
        self.spec: GraphSpec = parse_graph_text(self.text, self.graph_file, registry.option_types())
        self._graph: Graph | None = None

    def problems(self) -> list[Problem]:
        """Every validation problem of the node (empty when it would load)."""
        return validate_graph(self.spec, self.registry, graph_name=self.graph_name)

    @property
    def graph(self) -> Graph:
        """The loaded graph (loads it on first use; raises ConfigError listing every problem)."""
        if self._graph is None:
            self._graph = Graph.from_spec(self.graph_name, self.spec, self.registry)
        return self._graph

    async def run_async(self, inputs: Mapping[str, Any], request: RequestContext | None = None
                        ) -> list[tuple[str, Any]]:
        """Feed ``inputs`` (by graph input tag) and return every ``(tag, packet)`` output in order.

        Raises the RequestError the graph raised, as the front end would see it.
        """
        outputs: list[tuple[str, Any]] = []
        async for tag, packet in self.graph.run(inputs, request or RequestContext()):
            outputs.append((tag, packet))
        return outputs

    def run(self, inputs: Mapping[str, Any], request: RequestContext | None = None) -> list[tuple[str, Any]]:
        """``run_async`` on a private event loop, for synchronous tests."""
        return asyncio.run(self.run_async(inputs, request))

    def json_payload(self, body: bytes, *, model: str | None = None,
                     route: str = "images/generations") -> HttpPayload:
        """An ``HttpPayload`` for a JSON ``body`` as the front end builds one: ``parsed_json`` comes
        from the front end's own parser (:func:`~ovms_graph.json_body.parse_json_object`), so a body
        the server refuses (malformed, NaN or infinities, duplicate keys, not an object) raises the
        same BadRequest here. ``model`` defaults to the graph's name."""
        return HttpPayload(uri=f"/v3/{route}", method="POST", headers={"Content-Type": "application/json"},
                           body=body, route=route, model=model or self.graph_name,
                           parsed_json=parse_json_object(body))

    def close(self) -> None:
        """Release the node's resources. Idempotent."""
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __enter__(self) -> CalculatorRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The server's log line naming its address (ovms_graph.server logs it at INFO once the port is bound).
LISTENING_RE = re.compile(r"listening on http://(\S+):(\d+)")


class ServerProcess:
    """``ovms-graph serve`` as a real subprocess, its stdout and stderr in one log file.

    Start it on ``--rest_port 0`` and read the port the kernel picked from the log::

        with serving(["--config_path", str(config), "--rest_port", "0"], cwd=tmp_path) as server:
            requests.get(server.url + "/v3/models")
        assert server.process.returncode == 0, server.output()

    Every ``limit`` and ``timeout`` here is a safety net against hanging forever, never a
    performance assertion. Waits that fail raise AssertionError carrying the server's log.
    """

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self._address: tuple[str, int] | None = None

    @classmethod
    def start(cls, args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
              command: Sequence[str] | None = None, log: Path | None = None,
              drain_delay: float | None = 0.0) -> ServerProcess:
        """Run ``[*command, "serve", *args]`` in ``cwd`` and return at once (not yet listening).

        ``--drain_delay`` is added (default 0: SIGTERM drains at once, as tests want) unless ``args``
        already give it or ``drain_delay`` is None.
        ``command`` defaults to the ``ovms-graph`` script next to ``sys.executable``. ``env``
        replaces the environment, as in ``subprocess.Popen`` (None inherits this process's).
        ``log`` defaults to a new ``ovms-graph-serve-*.log`` file in ``cwd``.
        """
        if command is None:
            command = (str(Path(sys.executable).parent / "ovms-graph"),)
        if log is None:
            log = cwd / f"ovms-graph-serve-{time.monotonic_ns()}.log"
        if drain_delay is not None and not any(a.split("=")[0] == "--drain_delay" for a in args):
            args = [*args, "--drain_delay", str(drain_delay)]
        with log.open("wb") as out:
            process = subprocess.Popen([*command, "serve", *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                       env=None if env is None else dict(env))
        return cls(process, log)

    @property
    def port(self) -> int:
        """The port from the log's "listening on" line (after :meth:`wait_listening`)."""
        return self._listening()[1]

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` as the server logged it (after :meth:`wait_listening`)."""
        host, port = self._listening()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _listening(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the server's address is not known yet; call wait_listening() or wait_ready() first")
        return self._address

    def output(self) -> str:
        """Everything the server wrote so far, stdout and stderr interleaved."""
        return self.log.read_text(errors="replace")

    def wait_listening(self, limit: float = 600.0, *, interval: float = 0.05) -> int:
        """The port, once the server has logged it; fails if the process exits first or ``limit`` passes."""
        deadline = time.monotonic() + limit
        while self._address is None:
            exited = self.process.poll() is not None  # before reading, so a last line is never missed
            found = LISTENING_RE.search(self.output())
            if found:
                self._address = (found.group(1), int(found.group(2)))
            elif exited:
                raise AssertionError(f"ovms-graph serve exited with {self.process.returncode} before listening:\n"
                                     f"{self.output()}")
            elif time.monotonic() >= deadline:
                raise AssertionError(f"ovms-graph serve did not listen within {limit} s:\n{self.output()}")
            else:
                time.sleep(interval)
        return self._address[1]

    def is_ready(self) -> bool:
        """Whether GET /v2/health/ready answers 200 now (no API key needed; no proxy used)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + "/v2/health/ready", timeout=10) as response:
                return int(response.status) == 200
        except (OSError, http.client.HTTPException):  # refused, reset, or an HTTPError such as 503
            return False

    def wait_ready(self, limit: float = 600.0, *, interval: float = 0.1) -> None:
        """Wait until listening and ready; fails if the process exits first or ``limit`` passes."""
        deadline = time.monotonic() + limit
        self.wait_listening(limit)
        while not self.is_ready():
            if self.process.poll() is not None:
                raise AssertionError(f"ovms-graph serve exited with {self.process.returncode} before it was "
                                     f"ready:\n{self.output()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"ovms-graph serve was not ready within {limit} s:\n{self.output()}")
            time.sleep(interval)

    def stop(self, timeout: float = 600.0) -> int:
        """SIGTERM (the server drains), wait up to ``timeout``, kill if still running; the exit code.

        A process that already exited is only reaped. Killed, the code is ``-SIGKILL``.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL without draining, if still running, and reap."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def serving(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
            command: Sequence[str] | None = None, log: Path | None = None, limit: float = 600.0,
            stop_timeout: float = 600.0, drain_delay: float | None = 0.0) -> Iterator[ServerProcess]:
    """:meth:`ServerProcess.start`, wait ready (``limit``), yield, then :meth:`ServerProcess.stop`.

    The exit code is ``server.process.returncode`` after the block.
    """
    server = ServerProcess.start(args, cwd=cwd, env=env, command=command, log=log, drain_delay=drain_delay)
    try:
        server.wait_ready(limit)
        yield server
    finally:
        server.stop(stop_timeout)


class ThreadedServer:
    """The real aiohttp application serving a config.json on a free 127.0.0.1 port, run on its own
    event loop in a background thread of the test process, so tests can use ordinary blocking HTTP
    clients (requests, the openai SDK) and still inspect the loaded graphs::

        server = ThreadedServer.start(config, registry=registry)
        requests.get(server.url + "/v3/models")
        server.stop()
    """

    def __init__(self, url: str, app: Any, loop: asyncio.AbstractEventLoop, runner: Any,
                 thread: threading.Thread) -> None:
        self.url = url
        self.app = app
        self.loop = loop
        self.runner = runner
        self.thread = thread

    @classmethod
    def start(cls, config: Path, *, registry: Registry, options: Any = None, limit: float = 900.0
              ) -> ThreadedServer:
        """Serve every graph of ``config``; returns once all are loaded. Raises RuntimeError naming
        the load error when a graph fails to load. ``limit`` is a safety net, not a performance bound."""
        from aiohttp import web

        from ovms_graph.config import load_config
        from ovms_graph.server import SERVING, create_app
        from ovms_graph.serving import State
        from ovms_graph.settings import ServerOptions

        app = create_app(load_config(config), options or ServerOptions(rest_port=0), registry=registry)
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[web.AppRunner] = concurrent.futures.Future()

        async def start() -> None:
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            state = await app[SERVING].wait_loaded()
            if state is not State.READY:
                raise RuntimeError(f"{config} did not load: {app[SERVING].error}")
            started.set_result(runner)

        def done(task: asyncio.Task[None]) -> None:
            if task.exception() is not None:
                started.set_exception(task.exception())

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.create_task(start()).add_done_callback(done)
            loop.run_forever()

        thread = threading.Thread(target=run, name=f"server-{config.parent.name}", daemon=True)
        thread.start()
        runner = started.result(timeout=limit)
        host, port = runner.addresses[0][:2]
        return cls(f"http://{host}:{port}", app, loop, runner, thread)

    def graph(self, name: str) -> Graph:
        """The loaded graph served as ``name``."""
        from ovms_graph.server import SERVING

        graph: Graph = self.app[SERVING].slots[name].graph
        return graph

    def stop(self, timeout: float = 120.0) -> None:
        """Shut the application down (in-flight requests drain, graphs close) and end the thread."""
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=timeout)
