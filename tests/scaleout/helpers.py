"""Replicas, the HAProxy in front of them, and clients that keep sending requests through it.

Everything runs as real processes on 127.0.0.1: ``ovms-graph serve`` replicas (ServerProcess), Debian's
``haproxy`` started on deploy/haproxy/haproxy.cfg rendered with the replicas' ports and tight check
timings, and client threads using ``requests``. Every ``limit`` is a safety net against hanging
forever, never a performance assertion.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ovms_graph.testing import ServerProcess
from tests.scaleout import gate

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
TINY_SD_CONFIG = REPO / "graphs" / "tiny-sd" / "config.json"
LIMIT = 120.0
#: Checks every 200 ms, two failures take a replica out, two successes put it back: a replica in its
#: lame duck (--drain_delay DRAIN_DELAY) is out of rotation well before it stops taking requests.
CHECKS = {"OVMS_GRAPH_CHECK_INTER": "200ms", "OVMS_GRAPH_CHECK_FALL": "2", "OVMS_GRAPH_CHECK_RISE": "2",
          "OVMS_GRAPH_TIMEOUT_SERVER": "120s"}
DRAIN_DELAY = 3.0
VARIABLE_RE = re.compile(r'"\$\{(\w+)-([^}]*)\}"')


def wait_for(condition: Callable[[], bool], what: str, limit: float = LIMIT, *, details: Callable[[], str] = str
             ) -> None:
    """Poll ``condition`` until true; AssertionError naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit} s\n{details()}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----- replicas -----
def start_replica(config: Path, *, cwd: Path, port: int = 0, env: Mapping[str, str] | None = None) -> ServerProcess:
    """``ovms-graph serve`` on 127.0.0.1:``port`` (0: any) with a real lame duck; not yet ready."""
    return ServerProcess.start(["--config_path", str(config), "--rest_port", str(port), "--rest_bind_address",
                                "127.0.0.1", "--metrics_enable"], cwd=cwd, env=env, drain_delay=DRAIN_DELAY)


