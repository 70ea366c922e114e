"""A loaded graph and the scheduler that runs one request through it.

:meth:`Graph.load` parses and validates a graph.pbtxt, then builds every node's load-time resources
once (the ``IMAGE_GEN_NODE_RESOURCES`` side packet, keyed by node name as OVMS does).
:meth:`Graph.run` pushes one request's packets through the nodes on asyncio: blocking ``process``
calls run in a bounded thread pool (a node whose whole input comes with the request runs ``open``,
``process`` and ``close`` in one worker thread, one hop), packets on a stream reach consumers in emit order, a failing
node ends the request with a typed error after every opened node was closed, and the graph stays
usable for the next request.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from ovms_graph.calculator import (
    Alias,
    Calculator,
    CalculatorContext,
    Closable,
    ConcurrencyLimited,
    LoadContext,
    MemoryEstimated,
    RequestContext,
)
from ovms_graph.errors import ConfigError, GenerationError, Problem, RequestCancelled, RequestError
from ovms_graph.graph_config import GraphSpec, NodeSpec, parse_graph
from ovms_graph.registry import Registry
from ovms_graph.validation import validate_graph

log = logging.getLogger("ovms_graph.graph")

_END = object()


class NodeFailure(GenerationError):
    """A calculator raised something that is not a RequestError; the detail stays in the log."""


@dataclass
class NodeRuntime:
    """A node ready to serve: its calculator class, options and side packets by tag key."""

    spec: NodeSpec
    calculator: type[Calculator]
    options: Message | None
    side_packets: dict[str, Any] = field(default_factory=dict)


def load_spec(path: Path, registry: Registry) -> GraphSpec:
    """Parse ``path`` against the option types of every registered calculator."""
    return parse_graph(path, registry.option_types())


class Graph:
    """A validated graph with its resources built, ready to run requests."""

    def __init__(self, name: str, spec: GraphSpec, nodes: list[NodeRuntime], ctx: LoadContext,
                 resources: dict[str, Any]) -> None:
        self.name = name
        self.spec = spec
        self.nodes = nodes
        self.aliases: list[Alias] = list(ctx.aliases)
        self.base_routable = ctx.base_routable
        self.resources = resources
        self.input_streams = {ref.key: ref.name for ref in spec.input_streams}
        self.output_streams = {ref.name: ref.key for ref in spec.output_streams}
        #: How many requests the graph can run at once (None: no calculator limits it).
        self.concurrency: int | None = _concurrency(resources.values())
        #: Resident bytes the calculators expect their resources to hold (None: none said).
        self.memory_estimate: int | None = _memory_estimate(resources.values())

    @classmethod
    def load(cls, name: str, path: Path, registry: Registry, *, cache_dir: Path | None = None) -> Graph:
        """Parse, validate and build resources; raises ConfigError listing every problem.
        ``cache_dir`` is the server's compiled-model cache folder, offered to every calculator."""
        return cls.from_spec(name, load_spec(path, registry), registry, cache_dir=cache_dir)

    @classmethod
    def from_spec(cls, name: str, spec: GraphSpec, registry: Registry, *, cache_dir: Path | None = None) -> Graph:
        """Validate an already parsed graph and build its resources (``load`` without the file read)."""
        problems = validate_graph(spec, registry, graph_name=name)
        if problems:
            raise ConfigError(problems)
        ctx = LoadContext(name, spec.file, cache_dir=cache_dir)
        resources: dict[str, Any] = {}
        nodes = [_load_node(spec, node, registry.get(node.calculator), ctx, resources)
                 for node in _topological(spec)]
        return cls(name, spec, nodes, ctx, resources)

    def close(self) -> None:
        """Release every node's resources (at shutdown). Idempotent."""
        for value in self.resources.values():
            _close_quietly(value)
        self.resources = {}

    async def run(self, inputs: Mapping[str, Any], request: RequestContext,
                  executor: Executor | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Run one request: feed ``inputs`` (by graph input tag key) and yield ``(tag key, packet)``
        from the graph outputs in order. Raises a RequestError subclass when a node fails.
        Abandoning the iterator cancels the request and still closes every opened node."""
        loop = asyncio.get_running_loop()
        wiring = _Wiring(self.nodes, self.output_streams, loop)
        tasks = [asyncio.ensure_future(self._run_node(rt, wiring.node_queues[rt.spec.index], wiring.publish,
                                                       request, executor, loop)) for rt in self.nodes]
        for t in tasks:
            t.add_done_callback(wiring.on_done)
        self._feed(inputs, wiring.publish)

        open_outputs = set(self.output_streams)
        try:
            while open_outputs:
                item = await wiring.outbox.get()
                if item is None:
                    break
                stream, payload = item
                if payload is _END:
                    open_outputs.discard(stream)
                    continue
                yield self.output_streams[stream], payload[1]
            if wiring.failure.done():
                raise _typed(wiring.failure.result(), request)
        finally:
            if open_outputs or wiring.failure.done():
                request.cancel()
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    def _feed(self, inputs: Mapping[str, Any], publish: Callable[[str, Any], None]) -> None:
        """Publish one packet per graph input, then end every graph input stream."""
        for key, value in inputs.items():
            input_stream = self.input_streams.get(key)
            if input_stream is None:
                raise ValueError(f"graph {self.name} has no input stream tagged {key}")
            publish(input_stream, (0, value))
        for input_stream in self.input_streams.values():
            publish(input_stream, _END)

    async def _run_node(self, rt: NodeRuntime, inputs: dict[str, asyncio.Queue[Any]],
                        publish: Callable[[str, Any], None], request: RequestContext,
                        executor: Executor | None, loop: asyncio.AbstractEventLoop) -> None:
        outputs = {ref.key: ref.name for ref in rt.spec.output_streams}
        counters = {key: itertools.count() for key in outputs}
        lock = threading.Lock()

        def emit(tag: str, value: Any) -> None:
            stream = outputs.get(tag)
            if stream is None:
                raise KeyError(f'node "{rt.spec.label}" has no output stream tagged {tag}')
            with lock:
                ts = next(counters[tag])
            loop.call_soon_threadsafe(publish, stream, (ts, value))

        calc = rt.calculator(rt.spec, rt.side_packets)
        cc = CalculatorContext(node=rt.spec, options=rt.options, side_packets=rt.side_packets,
                               request=request, emit=emit)
        inbox = _Inbox(inputs)
        try:
            if inbox.complete() and not any(inspect.iscoroutinefunction(fn)
                                            for fn in (calc.open, calc.process, calc.close)):
                # Every input packet is already here (a node fed by the request itself): the whole
                # open / process / close sequence runs in one worker thread, one hop instead of three.
                await loop.run_in_executor(executor, _run_sync, calc, cc, inbox, request)
            else:
                await self._run_async(calc, cc, inbox, request, executor, loop)
        finally:
            for stream in outputs.values():
                loop.call_soon_threadsafe(publish, stream, _END)

    async def _run_async(self, calc: Calculator, cc: CalculatorContext, inbox: _Inbox, request: RequestContext,
                         executor: Executor | None, loop: asyncio.AbstractEventLoop) -> None:
        async def call(fn: Callable[[CalculatorContext], Any]) -> None:
            if inspect.iscoroutinefunction(fn):
                await fn(cc)
            else:
                await loop.run_in_executor(executor, fn, cc)

        opened = False
        try:
            await call(calc.open)
            opened = True
            if not inbox.keys:
                await call(calc.process)
                return
            while True:
                for key in inbox.missing():
                    inbox.accept(key, await inbox.get(key))
                if not inbox.next_set(cc):
                    break
                if request.cancelled:
                    raise RequestCancelled("the client went away")
                await call(calc.process)
        finally:
            if opened:
                try:
                    await asyncio.shield(call(calc.close))
                except Exception:
                    log.exception('close() of node "%s" failed', cc.node.label)


class _Wiring:
    """One request's streams: a queue per node input, the graph's outbox (``(stream, item)`` pairs, None
    once a node failed) and the first node failure."""

    def __init__(self, nodes: list[NodeRuntime], output_streams: Mapping[str, str],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.subscribers: dict[str, list[asyncio.Queue[Any]]] = {}
        self.node_queues: dict[int, dict[str, asyncio.Queue[Any]]] = {}
        for rt in nodes:
            self.node_queues[rt.spec.index] = {}
            for ref in rt.spec.input_streams:
                q: asyncio.Queue[Any] = asyncio.Queue()
                self.node_queues[rt.spec.index][ref.key] = q
                self.subscribers.setdefault(ref.name, []).append(q)
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        for stream in output_streams:
            self.subscribers.setdefault(stream, []).append(self.outbox)
        self.failure: asyncio.Future[BaseException] = loop.create_future()

    def publish(self, stream: str, item: Any) -> None:
        """Hand ``item`` to every queue that receives ``stream``."""
        for q in self.subscribers.get(stream, ()):
            q.put_nowait((stream, item) if q is self.outbox else item)

    def on_done(self, task: asyncio.Task[None]) -> None:
        """A node task's done callback: the first failure is kept and wakes the outbox."""
        if not task.cancelled() and task.exception() is not None and not self.failure.done():
            self.failure.set_result(task.exception())  # type: ignore[arg-type]
            self.outbox.put_nowait(None)


class _Inbox:
    """One node's input queues for one request, and the packet sets they form (MediaPipe's default
    input policy: each set holds the packets of the smallest pending timestamp)."""

    def __init__(self, queues: dict[str, asyncio.Queue[Any]]) -> None:
        self.queues = queues
        self.keys = list(queues)
        self._buffered: dict[str, collections.deque[Any]] = {key: collections.deque() for key in queues}
        self._heads: dict[str, tuple[int, Any] | None] = {}
        self._ended: set[str] = set()

    def complete(self) -> bool:
        """Move every packet already queued into the buffers; True when every stream has ended,
        i.e. the whole input of this request is here."""
        done = True
        for key, q in self.queues.items():
            buffered = self._buffered[key]
            while not (buffered and buffered[-1] is _END):
                try:
                    buffered.append(q.get_nowait())
                except asyncio.QueueEmpty:
                    done = False
                    break
        return done

    async def get(self, key: str) -> Any:
        buffered = self._buffered[key]
        return buffered.popleft() if buffered else await self.queues[key].get()

    def pop(self, key: str) -> Any:
        """The next buffered item of ``key``; only after :meth:`complete` returned True."""
        return self._buffered[key].popleft()

    def missing(self) -> list[str]:
        """Streams still open whose next packet has not been taken yet."""
        return [key for key in self.keys if key not in self._ended and self._heads.get(key) is None]

    def accept(self, key: str, item: Any) -> None:
        if item is _END:
            self._ended.add(key)
        else:
            self._heads[key] = item

    def next_set(self, cc: CalculatorContext) -> bool:
        """Put the next packet set into ``cc.inputs`` / ``cc.timestamp``; False when none is left."""
        ready = {k: v for k, v in self._heads.items() if v is not None}
        if not ready:
            return False
        ts = min(v[0] for v in ready.values())
        cc.inputs = {k: v[1] for k, v in ready.items() if v[0] == ts}
        cc.timestamp = ts
        for k in cc.inputs:
            self._heads[k] = None
        return True


def _run_sync(calc: Calculator, cc: CalculatorContext, inbox: _Inbox, request: RequestContext) -> None:
    """open, process per packet set, close (whenever open succeeded), in the calling thread; the
    inbox must be complete."""
    calc.open(cc)
    try:
        if not inbox.keys:
            calc.process(cc)
            return
        while True:
            for key in inbox.missing():
                inbox.accept(key, inbox.pop(key))
            if not inbox.next_set(cc):
                break
            if request.cancelled:
                raise RequestCancelled("the client went away")
            calc.process(cc)
    finally:
        try:
            calc.close(cc)
        except Exception:
            log.exception('close() of node "%s" failed', cc.node.label)


def _load_node(spec: GraphSpec, node: NodeSpec, calc: type[Calculator], ctx: LoadContext,
               resources: dict[str, Any]) -> NodeRuntime:
    """``node`` ready to serve. A node with a resources port gets its resources built, kept in
    ``resources`` under its name and handed to that port; when they cannot be built, every resource
    built so far is closed and ConfigError names the node."""
    options = next((o for o in node.options if isinstance(o, calc.options_types)), None)
    runtime = NodeRuntime(node, calc, options)
    if calc.resources_port is None:
        return runtime
    value = _create_resources(spec, node, calc, options, ctx, resources)
    resources[node.name or node.label] = value
    runtime.side_packets.update({ref.key: value for ref in node.input_side_packets
                                 if ref.tag == calc.resources_port})
    return runtime


def _create_resources(spec: GraphSpec, node: NodeSpec, calc: type[Calculator], options: Message | None,
                      ctx: LoadContext, built: dict[str, Any]) -> Any:
    """``calc.create_resources``; on failure closes ``built`` and raises ConfigError located at ``node``."""
    try:
        return calc.create_resources(node, options, ctx)
    except ConfigError as exc:
        _close_all(built)
        raise ConfigError([_locate(spec, node, p) for p in exc.problems]) from exc
    except Exception as exc:
        _close_all(built)
        log.exception("loading node %s of graph %s failed", node.label, ctx.graph_name)
        raise ConfigError(spec.problem(f"failed to build resources: {type(exc).__name__}: {exc}",
                                       node=node)) from exc


def _close_all(resources: dict[str, Any]) -> None:
    for value in resources.values():
        _close_quietly(value)


def _concurrency(resources: Iterable[Any]) -> int | None:
    """The smallest positive concurrency limit any resource declares, None when none does."""
    limits = [r.concurrency for r in resources if isinstance(r, ConcurrencyLimited)]
    ints = [c for c in limits if isinstance(c, int) and c > 0]
    return min(ints) if ints else None


def _memory_estimate(resources: Iterable[Any]) -> int | None:
    """The sum of the memory estimates resources declare, None when none does."""
    estimates = [r.memory_estimate for r in resources if isinstance(r, MemoryEstimated)]
    known = [e for e in estimates if isinstance(e, int)]
    return sum(known) if known else None


def _typed(exc: BaseException, request: RequestContext) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    log.error("request %s failed in a calculator", request.request_id, exc_info=exc)
    return NodeFailure(f"image generation failed (request {request.request_id}); see the server log")


def _close_quietly(value: Any) -> None:
    if isinstance(value, Closable) and callable(value.close):
        try:
            value.close()
        except Exception:
            log.exception("closing resources failed")


def _locate(spec: GraphSpec, node: NodeSpec, problem: Problem) -> Problem:
    if problem.file is not None:
        return problem
    return spec.problem(problem.message, node=node, field=problem.field)


def _topological(spec: GraphSpec) -> list[NodeSpec]:
    produced_by = {ref.name: n.index for n in spec.nodes for ref in n.output_streams}
    order: list[NodeSpec] = []
    done: set[int] = set()

    def visit(node: NodeSpec) -> None:
        if node.index in done:
            return
        done.add(node.index)
        for ref in node.input_streams:
            src = produced_by.get(ref.name)
            if src is not None:
                visit(spec.nodes[src])
        order.append(node)

    for node in spec.nodes:
        visit(node)
    return order
