"""Downloads for ``ovms-graph pull``: its errors (with exit statuses), the Hub endpoint and token,
progress bars, atomic folder installs and plain URL downloads.

Guarantees: a :class:`FetchError` says what failed in one or two lines, never a traceback; a folder is
installed with renames only, so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovms_graph.errors import CommandError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"


class PullError(CommandError):
    """A pull that cannot be done; ``exit_code`` is the status ``ovms-graph pull`` exits with."""

    exit_code = 1


class UsageError(PullError):
    """A flag that cannot be used (exit status 2); the message names the flag."""

    exit_code = 2


class FetchError(PullError):
    """A download or conversion that failed (exit status 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Hub:
    """Where models come from: the Hub endpoint and the token (HF_ENDPOINT, HF_TOKEN)."""

    endpoint: str
    token: str | None

    def api(self) -> HfApi:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)


def hub_from_env() -> Hub:
    """HF_ENDPOINT and HF_TOKEN, read now."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return Hub(endpoint, os.environ.get("HF_TOKEN") or None)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub progress bars on only when ``enabled`` (a terminal), restored afterwards."""
    hf_tqdm: Any = importlib.import_module("huggingface_hub.utils.tqdm")

    switched = not enabled and not hf_tqdm.are_progress_bars_disabled()
    if switched:
        hf_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        if switched:
            hf_tqdm.enable_progress_bars()


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says (its type name when it says nothing)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fetch_error(what: str, exc: Exception, hub: Hub) -> FetchError:
    """A FetchError that says what failed and why, in one or two lines (never a traceback)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return FetchError(f"{what}: access to this gated repository was refused by {hub.endpoint}; accept its "
                          "terms on the Hub and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if hub.token else " (a private or gated repository needs HF_TOKEN)"
        return FetchError(f"{what}: repository not found on {hub.endpoint}{hint}")
    return FetchError(f"{what}: {first_line(exc)}")


def remove_path(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def install_folder(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target`` (replacing it) with renames only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    remove_path(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    remove_path(old)


def download_url(url: str, dest: Path, hub: Hub, *, progress: bool) -> None:
    """Stream ``url`` into ``dest`` through ``dest.part``; FetchError-ready exceptions on failure."""
    hf_tqdm: Any = importlib.import_module("huggingface_hub.utils.tqdm")

    request = urllib.request.Request(url, headers={"User-Agent": "ovms-graph"})
    if hub.token and url.startswith(hub.endpoint + "/"):
        # The Hub redirects file downloads to a CDN: the token must not follow the redirect.
        request.add_unredirected_header("Authorization", f"Bearer {hub.token}")
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(request, timeout=60) as response:  # http(s) only: checked by the grammar
        expected = response.headers.get("Content-Length")
        total = int(expected) if expected and expected.isdigit() else None
        received = 0
        bar_class: Any = hf_tqdm.tqdm
        with part.open("wb") as out, bar_class(total=total, unit="B", unit_scale=True, desc=dest.name,
                                               disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"connection closed after {received} of {total} bytes")
    part.replace(dest)