def in_flight(replica: ServerProcess, graph: str) -> float:
    """The replica's ``ovms_graph_in_flight_requests`` gauge for ``graph``."""
    text = requests.get(replica.url + "/metrics", timeout=10).text
    found = re.search(rf'^ovms_graph_in_flight_requests{{graph="{re.escape(graph)}"}} (\S+)$', text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


def gated_repository(root: Path, *, max_steps: int = 1000) -> tuple[Path, dict[str, str]]:
    """A model repository with the tiny SD graph (up to ``max_steps`` steps, so a request can be made
    slow) and a ``gate`` graph that loads only while ``root/gate/open`` exists, which is created here.

    Returns the config.json and the environment that installs the gate's calculator as a plugin.
    """
    graph = (REPO / "graphs" / "tiny-sd" / "graph.pbtxt").read_text(encoding="utf-8")
    graph = graph.replace('"../../models/tiny/sd15"', f'"{REPO / "models" / "tiny" / "sd15"}"')
    graph, replaced = re.subn(r"max_num_inference_steps: \d+", f"max_num_inference_steps: {max_steps}", graph)
    assert replaced == 1, graph
    (root / "tiny-sd").mkdir(parents=True)
    (root / "tiny-sd" / "graph.pbtxt").write_text(graph, encoding="utf-8")
    (root / "gate").mkdir()
    (root / "gate" / "graph.pbtxt").write_text(gate.GRAPH, encoding="utf-8")
    (root / "gate" / gate.OPEN_FILE).touch()
    config = root / "config.json"
    config.write_text('{"model_config_list": [{"config": {"name": "tiny-sd", "base_path": "tiny-sd"}},'
                      ' {"config": {"name": "gate", "base_path": "gate"}}]}\n', encoding="utf-8")
    site = root / "site"
    gate.install_plugin(site)
    return config, {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


# ----- the proxy -----
def haproxy_binary() -> str:
    """Debian puts haproxy in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise AssertionError("haproxy is not installed: run `make system-deps` (tools/install_system_deps.sh)")
    return found


def render(template: str, values: Mapping[str, str]) -> str:
    """haproxy.cfg with every ``"${NAME-default}"`` replaced by ``values[NAME]`` or its default."""
    return VARIABLE_RE.sub(lambda m: values.get(m.group(1), m.group(2)), template)


class Proxy:
    """``haproxy -db`` on deploy/haproxy/haproxy.cfg rendered for two replicas on 127.0.0.1."""

    SERVERS = ("replica-1", "replica-2")

    def __init__(self, process: subprocess.Popen[bytes], config: Path, log: Path, port: int, stats_port: int
                 ) -> None:
        self.process = process
        self.config = config
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.stats_url = f"http://127.0.0.1:{stats_port}/stats;csv"

    @classmethod
    def start(cls, replica_ports: Sequence[int], *, cwd: Path) -> Proxy:
        """Render the config, start haproxy and wait until it answers and every replica is UP.

        Ports for the proxy are picked free first; haproxy cannot bind port 0, so a port taken in
        between is retried with new ones.
        """
        template = HAPROXY_CFG.read_text(encoding="utf-8")
        assert len(replica_ports) == len(cls.SERVERS)
        for attempt in range(5):
            port, stats_port = free_port(), free_port()
            values = {**CHECKS, "OVMS_GRAPH_BIND": f"127.0.0.1:{port}",
                      "OVMS_GRAPH_STATS_BIND": f"127.0.0.1:{stats_port}",
                      **{f"OVMS_GRAPH_REPLICA_{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(replica_ports)}}
            config = cwd / "haproxy.cfg"
            config.write_text(render(template, values), encoding="utf-8")
            assert not [line for line in config.read_text(encoding="utf-8").splitlines()
                        if "${" in line and not line.lstrip().startswith("#")], "a variable left unrendered"
            log = cwd / f"haproxy-{attempt}.log"
            with log.open("wb") as out:
                process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=out,
                                           stderr=subprocess.STDOUT, cwd=cwd)
            proxy = cls(process, config, log, port, stats_port)
            try:
                wait_for(proxy.answers, "haproxy answering", details=proxy.output)
                if process.poll() is None:
                    wait_for(proxy.all_up, "both replicas UP", details=proxy.output)
                    return proxy
            except BaseException:
                proxy.stop()
                raise
            if "cannot bind socket" not in proxy.output():
                break
        raise AssertionError(f"haproxy did not start:\n{proxy.output()}")

    def answers(self) -> bool:
        """Whether the statistics page answers, or haproxy has exited (nothing to wait for)."""
        try:
            self.stats()
        except (OSError, requests.RequestException):
            return self.process.poll() is not None
        return True

    def all_up(self) -> bool:
        return all(self.state(name) == "UP" for name in self.SERVERS)

    def output(self) -> str:
        """haproxy's log so far: its request log lines and every health-check change."""
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, dict[str, str]]:
        """The ``replicas`` backend's servers, by name: haproxy's CSV statistics row of each."""
        text = requests.get(self.stats_url, timeout=10).text.removeprefix("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas" and row["svname"] in self.SERVERS}

    def state(self, server: str) -> str:
        """UP or DOWN (haproxy's transitional "UP 1/2", "DOWN 1/2" count as where they come from)."""
        return self.stats()[server]["status"].split(" ")[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


# ----- clients -----
@dataclass(frozen=True)
class Outcome:
    """One request through the proxy: when it was sent and answered (monotonic), its status (None when
    the connection failed), the replica haproxy named in X-Served-By, and the error if any."""

    label: str
    started: float
    ended: float
    status: int | None
    served_by: str | None
    error: str | None


def generation(url: str, body: Mapping[str, Any], label: str, timeout: float = LIMIT) -> Outcome:
    """POST /v3/images/generations; a 200 counts only with one image in the body."""
    started = time.monotonic()
    try:
        response = requests.post(url + "/v3/images/generations", json={"model": "tiny-sd", **body}, timeout=timeout)
    except requests.RequestException as exc:
        return Outcome(label, started, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}")
    error = None
    if response.status_code == 200:
        if len(response.json().get("data", [])) != 1:
            error = f"200 without one image: {response.text[:200]}"
    else:
        error = response.text[:300]
    return Outcome(label, started, time.monotonic(), response.status_code, response.headers.get("X-Served-By"),
                   error)


class Traffic:
    """``clients`` threads sending small generations through the proxy back to back until stopped."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.going = threading.Event()
        self.going.set()
        self.idle = [threading.Event() for _ in range(clients)]
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"client-{i}") for i in range(clients)]

    def _run(self, client: int) -> None:
        i = 0
        while not self.stopping.is_set():
            if not self.going.is_set():
                self.idle[client].set()
                self.going.wait()
                continue
            outcome = generation(self.url, {"prompt": f"client {client} request {i}", "rng_seed": i},
                                 f"client-{client}-{i}")
            with self.lock:
                self.outcomes.append(outcome)
            i += 1

    def pause(self) -> None:
        """Stop sending; returns once no client has a request open."""
        self.going.clear()
        for idle in self.idle:
            if not idle.wait(timeout=LIMIT):
                raise AssertionError("a client request did not end")

    def resume(self) -> None:
        for idle in self.idle:
            idle.clear()
        self.going.set()

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.going.set()
        for thread in self.threads:
            thread.join(timeout=LIMIT)

    def snapshot(self) -> list[Outcome]:
        with self.lock:
            return list(self.outcomes)

    def served_by_since(self, server: str, since: float) -> int:
        """How many 200s ``server`` gave to requests sent after ``since``."""
        return sum(1 for o in self.snapshot() if o.served_by == server and o.status == 200 and o.started > since)

    def wait_served(self, server: str, since: float, details: Callable[[], str] = str) -> None:
        wait_for(lambda: self.served_by_since(server, since) > 0, f"a request sent to {server}", details=details)
