"""A replica killed outright (``kill -9``) behind HAProxy: only the requests it was running fail.

Two `ovms-graph serve` replicas behind haproxy (deploy/haproxy/haproxy.cfg). While clients send a
steady stream, one replica runs a slow generation (many steps at 256x256) and is killed with SIGKILL.
The requests it was running get a 502 from the proxy; every other request is answered 200 by the
other replica. A new replica on the same port is held "listening but not ready" (a graph in its
repository loads only once a file exists): the proxy sends it nothing until it is ready, then routes
to it again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.scaleout import gate
from tests.scaleout.helpers import (
    LIMIT,
    Outcome,
    Proxy,
    Traffic,
    gated_repository,
    generation,
    in_flight,
    start_replica,
    wait_for,
)

SLOW = {"prompt": "slow", "rng_seed": 1, "size": "256x256", "num_inference_steps": 1000}


def test_a_replica_killed_mid_request_fails_only_what_it_ran_and_returns_to_rotation_only_when_ready(
        tmp_path: Path) -> None:
    config, env = gated_repository(tmp_path / "repo")
    gate_file = config.parent / "gate" / gate.OPEN_FILE
    replicas = [start_replica(config, cwd=tmp_path, env=env) for _ in Proxy.SERVERS]
    proxy = None
    try:
        for replica in replicas:
            replica.wait_ready(LIMIT)
        proxy = Proxy.start([r.port for r in replicas], cwd=tmp_path)
        print(f"haproxy config used ({proxy.config}):\n{proxy.config.read_text()}")

        def details() -> str:
            return "\n".join([proxy.output() if proxy else "", *(r.output() for r in replicas)])

        with Traffic(proxy.url) as traffic:
            traffic.wait_served(Proxy.SERVERS[0], 0.0, details)
            traffic.wait_served(Proxy.SERVERS[1], 0.0, details)

            # The slow request alone in flight shows which replica runs it: that one is killed.
            traffic.pause()
            wait_for(lambda: all(in_flight(r, "tiny-sd") == 0 for r in replicas), "no request running",
                     details=details)
            slow: list[Outcome] = []
            sender = threading.Thread(target=lambda: slow.append(generation(proxy.url, SLOW, "slow")))
            sender.start()
            wait_for(lambda: any(in_flight(r, "tiny-sd") > 0 for r in replicas), "the slow request running",
                     details=details)
            (index,) = [i for i, r in enumerate(replicas) if in_flight(r, "tiny-sd") > 0]
            victim, name = replicas[index], Proxy.SERVERS[index]
            (survivor,) = set(Proxy.SERVERS) - {name}
            resumed = time.monotonic()
            traffic.resume()
            wait_for(lambda: sum(o.started > resumed for o in traffic.snapshot()) >= 4, "requests after resume",
                     details=details)

            killed = time.monotonic()
            victim.kill()
            sender.join(timeout=LIMIT)
            wait_for(lambda: proxy.state(name) == "DOWN", f"{name} out of rotation", details=details)

            # A new replica on the same port, listening but not ready until the gate file exists.
            gate_file.unlink()
            replicas[index] = new = start_replica(config, cwd=tmp_path, port=victim.port, env=env)
            new.wait_listening(LIMIT)
            wait_for(lambda: proxy.stats()[name]["check_code"] == "503", f"{name} checked while loading",
                     details=details)
            checked = time.monotonic()
            wait_for(lambda: sum(o.started > checked for o in traffic.snapshot()) >= 4,
                     "requests while the new replica loads", details=details)
            assert proxy.state(name) == "DOWN" and not new.is_ready(), details()

            opened = time.monotonic()
            gate_file.touch()
            new.wait_ready(LIMIT)
            traffic.wait_served(name, opened, details)
            outcomes = traffic.snapshot()

        failed = [o for o in outcomes if o.status != 200 or o.error]
        print(f"{len(outcomes)} requests through the proxy besides the slow one, {len(failed)} failed (sent to "
              f"{name} before it was killed); slow request: {slow}")
        # The killed replica's requests fail at the proxy...
        assert len(slow) == 1 and slow[0].status == 502 and slow[0].served_by == name, (slow, details())
        # ...and nothing else does: any failure was sent to it before the kill and is the proxy's 502.
        for outcome in failed:
            assert (outcome.status, outcome.served_by) == (502, name) and outcome.started < killed, (
                outcome, details())
        # Out of rotation from the crash until the new replica was ready; the other one served meanwhile.
        assert not [o for o in outcomes if o.served_by == name and killed < o.started < opened], details()
        meanwhile = [o for o in outcomes if killed < o.started < opened]
        assert meanwhile and all(o.status == 200 and o.served_by == survivor for o in meanwhile), details()
        assert proxy.process.poll() is None, proxy.output()
    finally:
        if proxy is not None:
            proxy.stop()
        gate_file.touch()
        for replica in replicas:
            replica.kill()
