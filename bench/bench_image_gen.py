"""Image generation serving cost: the server vs openvino_genai directly, and pipeline-set throughput.

In one run, on the tiny SD1.5 model at the default precision:

1. Latency. The same text-to-image request (fixed seed) is timed directly with
   ``openvino_genai.Text2ImagePipeline.generate`` in this process and through ``ovms-graph serve``
   (a real process on 127.0.0.1, NUM_STREAMS 1; HTTP, JSON, PNG encoding and base64 included),
   alternating the two, at 64x64 / 2 steps and 256x256 / 4 steps (``--cases``). The client keeps its
   connection alive, as real clients do. Reports the medians, what the server adds (ms) and the
   server / direct ratio (targets: at most 3 ms added at 64x64, at most 1.03 at 256x256).
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
def serve(model: Path, streams: int) -> Iterator[str]:
    """``ovms-graph serve`` on a free port with one graph ("sd") of ``streams`` pipeline sets."""
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
                     command=(str(script) if script.exists() else "ovms-graph",),
                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, limit=900, stop_timeout=120) as server:
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


def latency(model: Path, repeats: int, cases: tuple[tuple[int, int], ...] = LATENCY_CASES
            ) -> list[tuple[str, list[float], list[float]]]:
    """(case, direct times s, server times s) per case (side, steps), direct and server alternating."""
    import numpy as np
    import openvino_genai  # type: ignore[import-untyped]

    direct = openvino_genai.Text2ImagePipeline(str(model), "CPU")
    results = []
    with serve(model, 1) as url:
        for size, steps in cases:
            def run_direct(size: int = size, steps: int = steps) -> None:
                np.array(direct.generate(PROMPT, width=size, height=size, num_inference_steps=steps,
                                         rng_seed=1).data, copy=True)

            def run_server(size: int = size, steps: int = steps) -> None:
                post(url, body(size, steps))

            for _ in range(2):  # warm-up: first inferences at a new shape compile kernels
                run_direct()
                run_server()
            direct_times, server_times = [], []
            for _ in range(repeats):
                direct_times.append(timed(run_direct))
                server_times.append(timed(run_server))
            results.append((f"{size}x{size}_{steps}", direct_times, server_times))
    return results  # the direct pipeline is released here, before the throughput servers start


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


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=TINY_SD15, help="model folder (default models/tiny/sd15)")
    parser.add_argument("--repeats", type=int, default=15, help="latency samples per case (default 15)")
    parser.add_argument("--cases", default="64x2,256x4", help="latency cases SIDExSTEPS (default 64x2,256x4)")
    parser.add_argument("--no-throughput", action="store_true", help="measure latency only")
    parser.add_argument("--requests", type=int, default=12, help="requests per throughput round (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (default 3)")
    parser.add_argument("--size", type=int, default=256, help="throughput image side (default 256)")
    parser.add_argument("--steps", type=int, default=4, help="throughput denoising steps (default 4)")
    args = parser.parse_args()
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
    print("| request | direct openvino_genai | through the server | added | server / direct |")
    print("|---|---:|---:|---:|---:|")
    results: dict[str, str] = {}
    for case, direct_times, server_times in lat:
        side, steps = case.split("_")
        # Medians are what a user sees; minimums show the cost without other processes' noise.
        for label, pick in (("median", statistics.median), ("min", min)):
            direct, served = pick(direct_times), pick(server_times)
            print(f"| {side}, {steps} steps ({label} of {len(direct_times)}) | {direct * 1000:.1f} ms | "
                  f"{served * 1000:.1f} ms | {(served - direct) * 1000:.1f} ms | {served / direct:.3f} |")
            suffix = "" if label == "median" else "_min"
            results[f"added_ms_{case}{suffix}"] = f"{(served - direct) * 1000:.1f}"
            results[f"ratio_{case}{suffix}"] = f"{served / direct:.3f}"
    if tput:
        print(f"\n{args.size}x{args.size}, {args.steps} steps, {args.requests} requests x {args.rounds} rounds "
              "(median):\n")
        print("| clients | NUM_STREAMS 1 (req/s) | NUM_STREAMS 2 (req/s) | 2 / 1 |")
        print("|---:|---:|---:|---:|")
        for c in concurrencies:
            print(f"| {c} | {tput[1][c]:.2f} | {tput[2][c]:.2f} | {tput[2][c] / tput[1][c]:.2f}x |")
        results["streams_2_over_1"] = f"{tput[2][2] / tput[1][2]:.2f}"
    print()
    print(" ".join(f"{key}={value}" for key, value in results.items()))
    return 0

if __name__ == "__main__":
    sys.exit(main())
