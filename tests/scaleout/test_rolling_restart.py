"""A rolling restart behind HAProxy loses no request.

Two `ovms-graph serve` replicas of the tiny SD graph sit behind haproxy (deploy/haproxy/haproxy.cfg,
checking GET /v2/health/ready, retrying only connections that failed, never a 503). Clients send a
steady stream through the proxy while each replica in turn gets SIGTERM, exits, and is replaced by a new
one on the same port. Every request must get a 200: readiness drops at SIGTERM, the proxy takes the
replica out within its check interval, and the replica still serves what reaches it meanwhile
(--drain_delay), then drains what it runs.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.scaleout.helpers import LIMIT, TINY_SD_CONFIG, Proxy, Traffic, start_replica, wait_for


def test_rolling_restart_of_both_replicas_under_load_answers_every_request(tmp_path: Path) -> None:
    replicas = [start_replica(TINY_SD_CONFIG, cwd=tmp_path) for _ in Proxy.SERVERS]
    proxy = None
    try:
        for replica in replicas:
            replica.wait_ready(LIMIT)
        proxy = Proxy.start([r.port for r in replicas], cwd=tmp_path)
        print(f"haproxy config used ({proxy.config}):\n{proxy.config.read_text()}")

        def details() -> str:
            return "\n".join([proxy.output() if proxy else "", *(r.output() for r in replicas)])

        windows = []
        with Traffic(proxy.url) as traffic:
            traffic.wait_served(Proxy.SERVERS[0], 0.0, details)
            traffic.wait_served(Proxy.SERVERS[1], 0.0, details)
            for i, name in enumerate(Proxy.SERVERS):
                old = replicas[i]
                terminated = time.monotonic()
                old.process.send_signal(signal.SIGTERM)
                # Out of rotation while the old process still serves (its lame duck), not after.
                wait_for(lambda name=name: proxy.state(name) == "DOWN", f"{name} out of rotation", details=details)
                assert old.process.poll() is None, f"{name} exited before the proxy took it out:\n{details()}"
                assert old.process.wait(timeout=LIMIT) == 0, old.output()
                assert "Traceback" not in old.output()

                replicas[i] = new = start_replica(TINY_SD_CONFIG, cwd=tmp_path, port=old.port)
                new.wait_ready(LIMIT)
                ready = time.monotonic()
                traffic.wait_served(name, ready, details)
                windows.append((name, terminated, ready))
            outcomes = traffic.snapshot()

        failed = [o for o in outcomes if o.status != 200 or o.error]
        print(f"{len(outcomes)} requests through the proxy, {len(failed)} failed; served by "
              f"{ {n: sum(o.served_by == n for o in outcomes) for n in Proxy.SERVERS} }")
        assert failed == [], f"{failed[:5]}\n{details()}"
        lame_duck_answers = 0
        for name, terminated, ready in windows:
            # The stream really ran through each restart (the assertion above is not vacuous).
            during = [o for o in outcomes if terminated < o.started < ready]
            lame = sum(o.served_by == name for o in during)
            print(f"{name}: {len(during)} requests from SIGTERM until the new replica was ready, {lame} of them "
                  "answered by the old one in its lame duck")
            assert during, name
            lame_duck_answers += lame
        # Requests did reach a replica after its SIGTERM: without the lame duck those would have been 503s.
        assert lame_duck_answers > 0
        assert proxy.process.poll() is None, proxy.output()
    finally:
        if proxy is not None:
            proxy.stop()
        for replica in replicas:
            replica.kill()
