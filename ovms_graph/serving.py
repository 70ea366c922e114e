"""The graphs a server serves: loading, routing by model name, admission, execution, shutdown.

:class:`Serving` is everything the front end needs that is not HTTP. It loads every configured graph
(off the event loop), builds the routing table of model names (graph names and the aliases
calculators registered at load), admits requests per graph (at most ``concurrency`` running, at most
``max_queued`` waiting, 503 at once beyond that), runs them in a bounded thread pool and, at
shutdown, waits for running requests before closing the graphs' resources. Between SIGTERM and the
drain it can be a lame duck: not ready, yet still serving (see ``--drain_delay``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovms_graph.aliases import GraphAliases, cross_graph_problems
from ovms_graph.calculator import RequestContext
from ovms_graph.config import GraphEntry
from ovms_graph.errors import BadRequest, ConfigError, NotFound, Problem, RequestError, ServiceUnavailable
from ovms_graph.graph import Graph
from ovms_graph.metrics import Metrics
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_entries

log = logging.getLogger("ovms_graph.serving")

REQUEST_TAG = "HTTP_REQUEST_PAYLOAD"
RESPONSE_TAG = "HTTP_RESPONSE_PAYLOAD"
#: Requests a graph runs at once when none of its calculators states a limit.
DEFAULT_GRAPH_CONCURRENCY = 4
MAX_WORKERS = 64
#: Seconds a client is told to wait (Retry-After) when the server is loading or busy.
RETRY_LOADING = 5
RETRY_BUSY = 1


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    #: After SIGTERM, before the drain: readiness is false but requests are still served.
    LAME_DUCK = "lame_duck"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class ModelName:
    """A routable model name: a graph's own name or an alias one of its calculators registered."""

    id: str
    graph: str
    kind: str  # "graph" or the alias kind ("lora", "composite", ...)


class GraphSlot:
    """One loaded graph with its admission control: ``limit`` running, ``max_queued`` waiting."""

    def __init__(self, graph: Graph, limit: int, max_queued: int, metrics: Metrics) -> None:
        self.graph = graph
        self.name = graph.name
        self.limit = limit
        self.max_queued = max_queued
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Semaphore(limit)
        self._metrics = metrics
        self.idle = asyncio.Event()
        self.idle.set()

    async def admit(self) -> None:
        """Wait for a free slot; ServiceUnavailable at once when ``max_queued`` are already waiting."""
        if self._free.locked():
            if self.waiting >= self.max_queued:
                raise ServiceUnavailable(
                    f'model "{self.name}" is busy: {self.running} request(s) running and {self.waiting} '
                    "waiting, which is the queue limit; retry later", retry_after=RETRY_BUSY, code="queue_full")
            self.waiting += 1
            self._metrics.queue_depth.labels(self.name).set(self.waiting)
            try:
                await self._free.acquire()
            finally:
                self.waiting -= 1
                self._metrics.queue_depth.labels(self.name).set(self.waiting)
        else:
            await self._free.acquire()
        self.running += 1
        self.idle.clear()
        self._metrics.in_flight.labels(self.name).set(self.running)

    def release(self) -> None:
        """Free the slot taken by :meth:`admit`; call only after the graph run has ended."""
        self.running -= 1
        self._free.release()
        self._metrics.in_flight.labels(self.name).set(self.running)
        if self.running == 0:
            self.idle.set()


