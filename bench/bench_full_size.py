"""Serving at real size: the SD1.5-shaped benchmark model (``make bench-model``) direct and through the server.

One run measures, in this order (each table is one run; direct and served requests alternate):

1. time to ready of ``ovms-graph serve`` (process start to ``/v2/health/ready`` 200): without a model
   cache, with an empty ``--cache_dir`` (compiles and writes the blobs) and with the filled one, and the
   first request after each start;
2. peak and current resident memory (``VmHWM``/``VmRSS`` of the server process) with NUM_STREAMS 1 and 2,
   after one request per pipeline set;
3. median latency direct ``openvino_genai`` vs through the server at 512x512 / 4 steps and 256x256 / 4
   steps (``--repeats`` each), plus one 20-step run at 512x512 for the record;
4. throughput (requests per second) with 1 and 2 pipeline sets, at 1 and 2 clients (256x256 / 4 steps).

Prints Markdown tables, then one ``key=value`` line. Took 35 minutes on 2 busy cores. Usage::

    make bench-model
    .venv/bin/python bench/bench_full_size.py [--model build/bench-models/sd15] [--repeats 3]
        [--only ready,memory,latency,throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import requests

from calculators.image_gen.graph_writer import graph_text
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.testing import ServerProcess

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "build" / "bench-models" / "sd15"
PROMPT = "a photo of a cat"


@dataclass
class Server:
    url: str
    process: ServerProcess
    ready_s: float
    session: requests.Session

    def post(self, size: int, steps: int, seed: int = 1) -> float:
        body = {"prompt": PROMPT, "size": f"{size}x{size}", "num_inference_steps": steps, "rng_seed": seed}
        started = time.perf_counter()
        response = self.session.post(f"{self.url}/v3/images/generations", json=body, timeout=3600)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")
        response.json()
        return time.perf_counter() - started

    def client(self) -> Server:
        """The same server with a connection of its own (one per client thread)."""
        return Server(self.url, self.process, self.ready_s, requests.Session())

    def memory_gib(self) -> tuple[float, float]:
        """(peak, current) resident memory of the server process in GiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return (int(fields["VmHWM"].split()[0]) / 2**20, int(fields["VmRSS"].split()[0]) / 2**20)


@contextmanager
def serve(model: Path, streams: int, cache_dir: Path | None = None) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="bench-full-size-") as tmp:
        folder = Path(tmp) / "sd"
        folder.mkdir()
        (folder / "graph.pbtxt").write_text(graph_text(ImageGenCalculatorOptions(
            models_path=str(model), plugin_config=json.dumps({"NUM_STREAMS": streams}), max_num_inference_steps=100)))
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"model_config_list": [{"config": {"name": "sd", "base_path": "sd"}}]}))
        args = ["--config_path", str(config), "--rest_port", "0"]
        if cache_dir is not None:
            args += ["--cache_dir", str(cache_dir)]
        started = time.perf_counter()
        server = ServerProcess.start(args, cwd=REPO, log=Path(tmp) / "server.log",
                                     command=(str(REPO / ".venv" / "bin" / "ovms-graph"),),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            server.wait_ready(1800, interval=0.05)
            yield Server(server.url, server, time.perf_counter() - started, requests.Session())
        finally:
            server.stop(600)


def ready_table(model: Path) -> tuple[list[str], dict[str, str]]:
    rows, keys = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        for label, key, cache_dir in (("no cache", "none", None), ("empty --cache_dir", "cold", Path(cache)),
                                      ("filled --cache_dir", "warm", Path(cache))):
            with serve(model, 1, cache_dir) as server:
                first = server.post(256, 4)
                second = server.post(256, 4)
            rows.append(f"| {label} | {server.ready_s:.1f} s | {first:.1f} s | {second:.1f} s |")
            keys[f"ready_s_{key}"] = f"{server.ready_s:.1f}"
            keys[f"first_request_s_{key}"] = f"{first:.1f}"
    head = ["| start | time to ready | first request 256x256/4 | second request |", "|---|---:|---:|---:|"]
    return head + rows, keys


def post_at_once(server: Server, count: int) -> None:
    """``count`` 256x256/4 requests at once, each on its own connection (seeds 0..count-1)."""
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda seed: server.client().post(256, 4, seed), range(count)))


