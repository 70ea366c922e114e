"""`ovms-graph serve` as a real process on a real port, driven by real clients.

The calculators are the fakes of tests/server/fakes.py, installed as a plugin the way a third-party
package is: a throwaway distribution (a *.dist-info folder with entry_points.txt) on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from ovms_graph.testing import ServerProcess
from tests.server.fakes import FAKE_PNG, graph_text

REPO = Path(__file__).resolve().parents[2]
KEY = "e2e-key"
STARTUP_LIMIT = 120.0  # a safety net against hanging forever, not a performance assertion


def install_plugin(site: Path) -> None:
    dist = site / "ovms_graph_e2e_plugin-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ovms-graph-e2e-plugin\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[ovms_graph.calculators]\n"
        "OpenAIImageCalculator = tests.server.fakes:OpenAIImageCalculator\n"
        "FileGateCalculator = tests.server.fakes:FileGateCalculator\n")


def write_graphs(root: Path, graphs: dict[str, str]) -> Path:
    items = []
    for name, calculator in graphs.items():
        (root / name).mkdir(parents=True)
        (root / name / "graph.pbtxt").write_text(graph_text(calculator))
        items.append({"config": {"name": name, "base_path": name}})
    config = root / "config.json"
    config.write_text(json.dumps({"model_config_list": items}))
    return config


def start(tmp_path: Path, *args: str, command: tuple[str, ...] | None = None) -> ServerProcess:
    """``ovms-graph serve *args`` in tmp_path with the fake calculators installed as a plugin."""
    site = tmp_path / "site"
    if not site.exists():
        install_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return ServerProcess.start(args, cwd=tmp_path, env=env, command=command,
                               log=tmp_path / f"server-{time.monotonic_ns()}.log")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    config = write_graphs(tmp_path, {"tiny": "OpenAIImageCalculator", "slow": "FileGateCalculator"})
    (tmp_path / "key.txt").write_text(f"{KEY}\n")
    server = start(tmp_path, "--config_path", str(config), "--rest_port", "0", "--rest_bind_address", "127.0.0.1",
                   "--api_key_file", str(tmp_path / "key.txt"), "--metrics_enable", "--shutdown_timeout", "60")
    try:
        server.wait_ready(STARTUP_LIMIT)
        yield server
    finally:
        server.kill()


def test_serve_answers_raw_http_and_the_openai_sdk_then_drains_on_sigterm(served: ServerProcess,
                                                                          tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(f"{served.url}/v2/health/live", timeout=5).status_code == 200

    r = requests.post(f"{served.url}/v3/images/generations", json={"model": "tiny", "prompt": "a cat"},
                      headers=auth, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["data"] == [{"b64_json": FAKE_PNG, "revised_prompt": "tiny: a cat"}]
    assert requests.get(f"{served.url}/v3/models", timeout=5).status_code == 401

    client = openai.OpenAI(base_url=f"{served.url}/v3", api_key=KEY, max_retries=0)
    images = client.images.generate(model="tiny", prompt="a red circle")
    assert images.data is not None
    assert images.data[0].b64_json == FAKE_PNG
    assert images.data[0].revised_prompt == "tiny: a red circle"
    assert sorted(m.id for m in client.models.list()) == ["slow", "tiny"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="nope", prompt="a")
    assert missing.value.body == {"message": 'model "nope" does not exist; GET /v3/models lists the models served '
                                             "here", "type": "not_found_error", "param": "model",
                                  "code": "model_not_found"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()

    metrics = requests.get(f"{served.url}/metrics", timeout=5).text
    assert 'ovms_graph_requests_total{graph="tiny",route="/v3/images/generations",status="200"} 2.0' in metrics

    # SIGTERM while a request is in flight: it completes, new connections are refused, exit code 0.
    started, release = tmp_path / "started", tmp_path / "release"
    result: dict[str, requests.Response] = {}

    def slow_request() -> None:
        result["response"] = requests.post(
            f"{served.url}/v3/images/generations", headers=auth, timeout=120,
            json={"model": "slow", "started_file": str(started), "release_file": str(release)})

    worker = threading.Thread(target=slow_request)
    worker.start()
    deadline = time.monotonic() + STARTUP_LIMIT
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), served.output()

    served.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STARTUP_LIMIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the server kept accepting connections after SIGTERM")
    assert served.process.poll() is None, "the server must wait for the running request"

    release.write_text("go")
    worker.join(timeout=STARTUP_LIMIT)
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["released"] is True
    assert served.process.wait(timeout=STARTUP_LIMIT) == 0
    output = served.output()
    assert "signal received: readiness off, draining for up to 60.0 s" in output
    assert re.search(r"request [0-9a-f]{16} POST /v3/images/generations graph=slow status=200 duration=", output)
    assert "Traceback" not in output


def test_serve_exits_2_listing_every_problem_when_graphs_cannot_load(tmp_path: Path) -> None:
    config = write_graphs(tmp_path, {"a": "NoSuchCalculator", "b": "OpenAIImageCalculator"})
    (tmp_path / "b" / "graph.pbtxt").write_text(graph_text("OpenAIImageCalculator").replace(
        'input_stream: "HTTP_REQUEST_PAYLOAD:input"\noutput', 'input_stream: "REQUEST:input"\noutput'))
    server = start(tmp_path, "--config_path", str(config), "--rest_port", "0")
    assert server.process.wait(timeout=STARTUP_LIMIT) == 2
    output = server.output()
    assert (f'{tmp_path}/a/graph.pbtxt:5: node "nosuchcalculator" (NoSuchCalculator): calculator: unknown '
            'calculator "NoSuchCalculator"') in output
    assert (f'{tmp_path}/b/graph.pbtxt: graph "b" has no input_stream tagged HTTP_REQUEST_PAYLOAD; the server feeds '
            'each request to "HTTP_REQUEST_PAYLOAD:..." and answers with "HTTP_RESPONSE_PAYLOAD:..."') in output
    assert "error: the models failed to load; exiting" in output


@pytest.mark.parametrize(("config_text", "message"), [
    (None, "{config}: cannot read config: No such file or directory"),
    ('{"model_config_list": [{"config": {"name": "a"}}]}', '{config}: model_config_list[0] "a": "base_path" is '
                                                            "required"),
])
def test_serve_exits_2_on_a_bad_config(tmp_path: Path, config_text: str | None, message: str) -> None:
    config = tmp_path / "config.json"
    if config_text is not None:
        config.write_text(config_text)
    server = start(tmp_path, "--config_path", str(config), "--rest_port", "0")
    assert server.process.wait(timeout=STARTUP_LIMIT) == 2
    assert message.format(config=config) in server.output()


def test_serve_exits_1_when_the_port_is_taken(tmp_path: Path) -> None:
    config = write_graphs(tmp_path, {"tiny": "OpenAIImageCalculator"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start(tmp_path, "--config_path", str(config), "--rest_port", str(port))
        assert server.process.wait(timeout=STARTUP_LIMIT) == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: " in server.output()


PULL_STAND_IN = """
import sys
from pathlib import Path