class Serving:
    """Loads, routes and runs the graphs of one server. Create it inside the event loop's thread."""

    def __init__(self, entries: Sequence[GraphEntry], *, registry_factory: Callable[[], Registry],
                 max_queued: int, metrics: Metrics, cache_dir: Path | None = None) -> None:
        self.entries = list(entries)
        self.cache_dir = cache_dir
        self.metrics = metrics
        self.max_queued = max_queued
        self.state = State.LOADING
        #: Why loading failed (FAILED state only); ``internal_error`` when it was not a configuration problem.
        self.error: ConfigError | None = None
        self.internal_error = False
        self.created = int(time.time())
        self.slots: dict[str, GraphSlot] = {}
        self.names: dict[str, ModelName] = {}
        self.hints: dict[str, str] = {}  # reserved, unlisted name -> what to use instead
        self.executor: ThreadPoolExecutor | None = None
        self._registry_factory = registry_factory
        self._jobs: set[asyncio.Task[None]] = set()
        self._loaded = asyncio.Event()

    # ----- lifecycle -----
    @property
    def ready(self) -> bool:
        return self.state is State.READY

    async def load(self) -> None:
        """Load every graph off the event loop, then turn ready; on failure the state is FAILED and
        :attr:`error` lists every problem. Never raises ConfigError."""
        try:
            graphs = await asyncio.to_thread(self._load_graphs)
            if self.state is State.STOPPING:
                for graph in graphs:
                    graph.close()
                return
            self._install(graphs)
            self.state = State.READY
            self.metrics.ready.set(1)
            log.info("ready: %d graph(s), models %s", len(self.slots), ", ".join(self.names) or "none")
        except ConfigError as exc:
            self.error = exc
            if self.state is not State.STOPPING:
                self.state = State.FAILED
        except Exception as exc:  # a runtime or plugin bug: report it like a problem, keep the traceback in the log
            log.exception("loading the graphs failed")
            self.error = ConfigError(f"loading the graphs failed: {type(exc).__name__}: {exc}")
            self.internal_error = True
            if self.state is not State.STOPPING:
                self.state = State.FAILED
        finally:
            self._loaded.set()

    async def wait_loaded(self) -> State:
        """Wait until loading has ended (successfully or not); the resulting state."""
        await self._loaded.wait()
        return self.state

    def _load_graphs(self) -> list[Graph]:
        registry = self._registry_factory()
        graphs: list[Graph] = []
        problems: list[Problem] = []
        # Aliases the options declare are checked before any pipeline is built: a config whose graphs
        # clash is refused at once, with every other problem of its graphs.
        check = validate_entries(self.entries, registry)
        if check.clashes:
            raise ConfigError(check.all_problems)
        for entry in self.entries:
            if self.state is State.STOPPING:
                break
            started = time.monotonic()
            log.info('loading graph "%s" from %s', entry.name, entry.graph_path)
            try:
                graph = Graph.load(entry.name, entry.graph_path, registry, cache_dir=self.cache_dir)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            graphs.append(graph)
            problems.extend(_io_problems(entry, graph))
            log.info('graph "%s" loaded in %.2f s (%d node(s), %d request(s) at once)', entry.name,
                     time.monotonic() - started, len(graph.nodes), graph.concurrency or DEFAULT_GRAPH_CONCURRENCY)
        problems.extend(_name_problems(self.entries, graphs))
        if problems:
            for graph in graphs:
                graph.close()
            raise ConfigError(problems)
        return graphs

    def _install(self, graphs: list[Graph]) -> None:
        workers = 0
        for graph in graphs:
            limit = graph.concurrency or DEFAULT_GRAPH_CONCURRENCY
            self.slots[graph.name] = GraphSlot(graph, limit, self.max_queued, self.metrics)
            self.metrics.add_graph(graph.name, estimate=graph.memory_estimate)
            workers += limit * max(1, len(graph.nodes))
            if graph.base_routable:
                self.names[graph.name] = ModelName(graph.name, graph.name, "graph")
            for alias in graph.aliases:
                if alias.listed:
                    self.names[alias.name] = ModelName(alias.name, graph.name, alias.kind)
                elif alias.not_routable_hint:
                    self.hints[alias.name] = alias.not_routable_hint
        self.executor = ThreadPoolExecutor(max_workers=max(2, min(MAX_WORKERS, workers)),
                                           thread_name_prefix="ovms-graph")

    @property
    def lame_duck(self) -> bool:
        return self.state is State.LAME_DUCK

    def enter_lame_duck(self) -> bool:
        """Readiness turns false at once while new requests are still served, so load balancers stop
        routing here before intake stops. Only a READY server enters it; whether it did."""
        if self.state is not State.READY:
            return False
        self.state = State.LAME_DUCK
        self.metrics.ready.set(0)
        return True

    def begin_shutdown(self) -> None:
        """Readiness turns false and new requests get 503; running ones continue."""
        if self.state is not State.STOPPING:
            log.info("shutting down: refusing new requests")
        self.state = State.STOPPING
        self.metrics.ready.set(0)

    async def close(self, grace: float) -> None:
        """After the front end stopped: wait up to ``grace`` seconds for running graph runs to end,
        then close every graph that is idle (a graph still running is left open: closing resources
        under a running request could crash the process)."""
        self.begin_shutdown()
        await self._loaded.wait()
        jobs = list(self._jobs)
        if jobs:
            log.info("waiting up to %.1f s for %d running request(s)", grace, len(jobs))
            _, pending = await asyncio.wait(jobs, timeout=grace)
            if pending:
                log.warning("%d request(s) still running after %.1f s", len(pending), grace)
        for slot in self.slots.values():
            if slot.running:
                log.warning('graph "%s" still runs %d request(s); its resources are not closed', slot.name,
                            slot.running)
                continue
            await asyncio.to_thread(slot.graph.close)
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("graphs closed")

    # ----- requests -----
    def check_available(self) -> None:
        """Raise 503 unless the server accepts requests (ready, or in the lame duck after SIGTERM)."""
        if self.state in (State.READY, State.LAME_DUCK):
            return
        if self.state is State.LOADING:
            raise ServiceUnavailable("models are still loading; retry later", retry_after=RETRY_LOADING,
                                     code="loading")
        if self.state is State.STOPPING:
            raise ServiceUnavailable("the server is shutting down", retry_after=RETRY_LOADING,
                                     code="shutting_down")
        raise ServiceUnavailable("the models failed to load; see the server log", retry_after=RETRY_LOADING,
                                 code="not_ready")

    def listed(self) -> list[ModelName]:
        """Every routable name, in configuration order."""
        return list(self.names.values())

    def resolve(self, model: str | None) -> tuple[GraphSlot, str]:
        """The graph that serves ``model`` and the routable name it was matched by.

        Without a model, the only graph is used (under its only routable name); otherwise 400.
        Unknown names are 404; a graph name hidden by its calculators, or a reserved name its
        calculators gave a hint for, is 400 naming what to use.
        """
        if model is None:
            return self._only_graph()
        name = self.names.get(model)
        if name is not None:
            return self.slots[name.graph], name.id
        raise self._unroutable(model)

    def _only_graph(self) -> tuple[GraphSlot, str]:
        """The only graph under its only routable name; 400 when there is no single one to choose."""
        if len(self.slots) == 1:
            slot = next(iter(self.slots.values()))
            own = [n.id for n in self.names.values() if n.graph == slot.name]
            if slot.graph.base_routable:
                return slot, slot.name
            if len(own) == 1:
                return slot, own[0]
        raise BadRequest("model field is missing", param="model")

    def _unroutable(self, model: str) -> RequestError:
        """Why no routable name is ``model``: a graph hidden by its calculators or a reserved name with a
        hint (400 naming what to use), else an unknown name (404)."""
        if model in self.slots:
            aliases = [f'"{n.id}"' for n in self.names.values() if n.graph == model]
            choice = aliases[0] if len(aliases) == 1 else "one of " + ", ".join(aliases)
            return BadRequest(f'model "{model}" cannot be used directly: its adapters are compiled in; '
                              f"use {choice}", param="model", code="model_not_routable")
        hint = self.hints.get(model)
        if hint is not None:
            return BadRequest(f'model "{model}" cannot be used directly: {hint}', param="model",
                              code="model_not_routable")
        shown = model if len(model) <= 200 else model[:200] + "..."
        return NotFound(f'model "{shown}" does not exist; GET /v3/models lists the models served here',
                        param="model", code="model_not_found")

    async def execute(self, slot: GraphSlot, inputs: dict[str, Any], ctx: RequestContext
                      ) -> AsyncGenerator[Any, None]:
        """Admit and run one request on ``slot``'s graph, yielding its response packets in order.

        The run happens in its own task: when the consumer stops early (client gone, error while
        writing) the request is cancelled and its slot is only released once every node of the run
        has finished. Raises ServiceUnavailable when the queue is full and the graph's RequestError
        when the run fails.
        """
        await slot.admit()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def run() -> None:
            try:
                async for tag, packet in slot.graph.run(inputs, ctx, self.executor):
                    if tag == RESPONSE_TAG:
                        queue.put_nowait(("packet", packet))
                    else:
                        log.debug("request %s: ignoring a packet on graph output %s", ctx.request_id, tag)
                queue.put_nowait(("end", None))
            except RequestError as exc:
                queue.put_nowait(("error", exc))
            except Exception as exc:  # a runtime bug: the handler turns it into a generic 500
                queue.put_nowait(("error", exc))
            finally:
                slot.release()

        job = asyncio.create_task(run(), name=f"request-{ctx.request_id}")
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "packet":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            if not job.done():
                ctx.cancel()


def _io_problems(entry: GraphEntry, graph: Graph) -> list[Problem]:
    problems = []
    for tag, what in ((REQUEST_TAG, "input_stream"), (RESPONSE_TAG, "output_stream")):
        keys = graph.input_streams if what == "input_stream" else set(graph.output_streams.values())
        if tag not in keys:
            problems.append(Problem(
                f'graph "{entry.name}" has no {what} tagged {tag}; the server feeds each request to '
                f'"{REQUEST_TAG}:..." and answers with "{RESPONSE_TAG}:..."', file=str(entry.graph_path)))
    return problems


def _name_problems(entries: Sequence[GraphEntry], graphs: list[Graph]) -> list[Problem]:
    """Aliases must match the alias grammar, be unique across every graph and differ from graph names."""
    files = {e.name: str(e.graph_path) for e in entries}
    named = [GraphAliases(g.name, files.get(g.name), tuple(a.name for a in g.aliases)) for g in graphs]
    return cross_graph_problems(named, graph_names=[e.name for e in entries])
