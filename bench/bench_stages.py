"""Where a served request's time goes: per-stage timings inside ``ovms-graph serve``.

Wall-clock ratios on a shared machine swing with other processes' load; the time of each stage of
the server's own work is a steadier guide to what the server adds. This script starts
``ovms-graph serve`` as a real process (tiny SD1.5 model, NUM_STREAMS 1, as ``bench_image_gen.py``)
with a timestamp taken on entry to and exit from each function of the request path (the script runs
itself as the server with ``--marks``), sends ``--requests`` text-to-image requests per case on a
kept-alive connection after 3 warm-up requests, and prints the median and minimum of each stage:

HTTP read and JSON parse; getting to the worker thread (routing, admission, the graph run's setup,
the executor hop); request validation; ``generate`` (with its step callback); PNG encoding; base64;
the JSON body; getting back to the event loop until the graph run has ended; metrics; the access
log line; writing the response; the server's total minus ``generate``; and the client's round
trip. ``--alternate`` runs a direct ``openvino_genai`` generation in this process before each
request, as ``bench_image_gen.py`` does, to see what that pattern costs the server. A stage whose
function was renamed is left out (the script names it on stderr). Ends with one ``key=value`` line.
Usage::

    .venv/bin/python bench/bench_stages.py [--requests 30] [--cases 64x2,256x4] [--alternate]
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_image_gen import PROMPT, TINY_SD15, body, serve

#: (module, attribute path, mark label): the functions timed on entry ("label>") and exit ("label<").
TIMED = (
    ("ovms_graph.server", "_access_middleware", "request"),
    ("ovms_graph.server", "parse_json_object", "parse_json"),
    ("ovms_graph.graph", "_run_sync", "worker"),
    ("calculators.image_gen_calculator", "parse_request", "validate"),
    ("calculators.image_gen_calculator", "ImageGenCalculator._generate", "generate"),
    ("calculators.image_gen.images", "encode_image", "png"),
    ("calculators.image_gen_calculator", "encode_b64", "b64"),
    ("calculators.image_gen_calculator", "_response_json", "body"),
    ("ovms_graph.server", "_Answer.finish", "finish"),
    ("ovms_graph.metrics", "Metrics.observe_request", "metrics"),
    ("ovms_graph.server", "_log_access", "log"),
    ("aiohttp.web", "Response.write_eof", "write"),
)
#: (stage, key in the key=value line, from mark, to mark)
STAGES = (
    ("HTTP read + JSON parse", "http_read", "request>", "parse_json<"),
    ("to the worker (routing, graph run, executor hop)", "to_worker", "parse_json<", "worker>"),
    ("request validation", "validation", "validate>", "validate<"),
    ("generate (with the step callback)", "generate", "generate>", "generate<"),
    ("PNG encoding", "png", "png>", "png<"),
    ("base64", "base64", "png<", "b64<"),
    ("JSON body", "json_body", "body>", "body<"),
    ("back to the event loop, graph run ended", "to_loop", "body<", "finish>"),
    ("of which: the worker finishing after it handed the response over", "worker_end", "body<", "worker<"),
    ("metrics", "metrics", "metrics>", "metrics<"),
    ("access log line", "access_log", "log>", "log<"),
    ("response write", "write", "write>", "write<"),
    ("server total", "server_total", "request>", "write<"),
)
OWN = ("server total minus generate", "server_own")
CLIENT = ("client round trip", "client")
WARM_UP = 3

_events: list[tuple[str, int]] = []


def _mark(label: str) -> None:
    _events.append((label, time.perf_counter_ns()))


def _timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            _mark(label + ">")
            try:
                return await fn(*args, **kwargs)
            finally:
                _mark(label + "<")
        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(label + ">")
        try:
            return fn(*args, **kwargs)
        finally:
            _mark(label + "<")
    return timed


def install_marks() -> None:
    """Wrap every TIMED function that exists (a middleware stays a middleware)."""
    for module_name, path, label in TIMED:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        fn = getattr(owner, name, None)
        if fn is None:
            print(f"bench_stages: {module_name}.{path} not found; its stage is left out", file=sys.stderr)
            continue
        wrapped = _timed(fn, label)
        if getattr(fn, "__middleware_version__", None) is not None:
            wrapped.__middleware_version__ = fn.__middleware_version__  # type: ignore[attr-defined]
        setattr(owner, name, wrapped)


def run_server(events: Path, argv: list[str]) -> int:
    """``ovms-graph`` with marks; the marks go to ``events`` (JSON) when it exits."""
    install_marks()
    atexit.register(lambda: events.write_text(json.dumps(_events)))
    from ovms_graph.cli import main

    return main(argv)


def requests_of(events: list[tuple[str, int]]) -> list[dict[str, int]]:
    """Each generation request's marks (first of each label), in arrival order; health checks dropped."""
    found: list[dict[str, int]] = []
    for label, ns in events:
        if label == "request>":
            found.append({})
        if found:
            found[-1].setdefault(label, ns)
    return [r for r in found if "generate>" in r]


