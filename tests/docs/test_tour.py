"""docs/tour.md runs as written: its curl commands and its Python program against `ovms-graph serve`
on the bundled demo model (what `make run` serves), on a free port instead of 8000."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ovms_graph.cli import build_parser
from ovms_graph.testing import serving
from tests.docs.conftest import DOCS, REPO

DOC = (DOCS / "tour.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", DOC, re.MULTILINE | re.DOTALL)
DEMO_CONFIG = REPO / "graphs" / "demo" / "config.json"
STARTUP_LIMIT = 180.0  # a safety net against hanging forever, not a performance assertion
DOC_URL = "http://127.0.0.1:8000"


def shell_commands() -> list[str]:
    commands = []
    for kind, text in BLOCKS:
        if kind == "sh":
            commands += [c.strip() for c in text.replace("\\\n", " ").split("\n") if c.strip()]
    return commands


def curl_commands() -> list[str]:
    return [c for c in shell_commands() if c.startswith("curl ") and DOC_URL in c]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("tour")
    with serving(["--config_path", str(DEMO_CONFIG), "--rest_port", "0"], cwd=work, log=work / "server.log",
                 env={**os.environ, "PYTHONPATH": str(REPO)}, limit=STARTUP_LIMIT, stop_timeout=60) as served:
        yield served.url, work


def test_the_tour_has_its_steps() -> None:
    assert len(curl_commands()) == 4  # models list, generation, edit, LoRA
    assert [kind for kind, _ in BLOCKS].count("python") == 1


def test_curl_commands_run_in_order(server: tuple[str, Path]) -> None:
    url, work = server
    for command in curl_commands():
        result = subprocess.run(["bash", "-o", "pipefail", "-c", command.replace(DOC_URL, url)], cwd=work,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stderr)
        written = re.findall(r"open\('(\w+\.png)', 'wb'\)", command)
        if written:
            with Image.open(work / written[0]) as image:
                assert (image.format, image.size) == ("PNG", (64, 64))
        else:
            ids = [m["id"] for m in json.loads(result.stdout)["data"]]
            assert ids == ["shapes", "outline"]


def test_python_program_runs(server: tuple[str, Path]) -> None:
    url, work = server
    (program,) = [text for kind, text in BLOCKS if kind == "python"]
    result = subprocess.run([sys.executable, "-c", program.replace(DOC_URL, url)], cwd=work, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # SPEC §9: between 1 and partial_images (2) partial events, then exactly one completed event.
    events = result.stdout.split()
    assert events[-1] == "image_generation.completed"
    assert 1 <= len(events) - 1 <= 2 and set(events[:-1]) == {"image_generation.partial_image"}
    for name in ("triangle.png", "purple.png"):
        with Image.open(work / name) as image:
            assert image.size == (64, 64)


def test_other_commands_parse() -> None:
    others = [c for c in shell_commands() if c.startswith("ovms-graph ")]
    assert others
    for command in others:
        build_parser().parse_args(shlex.split(command)[1:])
