"""What the load-time warm-up costs and saves: time to ready, first and steady request latency.

For each model, the graph is served twice, each time in a fresh process (a real aiohttp server on
127.0.0.1, as the tests run it): once with the warm-up switched off (``warm_up`` replaced by a no-op)
and once with it. Each start measures the time to ready (every pipeline set built, and warmed),
then per task the first request after load and the median of ``--repeats`` more (steady). Requests
use the model's own guidance and T5 length, ``--size`` and ``--steps`` (edits: the default strength).

Prints a Markdown table (the load log, on stderr, says what each warm-up did and took), then one
``key=value`` line. Usage::

    .venv/bin/python bench/bench_warmup.py [--model models/tiny/sd15 ...] [--size 256] [--steps 4]
        [--repeats 3] [--rounds 1] [--tasks text-to-image,image-to-image,inpainting]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from calculators.image_gen import pipelines
from calculators.image_gen_calculator import ImageGenCalculator
from ovms_graph.registry import Registry
from ovms_graph.testing import ThreadedServer

REPO = Path(__file__).resolve().parents[1]

PROMPT = "a photo of a cat"
TASKS = ("text-to-image", "image-to-image", "inpainting")


def png(size: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value // 2, 255 - value)).save(buffer, "PNG")
    return buffer.getvalue()


@contextmanager
def serve(model: Path, warm: bool) -> Iterator[tuple[ThreadedServer, float]]:
    """The model served with or without warm-up, and its time to ready in seconds."""
    original = pipelines.warm_up
    if not warm:
        pipelines.warm_up = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp:
            folder = Path(tmp) / "gen"
            folder.mkdir()
            (folder / "graph.pbtxt").write_text(graph(model))
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps({"model_config_list": [{"config": {"name": "gen", "base_path": "gen"}}]}))
            registry = Registry()
            registry.register(ImageGenCalculator)
            started = time.perf_counter()
            server = ThreadedServer.start(config, registry=registry, limit=3600)
            ready = time.perf_counter() - started
            try:
                yield server, ready
            finally:
                server.stop(600)
    finally:
        pipelines.warm_up = original  # type: ignore[assignment]


def graph(model: Path) -> str:
    return (f'input_stream: "HTTP_REQUEST_PAYLOAD:input"\noutput_stream: "HTTP_RESPONSE_PAYLOAD:output"\n'
            f'node {{\n  name: "gen"\n  calculator: "ImageGenCalculator"\n'
            f'  input_stream: "HTTP_REQUEST_PAYLOAD:input"\n  input_side_packet: "IMAGE_GEN_NODE_RESOURCES:pipes"\n'
            f'  output_stream: "HTTP_RESPONSE_PAYLOAD:output"\n  node_options: {{\n'
            f'    [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{\n'
            f'      models_path: "{model.resolve()}"\n      max_num_inference_steps: 1000\n    }}\n  }}\n}}\n')


def request(server: ThreadedServer, task: str, size: int, steps: int, seed: int) -> float:
    """Seconds for one request of ``task``."""
    fields: dict[str, Any] = {"prompt": PROMPT, "size": f"{size}x{size}", "num_inference_steps": steps,
                              "rng_seed": seed}
    started = time.perf_counter()
    if task == "text-to-image":
        response = requests.post(f"{server.url}/v3/images/generations", json=fields, timeout=3600)
    else:
        files = {"image": ("image.png", png(size, 200), "image/png")}
        if task == "inpainting":
            files["mask"] = ("mask.png", png(size, 255), "image/png")
        response = requests.post(f"{server.url}/v3/images/edits", data={k: str(v) for k, v in fields.items()},
                                 files=files, timeout=3600)
    if response.status_code != 200:
        raise RuntimeError(f"{task}: {response.status_code} {response.text[:300]}")
    return time.perf_counter() - started


def measure(model: Path, warm: bool, args: argparse.Namespace) -> tuple[float, dict[str, tuple[float, float]]]:
    """(time to ready, {task: (first request, steady median)}) for the tasks the model serves."""
    latencies: dict[str, tuple[float, float]] = {}
    with serve(model, warm) as (server, ready):
        (resources,) = server.graph("gen").resources.values()
        served = {task.value for task in resources.tasks}
        for task in (t for t in args.tasks.split(",") if t in served):
            first = request(server, task, args.size, args.steps, 0)
            steady = [request(server, task, args.size, args.steps, seed) for seed in range(1, args.repeats + 1)]
            latencies[task] = (first, statistics.median(steady))
    return ready, latencies


def child(model: Path, warm: bool, args: argparse.Namespace) -> tuple[float, dict[str, tuple[float, float]]]:
    """:func:`measure` in a fresh process: OpenVINO keeps compiled kernels process-wide, so a start
    after another in the same process would not pay what a new replica pays."""
    command = [sys.executable, __file__, "--child", "on" if warm else "off", "--model", str(model),
               "--size", str(args.size), "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--tasks", args.tasks]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    ready, latencies = json.loads(out.strip().splitlines()[-1])
    return float(ready), {task: (float(first), float(steady)) for task, (first, steady) in latencies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", help="model folder (repeatable; default: the "
                        "tiny SD, SDXL, SD3, FLUX and LCM models)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs per model (alternating)")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("calculators.image_gen").setLevel(logging.INFO)  # the load log says what was warmed
    models = args.model or [REPO / "models" / "tiny" / m for m in ("sd15", "sdxl", "sd3", "flux", "lcm")]
    if args.child is not None:
        print(json.dumps(measure(models[0], args.child == "on", args)))
        return
    print(f"{args.size}x{args.size}, {args.steps} steps, steady = median of {args.repeats}; one process per start\n")
    print("| model | warm-up | time to ready | task | first request | steady | first / steady |")
    print("|---|---|---:|---|---:|---:|---:|")
    keys: dict[str, str] = {}
    for model in models:
        for warm in (False, True) * args.rounds:
            ready, latencies = child(model, warm, args)
            label = "on" if warm else "off"
            keys[f"ready_s_{model.name}_{label}"] = f"{ready:.2f}"  # the last round's
            for task, (first, steady) in latencies.items():
                print(f"| {model.name} | {label} | {ready:.2f} s | {task} | {first:.3f} s | {steady:.3f} s "
                      f"| {first / steady:.2f} |", flush=True)
                keys[f"first_over_steady_{model.name}_{task}_{label}"] = f"{first / steady:.2f}"
    print()
    print(" ".join(f"{k}={v}" for k, v in keys.items()))


if __name__ == "__main__":
    main()