import calculators.image_gen.pull
from ovms_graph.cli import main
from ovms_graph.config import GraphEntry


def pull_model(options):
    Path(sys.argv[1]).write_text(f"{options.source_model} {options.model_name} {options.model_repository_path}")
    return GraphEntry(options.model_name or options.source_model, Path(sys.argv[2]), "pulled")


calculators.image_gen.pull.pull_model = pull_model  # stands in for the download: this test is about the wiring
sys.exit(main(sys.argv[3:]))
"""


def test_serve_source_model_serves_what_pull_model_returns(tmp_path: Path) -> None:
    (tmp_path / "pulled").mkdir()
    graph = tmp_path / "pulled" / "graph.pbtxt"
    graph.write_text(graph_text("OpenAIImageCalculator"))
    script = tmp_path / "serve_with_stand_in.py"
    script.write_text(PULL_STAND_IN)
    record = tmp_path / "pull_options.txt"
    server = start(tmp_path, "--source_model", "OpenVINO/tiny-sd", "--model_repository_path", str(tmp_path / "m"),
                   "--model_name", "tiny", "--rest_port", "0",
                   command=(sys.executable, str(script), str(record), str(graph)))
    try:
        server.wait_ready(STARTUP_LIMIT)
        assert record.read_text() == f"OpenVINO/tiny-sd tiny {tmp_path / 'm'}"
        models = requests.get(f"{server.url}/v3/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        r = requests.post(f"{server.url}/v3/images/generations", json={"prompt": "a"}, timeout=30)
        assert r.json()["data"][0]["revised_prompt"] == "tiny: a"
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=STARTUP_LIMIT) == 0
    finally:
        server.kill()
