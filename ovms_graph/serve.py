"""``ovms-graph serve``: the process around the front end: graphs from a config.json or an installed
CLI extension's graph source, the listening socket, signals, the lame duck and the drain.

Exit statuses: 0 after a clean shutdown; 2 when the configuration, a graph, a flag or the API key file
is unusable (every problem is printed); 1 when the server cannot start (e.g. the port is taken), a graph
source fails with a status-1 CommandError (a download), or loading fails inside a calculator.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import suppress
from pathlib import Path

from aiohttp import web

from ovms_graph.commands import GraphSource
from ovms_graph.config import load_config
from ovms_graph.errors import CommandError, ConfigError
from ovms_graph.server import SERVING, create_app
from ovms_graph.serving import Serving, State
from ovms_graph.settings import ServerOptions, configure_logging

log = logging.getLogger("ovms_graph.server")


def run_serve(config_path: Path | None, server_options: ServerOptions, source: GraphSource | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status.

    SIGTERM on a ready server first starts the lame duck (readiness false, requests still served, each
    answer closing its connection) for ``--drain_delay`` seconds; a second SIGTERM or a SIGINT ends it.
    SIGINT skips it. Then intake stops and running requests get ``--shutdown_timeout`` to finish.

    With ``source`` (an installed CLI extension's graph source, e.g. ``serve --source_model``) the graphs
    it returns are served instead of ``config_path``'s; a CommandError it raises is printed as
    ``ovms-graph serve: error: <message>`` and is the exit status. 0 after a clean shutdown;
    2 when the configuration, a graph, a flag or the API key file is unusable (every problem is
    printed); 1 when the server cannot start (e.g. the port is taken) or a download fails.
    """
    configure_logging(server_options.log_level)
    logging.getLogger().setLevel(logging.DEBUG if server_options.log_level == "TRACE"
                                 else getattr(logging, server_options.log_level))
    try:
        if source is not None:
            try:
                entries = source()
            except CommandError as exc:
                print(f"ovms-graph serve: error: {exc.message}", file=sys.stderr)
                return exc.exit_code
        elif config_path is not None:
            entries = load_config(config_path)
        else:
            print("ovms-graph serve: error: serve needs --config_path or a graph source", file=sys.stderr)
            return 2
        app = create_app(entries, server_options)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    return asyncio.run(_serve(app, server_options))


async def _lame_duck(signals: asyncio.Queue[signal.Signals], delay: float) -> None:
    """Serve on, not ready, for ``delay`` seconds or until the next SIGTERM or SIGINT."""
    log.info("SIGTERM received: readiness off, still serving new requests for %.1f s (--drain_delay); "
             "a second SIGTERM or a SIGINT drains at once", delay)
    with suppress(TimeoutError):
        await asyncio.wait_for(signals.get(), timeout=delay)


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)


async def _serve(app: web.Application, options: ServerOptions) -> int:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=options.shutdown_timeout,
                           access_log=None)
    await runner.setup()
    if not await _listen(runner, options):
        await runner.cleanup()
        return 1
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    serving = app[SERVING]
    stopping = asyncio.create_task(signals.get())
    loading = asyncio.create_task(serving.wait_loaded())
    await asyncio.wait({stopping, loading}, return_when=asyncio.FIRST_COMPLETED)
    status = await _until_stopped(serving, signals, stopping, options)
    serving.begin_shutdown()
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    stopping.cancel()
    loading.cancel()
    log.info("stopped")
    return status


async def _listen(runner: web.AppRunner, options: ServerOptions) -> bool:
    """Whether the server now listens on ``--rest_bind_address:--rest_port``; the reason is printed when not."""
    site = web.TCPSite(runner, options.rest_bind_address, options.rest_port)
    try:
        await site.start()
    except OSError as exc:
        print(f"error: cannot listen on {options.rest_bind_address}:{options.rest_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return False
    for address in runner.addresses:
        log.info("listening on http://%s:%s", *address[:2])
    return True


async def _until_stopped(serving: Serving, signals: asyncio.Queue[signal.Signals],
                         stopping: asyncio.Task[signal.Signals], options: ServerOptions) -> int:
    """The exit status, once the server should stop: 1 or 2 right away when the graphs failed to load
    (every problem printed), else 0 after a stop signal (and the lame duck a first SIGTERM starts)."""
    if serving.state is State.FAILED and serving.error is not None:
        _print_problems(serving.error)
        print("error: the models failed to load; exiting", file=sys.stderr)
        return 1 if serving.internal_error else 2
    received = await stopping
    if received is signal.SIGTERM and options.drain_delay > 0 and serving.enter_lame_duck():
        await _lame_duck(signals, options.drain_delay)
    log.info("signal received: readiness off, draining for up to %.1f s", options.shutdown_timeout)
    return 0
