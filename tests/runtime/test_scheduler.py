"""The scheduler runs requests through real graphs of fake calculators."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ovms_graph.calculator import RequestContext
from ovms_graph.errors import BadRequest, GenerationError
from ovms_graph.graph import Graph
from tests.runtime import fakes


def load(tmp_path: Path, text: str, name: str = "g") -> Graph:
    path = tmp_path / "graph.pbtxt"
    path.write_text(text)
    return Graph.load(name, path, fakes.registry())


async def collect(graph: Graph, inputs: dict[str, object], request: RequestContext | None = None
                  ) -> list[tuple[str, object]]:
    return [item async for item in graph.run(inputs, request or RequestContext())]


CHAIN = """
input_stream: "TEXT:in"
output_stream: "TEXT:out"
node { calculator: "Upper" input_stream: "TEXT:in" output_stream: "TEXT:upper" }
node { calculator: "Split" input_stream: "TEXT:upper" output_stream: "WORD:words" }
node { calculator: "Exclaim" input_stream: "WORD:words" output_stream: "TEXT:out" }
"""


async def test_three_node_chain_streams_every_packet_in_order(tmp_path: Path) -> None:
    graph = load(tmp_path, CHAIN)
    out = await collect(graph, {"TEXT": "one two three four"})
    assert out == [("TEXT", "ONE!"), ("TEXT", "TWO!"), ("TEXT", "THREE!"), ("TEXT", "FOUR!")]


async def test_nodes_are_declared_out_of_order_but_run_in_dependency_order(tmp_path: Path) -> None:
    lines = CHAIN.strip().splitlines()
    reordered = "\n".join(lines[:2] + lines[:1:-1])
    graph = load(tmp_path, reordered)
    assert [n.spec.calculator for n in graph.nodes] == ["Upper", "Split", "Exclaim"]
    assert await collect(graph, {"TEXT": "a b"}) == [("TEXT", "A!"), ("TEXT", "B!")]


async def test_streaming_output_is_visible_before_the_request_ends(tmp_path: Path) -> None:
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "WORD:out"
        node { calculator: "Split" input_stream: "TEXT:in" output_stream: "WORD:out" }
    """)
    it = graph.run({"TEXT": "x y"}, RequestContext())
    first = await it.__anext__()
    assert first == ("WORD", "x")
    rest = [item async for item in it]
    assert rest == [("WORD", "y")]


async def test_two_inputs_join_by_timestamp(tmp_path: Path) -> None:
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node { calculator: "Split" input_stream: "TEXT:in" output_stream: "WORD:words" }
        node { calculator: "Upper" input_stream: "TEXT:in" output_stream: "TEXT:upper" }
        node { calculator: "Join" input_stream: "A:words" input_stream: "B:upper" output_stream: "TEXT:out" }
    """)
    out = await collect(graph, {"TEXT": "p q"})
    assert out == [("TEXT", "p+P Q"), ("TEXT", "q+None")]


async def test_blocking_process_runs_off_the_event_loop_and_close_follows_open(tmp_path: Path) -> None:
    fakes.Recorder.events.clear()
    fakes.Recorder.threads.clear()
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node { calculator: "Recorder" input_stream: "TEXT:in" output_stream: "TEXT:out" }
    """)
    assert await collect(graph, {"TEXT": "hi"}) == [("TEXT", "hi")]
    assert fakes.Recorder.events == ["open", "process", "close"]
    assert fakes.Recorder.threads and fakes.Recorder.threads[0] != threading.main_thread().name


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(("feed", "hops"), [("in", 1 + 1), ("upper", 1 + 3)])
async def test_a_node_fed_by_the_request_takes_one_thread_hop_for_open_process_close(
        tmp_path: Path, feed: str, hops: int) -> None:
    # Upper is fed by the request (one hop); Recorder too, or by Upper (a hop per hook: its input
    # arrives while it runs). Every hook still runs off the event loop, in order.
    fakes.Recorder.hook_threads.clear()
    fakes.Recorder.events.clear()
    graph = load(tmp_path, f"""
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        output_stream: "TEXT:upper"
        node {{ calculator: "Upper" input_stream: "TEXT:in" output_stream: "TEXT:upper" }}
        node {{ calculator: "Recorder" input_stream: "TEXT:{feed}" output_stream: "TEXT:out" }}
    """)
    executor = CountingExecutor()
    try:
        out = [item async for item in graph.run({"TEXT": "hi"}, RequestContext(), executor)]
    finally:
        executor.shutdown()
    assert ("TEXT", "hi" if feed == "in" else "HI") in out
    assert fakes.Recorder.events == ["open", "process", "close"]
    assert threading.main_thread().name not in fakes.Recorder.hook_threads
    assert executor.submitted == hops


