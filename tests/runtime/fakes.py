"""Fake calculators for runtime tests; each test registers the ones it needs in its own Registry."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ovms_graph.calculator import Calculator, CalculatorContext, LoadContext, NodeIssue, Port
from ovms_graph.errors import BadRequest
from ovms_graph.graph_config import NodeSpec
from ovms_graph.registry import Registry


class Upper(Calculator):
    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "upper-cased text"),)

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("TEXT", cc.inputs["TEXT"].upper())


class Split(Calculator):
    """Emits one packet per word: a streaming producer."""

    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("WORD", str, "one word per packet"),)

    def process(self, cc: CalculatorContext) -> None:
        for word in cc.inputs["TEXT"].split():
            cc.emit("WORD", word)


class Exclaim(Calculator):
    inputs = (Port("WORD", str, "a word"),)
    outputs = (Port("TEXT", str, "the word with !"),)

    async def process(self, cc: CalculatorContext) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        cc.emit("TEXT", cc.inputs["WORD"] + "!")


class Join(Calculator):
    """Two inputs aligned by timestamp."""

    inputs = (Port("A", str, "left"), Port("B", str, "right"))
    outputs = (Port("TEXT", str, "joined"),)

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("TEXT", f"{cc.inputs.get('A')}+{cc.inputs.get('B')}")


class Fail(Calculator):
    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "never"),)

    def process(self, cc: CalculatorContext) -> None:
        if cc.inputs["TEXT"] == "bad":
            raise BadRequest("the text is bad", param="text")
        if cc.inputs["TEXT"] == "boom":
            raise RuntimeError("internal detail that must not leak")
        cc.emit("TEXT", cc.inputs["TEXT"])


class Recorder(Calculator):
    """Records open/process/close calls and the thread process ran on."""

    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "same text"),)
    events: list[str] = []
    threads: list[str] = []
    #: The thread of every open, process and close call, in call order.
    hook_threads: list[str] = []

    def open(self, cc: CalculatorContext) -> None:
        Recorder.hook_threads.append(threading.current_thread().name)
        Recorder.events.append("open")

    def process(self, cc: CalculatorContext) -> None:
        Recorder.hook_threads.append(threading.current_thread().name)
        Recorder.threads.append(threading.current_thread().name)
        Recorder.events.append("process")
        if cc.inputs["TEXT"] == "boom":
            raise RuntimeError("boom")
        cc.emit("TEXT", cc.inputs["TEXT"])

    def close(self, cc: CalculatorContext) -> None:
        Recorder.hook_threads.append(threading.current_thread().name)
        Recorder.events.append("close")


class WaitForCancel(Calculator):
    """Blocks until the request is cancelled; records that it saw the cancellation."""

    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "text"),)
    saw_cancel = threading.Event()
    started = threading.Event()

    def process(self, cc: CalculatorContext) -> None:
        WaitForCancel.started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if cc.request.cancelled:
                WaitForCancel.saw_cancel.set()
                return
            time.sleep(0.01)


class Resourceful(Calculator):
    """Builds a resource at load and hands it over as a side packet."""

    inputs = (Port("TEXT", str, "text"),)
    outputs = (Port("TEXT", str, "text + resource"),)
    input_side_packets = (Port("RESOURCE", dict, "built at load", exact_name="res"),)
    resources_port = "RESOURCE"
    requires_name = True
    loads = 0

    @classmethod
    def contract(cls, node: NodeSpec) -> list[NodeIssue]:
        if len(node.output_streams) > 1:
            return [NodeIssue("Resourceful has exactly one output", "output_stream")]
        return []

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Any, ctx: LoadContext) -> dict[str, str]:
        cls.loads += 1
        ctx.register_alias(f"{node.name}-alias")
        return {"greeting": f"hello from {node.name}"}

    def process(self, cc: CalculatorContext) -> None:
        cc.emit("TEXT", f"{cc.inputs['TEXT']} / {cc.side_packets['RESOURCE']['greeting']}")


ALL = (Upper, Split, Exclaim, Join, Fail, Recorder, WaitForCancel, Resourceful)


def registry(*calcs: type[Calculator]) -> Registry:
    reg = Registry()
    for calc in calcs or ALL:
        reg.register(calc)
    return reg
