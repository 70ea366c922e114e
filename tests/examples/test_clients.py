"""Every client example in examples/clients, run as a user runs it, against a real server on graphs/tiny-sd.

curl scripts, ``requests`` and the ``openai`` SDK each run generate, edit, inpaint and stream with
the same settings and seed. So beyond "each wrote PNGs of the requested size", the three must agree
pixel for pixel: they sent the same request.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.examples.conftest import API_KEY, REPO, Server

CLIENTS = REPO / "examples" / "clients"
OPERATIONS = ("generate", "edit", "inpaint", "stream")
CLIENT_NAMES = ("curl", "requests", "openai")
#: Every setting the examples read, cleared so that the developer's environment cannot leak in.
SETTINGS = ("BASE_URL", "API_KEY", "MODEL", "PROMPT", "SIZE", "STEPS", "N", "SEED", "GUIDANCE", "IMAGE", "MASK",
            "STRENGTH", "PARTIAL_IMAGES", "OUT_DIR")
#: Width 48, height 64: a swapped or ignored size shows.
WIDTH, HEIGHT = 48, 64
#: What each operation writes (generate asks for N=2 images; stream gets one partial image from 2 steps).
WRITTEN = {
    "generate": ["generate-0.png", "generate-1.png"],
    "edit": ["edit-0.png"],
    "inpaint": ["inpaint-0.png"],
    "stream": ["stream-partial-0.png", "stream.png"],
}


def command(client: str, operation: str) -> list[str]:
    if client == "curl":
        return ["bash", str(CLIENTS / "curl" / f"{operation}.sh")]
    return [sys.executable, str(CLIENTS / "python" / f"{client}_images.py"), operation]


def environment(server: Server, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(BASE_URL=server.url, API_KEY=API_KEY, MODEL=server.model, PROMPT="a red circle on a white background",
               SIZE=f"{WIDTH}x{HEIGHT}", STEPS="2", SEED="7", GUIDANCE="3.5", STRENGTH="0.9", PARTIAL_IMAGES="2")
    env.update(settings)
    return env


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path


def run(client: str, operation: str, env: dict[str, str], out: Path) -> Run:
    """Run one example with OUT_DIR set to ``out``."""
    result = subprocess.run(command(client, operation), env={**env, "OUT_DIR": str(out)}, capture_output=True,
                            text=True, timeout=600, check=False)
    return Run(result.returncode, result.stdout, result.stderr, out)


@pytest.fixture(scope="module")
def runs(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Run]:
    """Every example, run once with the same settings; generate also with N=2."""
    root = tmp_path_factory.mktemp("client-runs")
    done = {}
    for client in CLIENT_NAMES:
        for operation in OPERATIONS:
            env = environment(server, **({"N": "2"} if operation == "generate" else {}))
            done[client, operation] = run(client, operation, env, root / client / operation)
    return done


def png_pixels(path: Path) -> np.ndarray:
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG", path
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_the_example_writes_pngs_of_the_requested_size(runs: dict[tuple[str, str], Run], client: str,
                                                       operation: str) -> None:
    result = runs[client, operation]
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in result.out.iterdir()) == WRITTEN[operation]
    assert sorted(result.stdout.split()) == [str(result.out / name) for name in WRITTEN[operation]]
    for name in WRITTEN[operation]:
        assert png_pixels(result.out / name).shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_three_clients_send_the_same_request(runs: dict[tuple[str, str], Run], operation: str) -> None:
    for name in WRITTEN[operation]:
        curl, *others = (png_pixels(runs[client, operation].out / name) for client in CLIENT_NAMES)
        for client, pixels in zip(CLIENT_NAMES[1:], others, strict=True):
            assert np.array_equal(curl, pixels), f"{client} {operation}: {name} differs from curl's"


def test_inpainting_sends_the_mask(runs: dict[tuple[str, str], Run]) -> None:
    edited = png_pixels(runs["curl", "edit"].out / "edit-0.png")
    inpainted = png_pixels(runs["curl", "inpaint"].out / "inpaint-0.png")
    assert not np.array_equal(edited, inpainted)


UNKNOWN = "does not exist; GET /v3/models lists the models served here"
MISSING_KEY = "missing API key: send the header Authorization: Bearer <key>"
#: One case per distinct error path of each example: JSON, multipart and streamed requests.
ERRORS = [
    ("curl", "generate", {"MODEL": "nope"}, UNKNOWN),
    ("curl", "inpaint", {"MODEL": "nope"}, UNKNOWN),
    ("curl", "stream", {"MODEL": "nope"}, UNKNOWN),
    ("curl", "edit", {"API_KEY": ""}, MISSING_KEY),
    ("curl", "stream", {"API_KEY": "wrong"}, "invalid API key"),
    ("requests", "generate", {"MODEL": "nope"}, UNKNOWN),
    ("requests", "inpaint", {"MODEL": "nope"}, UNKNOWN),
    ("requests", "stream", {"API_KEY": ""}, MISSING_KEY),
    ("openai", "generate", {"MODEL": "nope"}, UNKNOWN),
    ("openai", "edit", {"MODEL": "nope"}, UNKNOWN),
    # The SDK always sends a key; without API_KEY the example sends a placeholder.
    ("openai", "stream", {"API_KEY": ""}, "invalid API key"),
]


@pytest.mark.parametrize(("client", "operation", "settings", "message"), ERRORS,
                         ids=[f"{c}-{o}-{'-'.join(s)}" for c, o, s, _ in ERRORS])
def test_an_error_exits_non_zero_with_the_servers_message(server: Server, tmp_path: Path, client: str,
                                                          operation: str, settings: dict[str, str],
                                                          message: str) -> None:
    result = run(client, operation, environment(server, **settings), tmp_path / "out")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