async def test_failing_node_is_closed_and_the_graph_serves_the_next_request(tmp_path: Path) -> None:
    fakes.Recorder.events.clear()
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node { calculator: "Recorder" input_stream: "TEXT:in" output_stream: "TEXT:mid" }
        node { calculator: "Upper" input_stream: "TEXT:mid" output_stream: "TEXT:out" }
    """)
    with pytest.raises(GenerationError) as info:
        await collect(graph, {"TEXT": "boom"})
    assert "boom" not in info.value.message
    assert "see the server log" in info.value.message
    assert fakes.Recorder.events == ["open", "process", "close"]
    assert await collect(graph, {"TEXT": "fine"}) == [("TEXT", "FINE")]


async def test_request_errors_keep_their_type_and_message(tmp_path: Path) -> None:
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node { calculator: "Fail" input_stream: "TEXT:in" output_stream: "TEXT:out" }
    """)
    with pytest.raises(BadRequest) as info:
        await collect(graph, {"TEXT": "bad"})
    assert (info.value.message, info.value.param) == ("the text is bad", "text")
    with pytest.raises(GenerationError) as internal:
        await collect(graph, {"TEXT": "boom"})
    assert "internal detail" not in internal.value.message
    assert await collect(graph, {"TEXT": "ok"}) == [("TEXT", "ok")]


async def test_cancellation_reaches_the_calculator(tmp_path: Path) -> None:
    fakes.WaitForCancel.saw_cancel.clear()
    fakes.WaitForCancel.started.clear()
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node { calculator: "WaitForCancel" input_stream: "TEXT:in" output_stream: "TEXT:out" }
    """)
    request = RequestContext()
    task = asyncio.ensure_future(collect(graph, {"TEXT": "x"}, request))
    await asyncio.get_running_loop().run_in_executor(None, fakes.WaitForCancel.started.wait, 5)
    request.cancel()
    await asyncio.wait_for(task, 10)
    assert fakes.WaitForCancel.saw_cancel.is_set()


async def test_client_probe_marks_the_request_cancelled() -> None:
    gone = {"value": False}
    request = RequestContext(client_gone=lambda: gone["value"])
    assert not request.cancelled
    gone["value"] = True
    assert request.cancelled


async def test_abandoning_the_output_cancels_and_closes(tmp_path: Path) -> None:
    fakes.WaitForCancel.saw_cancel.clear()
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "WORD:words"
        output_stream: "TEXT:out"
        node { calculator: "Split" input_stream: "TEXT:in" output_stream: "WORD:words" }
        node { calculator: "WaitForCancel" input_stream: "TEXT:in" output_stream: "TEXT:out" }
    """)
    fakes.WaitForCancel.started.clear()
    it = graph.run({"TEXT": "a b"}, RequestContext())
    assert (await it.__anext__())[0] == "WORD"
    # Abandon while WaitForCancel is inside process (before it starts, the run skips process instead).
    assert await asyncio.get_running_loop().run_in_executor(None, fakes.WaitForCancel.started.wait, 10)
    await it.aclose()
    assert fakes.WaitForCancel.saw_cancel.is_set()


async def test_resources_are_built_once_per_node_and_shared_by_requests(tmp_path: Path) -> None:
    fakes.Resourceful.loads = 0
    graph = load(tmp_path, """
        input_stream: "TEXT:in"
        output_stream: "TEXT:out"
        node {
          name: "greeter"
          calculator: "Resourceful"
          input_stream: "TEXT:in"
          input_side_packet: "RESOURCE:res"
          output_stream: "TEXT:out"
        }
    """)
    outs = await asyncio.gather(*(collect(graph, {"TEXT": str(i)}) for i in range(5)))
    assert [o[0][1] for o in outs] == [f"{i} / hello from greeter" for i in range(5)]
    assert fakes.Resourceful.loads == 1
    assert set(graph.resources) == {"greeter"}
    assert [a.name for a in graph.aliases] == ["greeter-alias"]