def memory_table(model: Path) -> tuple[list[str], dict[str, str]]:
    rows, keys = [], {}
    for streams in (1, 2):
        with serve(model, streams) as server:
            loaded = server.memory_gib()
            post_at_once(server, streams)  # one request per set
            peak, current = server.memory_gib()
        rows.append(f"| {streams} | {loaded[1]:.2f} GiB | {current:.2f} GiB | {peak:.2f} GiB |")
        keys[f"peak_rss_gib_streams_{streams}"] = f"{peak:.2f}"
    head = ["| NUM_STREAMS | resident when ready | resident after one request per set | peak resident |",
            "|---:|---:|---:|---:|"]
    return head + rows, keys


def latency_table(model: Path, repeats: int) -> tuple[list[str], dict[str, str]]:
    import numpy as np
    import openvino_genai  # type: ignore[import-untyped]

    direct = openvino_genai.Text2ImagePipeline(str(model), "CPU")

    def run_direct(size: int, steps: int) -> float:
        started = time.perf_counter()
        np.array(direct.generate(PROMPT, width=size, height=size, num_inference_steps=steps, rng_seed=1).data,
                 copy=True)
        return time.perf_counter() - started

    rows, keys = [], {}
    with serve(model, 1) as server:
        warm: set[int] = set()
        for size, steps, n in ((512, 4, repeats), (256, 4, repeats), (512, 20, 1)):
            if size not in warm:  # warm-up: the first inference at a shape compiles kernels
                run_direct(size, 1)
                server.post(size, 1)
                warm.add(size)
            direct_times, server_times = [], []
            for _ in range(n):
                direct_times.append(run_direct(size, steps))
                server_times.append(server.post(size, steps))
            d, s = statistics.median(direct_times), statistics.median(server_times)
            rows.append(f"| {size}x{size}, {steps} steps ({n} each) | {d:.2f} s | {s:.2f} s | {s / d:.3f} |")
            keys[f"ratio_{size}_{steps}"] = f"{s / d:.3f}"
    head = ["| request | direct openvino_genai (median) | through the server (median) | server / direct |",
            "|---|---:|---:|---:|"]
    return head + rows, keys


def throughput_table(model: Path, requests_per_round: int) -> tuple[list[str], dict[str, str]]:
    found: dict[tuple[int, int], float] = {}
    for streams in (1, 2):
        with serve(model, streams) as server:
            post_at_once(server, 2)  # warm every set
            for clients in (1, 2):
                connections = [server.client() for _ in range(clients)]

                def client(i: int, connections: list[Server] = connections, clients: int = clients) -> None:
                    for seed in range(i, requests_per_round, clients):
                        connections[i].post(256, 4, seed)

                started = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    list(pool.map(client, range(clients)))
                found[streams, clients] = requests_per_round / (time.perf_counter() - started)
    rows = [f"| {c} | {found[1, c]:.3f} | {found[2, c]:.3f} | {found[2, c] / found[1, c]:.2f}x |" for c in (1, 2)]
    keys = {f"rps_streams_{s}_clients_{c}": f"{v:.3f}" for (s, c), v in found.items()}
    head = ["| clients | NUM_STREAMS 1 (req/s) | NUM_STREAMS 2 (req/s) | 2 / 1 |", "|---:|---:|---:|---:|"]
    return head + rows, keys


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="model folder (default build/bench-models/sd15)")
    parser.add_argument("--repeats", type=int, default=3, help="latency samples per 4-step case (default 3)")
    parser.add_argument("--requests", type=int, default=4, help="requests per throughput measurement (default 4)")
    parser.add_argument("--only", default="ready,memory,latency,throughput", help="tables to measure")
    args = parser.parse_args()
    args.model = args.model.resolve()  # the graph is written in a temporary folder: models_path must be absolute
    if not (args.model / "model_index.json").is_file():
        print(f"no model at {args.model}; run `make bench-model`", file=sys.stderr)
        return 1
    tables: dict[str, Callable[[], tuple[list[str], dict[str, str]]]] = {
        "ready": lambda: ready_table(args.model),
        "memory": lambda: memory_table(args.model),
        "latency": lambda: latency_table(args.model, args.repeats),
        "throughput": lambda: throughput_table(args.model, args.requests),
    }
    keys: dict[str, str] = {}
    print(f"{args.model}, default precision, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"openvino {metadata.version('openvino')}, openvino-genai {metadata.version('openvino-genai')}, "
          f"load average {os.getloadavg()[0]:.1f} at start\n", flush=True)
    for name in args.only.split(","):
        started = time.perf_counter()
        rows, found = tables[name]()
        keys.update(found)
        print("\n".join(rows), flush=True)
        print(f"({name}: {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f})\n", flush=True)
    print(" ".join(f"{k}={v}" for k, v in keys.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
