"""Image generation serving cost: the server vs openvino_genai directly, and pipeline-set throughput.

In one run, on the tiny SD1.5 model at the default precision:

1. Latency. The same text-to-image request (fixed seed) is timed directly with
   ``openvino_genai.Text2ImagePipeline.generate`` in this process (compiled with the properties the
   server uses for NUM_STREAMS 1: none) and through ``ovms-graph serve`` (a real process on 127.0.0.1,
   NUM_STREAMS 1; HTTP, JSON, PNG encoding and base64 included), alternating the two, at 64x64 /
   2 steps and 256x256 / 4 steps (``--cases``). The client keeps its connection alive, as real clients
   do. Reports the medians, what the server adds (ms) and the server / direct ratio (targets: at most
   3 ms added at 64x64, at most 1.03 at 256x256). A second baseline, "direct + PNG", adds the time the
   server's own encoder (``encode_b64``) takes for the direct image: what any server answering in PNG
   must spend. The HTTP floor is the median round trip of ``GET /v2/health/live`` on the same
   connection, and the load average (1 min) before and after says how busy the machine was.
2. Throughput. A server with NUM_STREAMS 1, then one with NUM_STREAMS 2, each answering
   ``--requests`` requests from 1, 2 and 4 client threads (256x256 / 4 steps by default). Reports
   requests per second (median over rounds) and NUM_STREAMS 2 / NUM_STREAMS 1 at concurrency 2
   (target >= 1.1).

Prints Markdown tables (as in docs/performance.md), then one ``key=value`` line a machine can read
(``added_ms_64x64_2=... ratio_256x256_4=... streams_2_over_1=...``). Usage::

    .venv/bin/python bench/bench_image_gen.py [--repeats 15] [--requests 12] [--rounds 3]
        [--cases 64x2,256x4] [--no-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from calculators.image_gen.graph_writer import graph_text
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.testing import serving

REPO = Path(__file__).resolve().parents[1]
TINY_SD15 = REPO / "models" / "tiny" / "sd15"
PROMPT = "a red circle on a white background"
LATENCY_CASES = ((64, 2), (256, 4))
_sessions = threading.local()


@contextmanager
def serve(model: Path, streams: int, command: tuple[str, ...] | None = None,
          env: dict[str, str] | None = None) -> Iterator[str]:
    """``ovms-graph serve`` on a free port with one graph ("sd") of ``streams`` pipeline sets (``command``
    replaces the ``ovms-graph`` script, ``env`` adds to the environment)."""
    with tempfile.TemporaryDirectory(prefix="bench-image-gen-") as tmp:
        folder = Path(tmp) / "sd"
        folder.mkdir()
        (folder / "graph.pbtxt").write_text(graph_text(ImageGenCalculatorOptions(
            models_path=str(model), plugin_config=json.dumps({"NUM_STREAMS": streams}))))
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}]}))
        script = REPO / ".venv" / "bin" / "ovms-graph"
        # INFO, not WARNING: the port is read from the "listening on" line; the server's log goes to
        # server.log in the temporary folder (one line per request, negligible next to a generation).
        with serving(["--config_path", str(config), "--rest_port", "0"], cwd=REPO, log=Path(tmp) / "server.log",
                     command=command or (str(script) if script.exists() else "ovms-graph",),
                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, limit=900,
                     stop_timeout=120) as server:
            yield server.url


def body(size: int, steps: int, seed: int = 1) -> dict[str, object]:
    return {"prompt": PROMPT, "size": f"{size}x{size}", "num_inference_steps": steps, "rng_seed": seed}


def post(url: str, payload: dict[str, object]) -> None:
    """One generation; each client thread keeps one connection alive across its requests."""
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = requests.Session()
    response = session.post(f"{url}/v3/images/generations", json=payload, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} {response.text[:300]}")
    response.json()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@dataclass
class Latencies:
    """Seconds per sample of one case: direct, direct + the server's PNG encoding, through the server."""

    case: str
    direct: list[float] = field(default_factory=list)
    direct_png: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)


@dataclass
class LatencyRun:
    cases: list[Latencies]
    http_floor: float  # median seconds of GET /v2/health/live
    load: tuple[float, float]  # 1-minute load average before and after


def latency(model: Path, repeats: int, cases: tuple[tuple[int, int], ...] = LATENCY_CASES) -> LatencyRun:
    """Every case, direct and server alternating; the direct pipeline is released before returning."""
    import numpy as np
    import openvino_genai  # type: ignore[import-untyped]

    from calculators.image_gen.images import encode_b64

    load_before = os.getloadavg()[0]
    direct = openvino_genai.Text2ImagePipeline(str(model), "CPU")
    results = []
    with serve(model, 1) as url:
        for size, steps in cases:
            found = Latencies(f"{size}x{size}_{steps}")

            def run_direct(size: int = size, steps: int = steps) -> tuple[float, float]:
                started = time.perf_counter()
                pixels = np.array(direct.generate(PROMPT, width=size, height=size, num_inference_steps=steps,
                                                  rng_seed=1).data, copy=True)
                generated = time.perf_counter()
                encode_b64(pixels[0], "png", None)
                return generated - started, time.perf_counter() - started

            def run_server(size: int = size, steps: int = steps) -> None:
                post(url, body(size, steps))

            for _ in range(2):  # warm-up: first inferences at a new shape compile kernels
                run_direct()
                run_server()
            for _ in range(repeats):
                generated, encoded = run_direct()
                found.direct.append(generated)
                found.direct_png.append(encoded)
                found.server.append(timed(run_server))
            results.append(found)
        session = requests.Session()
        floor = statistics.median(timed(lambda: session.get(f"{url}/v2/health/live", timeout=60))
                                  for _ in range(50))
    return LatencyRun(results, floor, (load_before, os.getloadavg()[0]))


