"""Throughput of DYNAMIC LoRA serving: alternating adapters vs no LoRA, two clients at once.

Starts ``ovms-graph serve`` as a real process on 127.0.0.1 with two graphs on the tiny SD1.5
model, both with two pipeline sets (NUM_STREAMS 2) at the default precision:

* ``plain``: no LoRA adapters;
* ``lora``: three DYNAMIC adapters (models/tiny/loras/lora_{a,b,c}.safetensors).

Then, in many short interleaved rounds (short, so that load from other processes hits every phase
alike), two client threads send the same number of requests to:

1. ``plain`` (no LoRA at all),
2. ``lora``'s base name (adapters registered, none applied),
3. ``lora``'s adapters in turn: attn, textenc, proj, base, attn, ... (every request switches the
   pipeline set's adapters).

The phases are rotated from round to round. It prints a Markdown table of requests per second
(median over rounds) and of the server's CPU time per request (user + system, from /proc: unlike
wall time, it depends little on what else the machine runs), and the ratio of (3) to (1); the
target is >= 0.9. Usage::

    .venv/bin/python bench/bench_lora.py [--size 256] [--steps 4] [--requests 4] [--rounds 12]
                                         [--precision default|f32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from calculators.image_gen.graph_writer import graph_text
from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions
from ovms_graph.testing import serving

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny"
LORAS = {"attn": "lora_a", "textenc": "lora_b", "proj": "lora_c"}


def write_config(folder: Path, precision: str) -> Path:
    plugin: dict[str, object] = {"NUM_STREAMS": 2}
    if precision != "default":
        plugin["INFERENCE_PRECISION_HINT"] = precision
    for graph in ("plain", "lora"):
        options = ImageGenCalculatorOptions(models_path=str(TINY / "sd15"), plugin_config=json.dumps(plugin))
        if graph == "lora":
            for alias, name in LORAS.items():
                options.lora_adapters.add(alias=alias, path=str(TINY / "loras" / f"{name}.safetensors"))
        (folder / graph).mkdir()
        (folder / graph / "graph.pbtxt").write_text(graph_text(options))
    config = folder / "config.json"
    config.write_text(json.dumps({"model_config_list": [{"config": {"name": g, "base_path": g}}
                                                        for g in ("plain", "lora")]}))
    return config


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(url: str, models: list[str], body: dict[str, object], requests_per_phase: int,
              concurrency: int) -> float:
    """Requests per second for ``requests_per_phase`` requests cycling through ``models``."""
    bodies = [{**body, "model": models[i % len(models)], "rng_seed": i} for i in range(requests_per_phase)]

    def send(one: dict[str, object]) -> None:
        response = requests.post(f"{url}/v3/images/generations", json=one, timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"{one['model']}: {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, bodies))
    return requests_per_phase / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--requests", type=int, default=4, help="requests per phase and round (default 4)")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds (default 12)")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads (default 2)")
    parser.add_argument("--precision", choices=("default", "f32"), default="default",
                        help="INFERENCE_PRECISION_HINT: the CPU default (bf16 where it reports BF16) or f32")
    args = parser.parse_args()
    if not (TINY / "sd15" / "model_index.json").is_file() or not all(
            (TINY / "loras" / f"{n}.safetensors").is_file() for n in LORAS.values()):
        print(f"tiny model or LoRAs missing under {TINY}; run `make fixtures`", file=sys.stderr)
        return 1

    phases = {
        "no LoRA (plain graph)": ["plain"],
        "LoRA graph, base model (3 adapters registered, none applied)": ["lora"],
        "LoRA graph, alternating attn / textenc / proj / base": ["attn", "textenc", "proj", "lora"],
    }
    body = {"prompt": "a red circle on a white background", "num_inference_steps": args.steps,
            "size": f"{args.size}x{args.size}"}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        config = write_config(Path(tmp), args.precision)
        # The server's INFO log line gives its port; its log goes to the temporary folder.
        with serving(["--config_path", str(config), "--rest_port", "0"], cwd=Path(tmp), limit=900.0,
                     stop_timeout=120.0) as server:
            url, pid = server.url, server.process.pid
            for models in phases.values():  # warm-up: first requests compile kernels, prepare LoRA tensors
                run_phase(url, models, body, 4, args.concurrency)
            results: dict[str, list[float]] = {name: [] for name in phases}
            cpu: dict[str, list[float]] = {name: [] for name in phases}
            names = list(phases)
            for round_ in range(args.rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    before = cpu_seconds(pid)
                    results[name].append(run_phase(url, phases[name], body, args.requests, args.concurrency))
                    cpu[name].append((cpu_seconds(pid) - before) / args.requests)

    medians = {name: statistics.median(values) for name, values in results.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    baseline = medians["no LoRA (plain graph)"]
    cpu_baseline = cpu_medians["no LoRA (plain graph)"]
    print(f"tiny SD1.5, {args.size}x{args.size}, {args.steps} steps, {args.precision} precision, NUM_STREAMS 2, "
          f"concurrency {args.concurrency}, "
          f"{args.requests} requests x {args.rounds} rounds (median), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| requests | req/s | vs no LoRA | server CPU ms / request | vs no LoRA |")
    print("|---|---:|---:|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} | {value / baseline:.2f}x | {cpu_medians[name] * 1000:.0f} | "
              f"{cpu_baseline / cpu_medians[name]:.2f}x |")
    alternating = "LoRA graph, alternating attn / textenc / proj / base"
    ratio = medians[alternating] / baseline
    cpu_ratio = cpu_baseline / cpu_medians[alternating]
    verdict = "PASS" if ratio >= 0.9 else "FAIL"
    print(f"\nalternating adapters / no LoRA: throughput {ratio:.3f}, CPU cost {cpu_ratio:.3f} "
          f"(target >= 0.90): {verdict}")
    print(f"lora_throughput_ratio={ratio:.3f} lora_cpu_ratio={cpu_ratio:.3f}")
    return 0 if ratio >= 0.9 else 2


if __name__ == "__main__":
    sys.exit(main())
