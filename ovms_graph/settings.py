"""Settings of a serving process, shared by the CLI and the server without either importing the other."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ServerOptions:
    """Front-end settings common to every way of serving."""

    rest_port: int = 8000
    rest_bind_address: str = "127.0.0.1"
    log_level: str = "INFO"
    api_key_file: Path | None = None
    metrics_enable: bool = False
    max_queued_requests: int = 32
    max_request_size: int = 64 * 1024 * 1024
    shutdown_timeout: float = 30.0
    drain_delay: float = 5.0
    #: Where compiled models are cached between starts (``--cache_dir``); None: no cache unless a
    #: graph's plugin_config sets CACHE_DIR.
    cache_dir: Path | None = None


def configure_logging(level: str) -> None:
    """Root logging at ``level`` (one of LOG_LEVELS; TRACE logs as DEBUG)."""
    logging.basicConfig(level=logging.DEBUG if level == "TRACE" else getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