def latency_table(run: LatencyRun) -> dict[str, str]:
    """Print the latency table; the key=value results."""
    print("| request | direct openvino_genai | direct + PNG | through the server | added | server / direct "
          "| server / (direct + PNG) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results: dict[str, str] = {}
    for found in run.cases:
        side, steps = found.case.split("_")
        # Medians are what a user sees; minimums show the cost without other processes' noise.
        for label, pick in (("median", statistics.median), ("min", min)):
            direct, png, served = pick(found.direct), pick(found.direct_png), pick(found.server)
            print(f"| {side}, {steps} steps ({label} of {len(found.direct)}) | {direct * 1000:.1f} ms | "
                  f"{png * 1000:.1f} ms | {served * 1000:.1f} ms | {(served - direct) * 1000:.1f} ms | "
                  f"{served / direct:.3f} | {served / png:.3f} |")
            suffix = "" if label == "median" else "_min"
            results[f"added_ms_{found.case}{suffix}"] = f"{(served - direct) * 1000:.1f}"
            results[f"ratio_{found.case}{suffix}"] = f"{served / direct:.3f}"
            results[f"ratio_png_{found.case}{suffix}"] = f"{served / png:.3f}"
    print(f"\nHTTP floor (GET /v2/health/live, median of 50): {run.http_floor * 1000:.2f} ms; "
          f"load average (1 min) {run.load[0]:.2f} before, {run.load[1]:.2f} after")
    results["http_floor_ms"] = f"{run.http_floor * 1000:.2f}"
    results["load_before"] = f"{run.load[0]:.2f}"
    results["load_after"] = f"{run.load[1]:.2f}"
    return results


def throughput(model: Path, streams: int, size: int, steps: int, requests_per_round: int, rounds: int,
               concurrencies: tuple[int, ...]) -> dict[int, float]:
    """Requests per second (median over rounds) per client concurrency, against NUM_STREAMS ``streams``."""
    with serve(model, streams) as url:
        with ThreadPoolExecutor(max(concurrencies)) as pool:  # warm-up, every set and shape
            list(pool.map(lambda seed: post(url, body(size, steps, seed)), range(2 * streams)))
        found: dict[int, list[float]] = {c: [] for c in concurrencies}
        for _ in range(rounds):
            for concurrency in concurrencies:
                payloads = [body(size, steps, seed) for seed in range(requests_per_round)]
                with ThreadPoolExecutor(concurrency) as pool:
                    started = time.perf_counter()
                    list(pool.map(lambda p: post(url, p), payloads))
                    elapsed = time.perf_counter() - started
                found[concurrency].append(requests_per_round / elapsed)
    return {c: statistics.median(values) for c, values in found.items()}


def throughput_table(tput: dict[int, dict[int, float]], concurrencies: tuple[int, ...]) -> dict[str, str]:
    """Print requests per second by client count, NUM_STREAMS 1 vs 2; the key=value results."""
    print("| clients | NUM_STREAMS 1 (req/s) | NUM_STREAMS 2 (req/s) | 2 / 1 |")
    print("|---:|---:|---:|---:|")
    for c in concurrencies:
        print(f"| {c} | {tput[1][c]:.2f} | {tput[2][c]:.2f} | {tput[2][c] / tput[1][c]:.2f}x |")
    return {"streams_2_over_1": f"{tput[2][2] / tput[1][2]:.2f}"}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=TINY_SD15, help="model folder (default models/tiny/sd15)")
    parser.add_argument("--repeats", type=int, default=15, help="latency samples per case (default 15)")
    parser.add_argument("--cases", default="64x2,256x4", help="latency cases SIDExSTEPS (default 64x2,256x4)")
    parser.add_argument("--no-throughput", action="store_true", help="measure latency only")
    parser.add_argument("--requests", type=int, default=12, help="requests per throughput round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (default 3)")
    parser.add_argument("--size", type=int, default=256, help="throughput image side (default 256)")
    parser.add_argument("--steps", type=int, default=4, help="throughput denoising steps (default 4)")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    if not (args.model / "model_index.json").is_file():
        print(f"no model at {args.model}; run `make fixtures`", file=sys.stderr)
        return 1

    import openvino  # type: ignore[import-untyped]

    cases = tuple(tuple(int(v) for v in case.split("x")) for case in args.cases.split(","))
    concurrencies = (1, 2, 4)
    lat = latency(args.model, args.repeats, cases)  # type: ignore[arg-type]
    tput = {} if args.no_throughput else {
        streams: throughput(args.model, streams, args.size, args.steps, args.requests, args.rounds, concurrencies)
        for streams in (1, 2)}

    print(f"{args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model}, default precision, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), OpenVINO {openvino.__version__}\n")
    results = latency_table(lat)
    if tput:
        print(f"\n{args.size}x{args.size}, {args.steps} steps, {args.requests} requests x {args.rounds} rounds "
              "(median):\n")
        results.update(throughput_table(tput, concurrencies))
    print()
    print(" ".join(f"{key}={value}" for key, value in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
