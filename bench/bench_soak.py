"""Soak: 1000+ requests of bench/locustfile.py's mix against one real server, latency and memory.

Starts ``ovms-graph serve`` on 127.0.0.1 with graphs/lora-dynamic (the tiny SD1.5 model with three
DYNAMIC LoRA adapters, two pipeline sets, f32), then runs Locust headless as a subprocess twice with
the same mix (generate, LoRA routes, edit, inpaint, stream, 10 % hostile):

1. warm-up: ``--warmup`` requests (default 300), then the server's RSS is read;
2. the soak: ``--requests`` requests (default 1200); the RSS is sampled every 0.5 s, and read again
   at the end.

It prints, as Markdown, the machine and versions, p50/p99 latency per kind of request (over the
responses with the expected status: 200, or the hostile request's 4xx), the statuses seen, and the
RSS after warm-up, at its peak and at the end. Exit status 1 when a response broke the soak's rules
(bench/soak_checks.py), the server was not ready afterwards, or the RSS grew more than ``--max-growth``
(default 5 %) from warm-up to the end. Usage::

    .venv/bin/python bench/bench_soak.py [--users 4] [--requests 1200] [--warmup 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_checks import KindSummary, summary

from ovms_graph.testing import ServerProcess, serving

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "bench" / "locustfile.py"
CONFIG = REPO / "graphs" / "lora-dynamic" / "config.json"
MAX_REQUEST_SIZE = 1 << 20


def run_locust(server: ServerProcess, requests: int, users: int, report: Path) -> tuple[int, float, str]:
    """Locust until ``requests`` responses (a time cap as a safety net); exit code, seconds, output."""
    env = {**os.environ, "OVMS_SOAK_MAX_REQUEST_SIZE": str(MAX_REQUEST_SIZE), "OVMS_SOAK_REPORT": str(report),
           "OVMS_SOAK_REQUESTS": str(requests)}
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
         "-r", str(users), "-t", "3600s", "--stop-timeout", "120", "--host", server.url, "--only-summary"],
        env=env, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - started, done.stdout + done.stderr


class RssSampler:
    """The peak resident set size of a process, sampled in a background thread."""

    def __init__(self, process: psutil.Process, interval: float = 0.5) -> None:
        self.process = process
        self.interval = interval
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def table(kinds: list[KindSummary]) -> str:
    rows = ["| kind | requests | statuses | p50 (ms) | p99 (ms) |", "|---|---:|---|---:|---:|"]
    for k in kinds:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(k.statuses.items()))
        rows.append(f"| {k.kind} | {k.count} | {statuses} | {ms(k.p50)} | {ms(k.p99)} |")
    total = sum(k.count for k in kinds)
    rows.append(f"| all | {total} | | | |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4, help="concurrent Locust users (default 4)")
    parser.add_argument("--requests", type=int, default=1200, help="requests in the soak (default 1200)")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the first RSS reading")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth (default 0.05)")
    args = parser.parse_args()

    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        tmp = Path(folder)
        server_args = ["--config_path", str(CONFIG), "--rest_port", "0", "--max_request_size", str(MAX_REQUEST_SIZE)]
        with serving(server_args, cwd=tmp) as server:
            process = psutil.Process(server.process.pid)
            code, warm_seconds, output = run_locust(server, args.warmup, args.users, tmp / "warmup.json")
            if code != 0:
                failed.append(f"warm-up: locust exited {code}\n{output[-3000:]}")
            time.sleep(1)
            rss_warm = process.memory_info().rss
            with RssSampler(process) as sampler:
                code, soak_seconds, output = run_locust(server, args.requests, args.users, tmp / "soak.json")
            time.sleep(1)
            rss_end = process.memory_info().rss
            if code != 0:
                failed.append(f"soak: locust exited {code}\n{output[-3000:]}")
            if not server.is_ready():
                failed.append("the server was not ready after the soak")
            kinds = summary(json.loads((tmp / "soak.json").read_text()))
        if server.process.returncode != 0:
            failed.append(f"the server exited {server.process.returncode}")

    for k in kinds:
        failed += [f"{k.kind}: {f}" for f in k.failures[:5]]
    growth = rss_end / rss_warm - 1
    if growth > args.max_growth:
        failed.append(f"RSS grew {growth:.1%} from warm-up to the end (limit {args.max_growth:.0%})")

    total = sum(k.count for k in kinds)
    print(f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"Python {platform.python_version()}, OpenVINO {version('openvino')}, Locust {version('locust')}")
    print(f"Server: {CONFIG.relative_to(REPO)}; {args.users} users, no think time; warm-up {args.warmup} requests "
          f"in {warm_seconds:.0f} s, soak {total} requests in {soak_seconds:.0f} s ({total / soak_seconds:.1f} req/s)")
    print()
    print(table(kinds))
    print()
    print(f"| server RSS | MiB |\n|---|---:|\n| after warm-up | {rss_warm / 2**20:.1f} |\n"
          f"| peak during the soak | {sampler.peak / 2**20:.1f} |\n| at the end | {rss_end / 2**20:.1f} |\n"
          f"| growth, warm-up to end | {growth:+.2%} |")
    for problem in failed:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