def stage_times(marks: list[dict[str, int]]) -> dict[str, list[float]]:
    """Milliseconds per stage over ``marks`` (a stage is left out when one of its marks is missing)."""
    times: dict[str, list[float]] = {}
    for request in marks:
        for stage, _, start, end in STAGES:
            if start in request and end in request:
                times.setdefault(stage, []).append((request[end] - request[start]) / 1e6)
        if {"request>", "write<", "generate>", "generate<"} <= request.keys():
            own = request["write<"] - request["request>"] - (request["generate<"] - request["generate>"])
            times.setdefault(OWN[0], []).append(own / 1e6)
    return times


def direct_generator(model: Path) -> Callable[[int, int], None]:
    """One direct ``openvino_genai`` generation at (side, steps) per call, in this process."""
    import numpy as np
    import openvino_genai  # type: ignore[import-untyped]

    pipe = openvino_genai.Text2ImagePipeline(str(model), "CPU")

    def generate(size: int, steps: int) -> None:
        np.array(pipe.generate(PROMPT, width=size, height=size, num_inference_steps=steps, rng_seed=1).data,
                 copy=True)
    return generate


def measure(model: Path, cases: list[tuple[int, int]], count: int, alternate: bool
            ) -> tuple[list[dict[str, list[float]]], list[list[float]]]:
    """Stage times and client round trips (ms) per case; with ``alternate``, a direct generation in this
    process before each request, as bench_image_gen.py does."""
    direct = direct_generator(model) if alternate else None
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        events = Path(tmp) / "events.json"
        rounds: list[list[float]] = []
        with serve(model, 1, command=(sys.executable, str(Path(__file__).resolve()), "--marks", str(events))) as url:
            session = requests.Session()
            for size, steps in cases:
                rounds.append([])
                for index in range(WARM_UP + count):
                    if direct is not None:
                        direct(size, steps)
                    started = time.perf_counter_ns()
                    response = session.post(f"{url}/v3/images/generations", json=body(size, steps), timeout=600)
                    response.raise_for_status()
                    response.json()
                    if index >= WARM_UP:
                        rounds[-1].append((time.perf_counter_ns() - started) / 1e6)
        marks = requests_of(json.loads(events.read_text()))
    per_case = WARM_UP + count
    stages = [stage_times(marks[i * per_case + WARM_UP:(i + 1) * per_case]) for i in range(len(cases))]
    return stages, rounds


def report(cases: list[tuple[int, int]], stages: list[dict[str, list[float]]], rounds: list[list[float]]
           ) -> dict[str, str]:
    """Print the table; the key=value results (medians)."""
    names = [f"{size}x{size}_{steps}" for size, steps in cases]
    print("| stage | " + " | ".join(f"{size}x{size}, {steps} steps: median (min)" for size, steps in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    results: dict[str, str] = {}
    for stage, key in [(stage, key) for stage, key, _, _ in STAGES] + [OWN, CLIENT]:
        cells = []
        for name, times, client in zip(names, stages, rounds, strict=True):
            values = client if stage == CLIENT[0] else times.get(stage)
            if not values:
                cells.append("-")
                continue
            cells.append(f"{statistics.median(values):.3f} ms ({min(values):.3f})")
            results[f"{key}_ms_{name}"] = f"{statistics.median(values):.3f}"
        print(f"| {stage} | " + " | ".join(cells) + " |")
    load = os.getloadavg()[0]
    print(f"\nload average (1 min) {load:.2f}")
    results["load"] = f"{load:.2f}"
    return results


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--marks":
        return run_server(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=TINY_SD15, help="model folder (default models/tiny/sd15)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per case (default 30)")
    parser.add_argument("--cases", default="64x2,256x4", help="cases SIDExSTEPS (default 64x2,256x4)")
    parser.add_argument("--alternate", action="store_true",
                        help="run one direct openvino_genai generation before each request, as bench_image_gen.py")
    args = parser.parse_args()
    cases = [(int(side), int(steps)) for side, steps in (case.split("x") for case in args.cases.split(","))]
    print(f"load average (1 min) {os.getloadavg()[0]:.2f}\n")
    stages, rounds = measure(args.model, cases, args.requests, args.alternate)
    results = report(cases, stages, rounds)
    print()
    print(" ".join(f"{key}={value}" for key, value in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
